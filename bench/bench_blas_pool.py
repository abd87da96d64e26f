#!/usr/bin/python3
"""kNN-LM scoring under Debian's two OpenBLAS builds, alternated in one run
(issue 24, item 3). A process picks its BLAS when it loads, so each round
runs `bench_knnlm --parts a --rounds 1` once per build, the order flipped
every round, and keeps each run's JSON whole:

  - pthread: /usr/lib/x86_64-linux-gnu/openblas-pthread (libopenblas0-pthread),
    LibTorch on 1 OpenMP thread: OpenBLAS's own pthreads pool does the
    matrix products and FAISS takes every core through libgomp (two pools);
  - openmp: /usr/lib/x86_64-linux-gnu/openblas-openmp (libopenblas0-openmp),
    LibTorch on every core: OpenBLAS, LibTorch and FAISS share libgomp's pool,
    whose idle threads sleep at once (OMP_WAIT_POLICY=passive, which `rag`
    sets for itself on this build: lm::RestartWithPassiveOpenMP);
  - openmp-spin: the same with libgomp's default wait, idle threads spinning
    300,000 rounds before they sleep (GOMP_SPINCOUNT=300000, libgomp's
    default, set so that `rag` keeps it).

The build is chosen with LD_LIBRARY_PATH, which the loader searches before
the alternatives' libblas.so.3; each run's JSON names the library it really
mapped (machine.blas_loaded). Ratios to the LM are taken within a run, then
the median over rounds per build. The first run also computes the reference
perplexity; later runs skip it (--ref-nprobe 0) and must give the first
run's perplexities, arm by arm (the BLAS changes rounding only).

  bench/bench_blas_pool.py --bench build/bench/bench_knnlm --rounds 5 \\
      --out bench/results/knnlm_blas_DATE.json -- --model data/models/brown-small --index INDEX \\
      --docs 8 --docs-offset 6 --nprobe 1 --k 64 --min-pointers 0,1 --curve-grpc
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

LIB = "/usr/lib/x86_64-linux-gnu"
# name: (library directory, LibTorch threads, environment)
BUILDS = {"pthread": (f"{LIB}/openblas-pthread", 1, {}),
          "openmp": (f"{LIB}/openblas-openmp", os.cpu_count(), {"OMP_WAIT_POLICY": "passive"}),
          "openmp-spin": (f"{LIB}/openblas-openmp", os.cpu_count(), {"GOMP_SPINCOUNT": "300000"})}


def rounds_json(xs):
    return {"rounds": xs, "median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def build_env(build):
    """The environment of a process run on `build`: its library directory
    first on the loader's path, its own wait setting, no thread or spin
    setting inherited."""
    lib_dir, _, extra = BUILDS[build]
    if not os.path.exists(os.path.join(lib_dir, "libblas.so.3")):
        sys.exit(f"{lib_dir}/libblas.so.3 is missing; install libopenblas0-{build.split('-')[0]}")
    env = dict(os.environ, LD_LIBRARY_PATH=lib_dir)
    for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "GOMP_SPINCOUNT", "OMP_WAIT_POLICY"):
        env.pop(v, None)
    env.update(extra)
    return env


def add_round_args(ap, rounds):
    """The options every BLAS driver takes: --rounds, --out, --builds."""
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--out", required=True)
    ap.add_argument("--builds", default=",".join(BUILDS), help=f"comma-separated, of {list(BUILDS)}")


def chosen_builds(ap, args):
    """Checks --rounds; --builds as a subset of BUILDS, in BUILDS' order."""
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    want = args.builds.split(",")
    unknown = [b for b in want if b not in BUILDS]
    if unknown:
        ap.error(f"--builds: unknown {unknown}; choose from {list(BUILDS)}")
    return [b for b in BUILDS if b in want]


def run(bench, build, extra, ref, out):
    lib_dir, threads, _ = BUILDS[build]
    env = build_env(build)
    cmd = [bench, "--parts", "a", "--rounds", "1", "--threads", str(threads), "--out", out] + extra
    if not ref:
        cmd += ["--ref-nprobe", "0"]
    t0 = time.monotonic()
    # bench_knnlm exits 1 when the served defaults miss the target: that is a figure, not a failure.
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not os.path.exists(out) or p.returncode not in (0, 1):
        sys.exit(f"bench_blas_pool: {' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    with open(out) as f:
        j = json.load(f)
    loaded = j["machine"].get("blas_loaded", "")
    if not loaded.startswith(lib_dir):
        sys.exit(f"bench_blas_pool: the {build} run mapped {loaded!r}, not a library under {lib_dir}")
    print(f"bench_blas_pool: {build} run done in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    return j


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", default="build/bench/bench_knnlm")
    add_round_args(ap, rounds=5)
    ap.add_argument("extra", nargs="*", help="bench_knnlm's options (after --)")
    args = ap.parse_args()
    builds = chosen_builds(ap, args)
    runs = {b: [] for b in builds}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = builds if r % 2 == 0 else list(reversed(builds))
            for i, b in enumerate(order):
                first = r == 0 and i == 0
                runs[b].append(run(args.bench, b, args.extra, first, os.path.join(tmp, f"{r}_{b}.json")))
            print(f"bench_blas_pool: round {r + 1} of {args.rounds} done", file=sys.stderr)
    first = runs[builds[0]][0]
    ref = first["scoring"]["reference"]
    ppl0 = {(a["label"], a["path"]): a["perplexity"] for a in first["scoring"]["arms"]}
    summary = []
    for b in builds:
        for a in runs[b][0]["scoring"]["arms"]:
            key = (a["label"], a["path"])
            each = [next(x for x in j["scoring"]["arms"] if (x["label"], x["path"]) == key) for j in runs[b]]
            for x in each:
                if abs(x["perplexity"] / ppl0[key] - 1) > 1e-3:
                    sys.exit(f"bench_blas_pool: {key} perplexity {x['perplexity']} under {b}, {ppl0[key]} first")
            # The lm arms have no reference; the served defaults' is at the served lambda.
            vs_ref = None if a["label"] == "lm" else a["perplexity"] / (
                ref["perplexity_served_lambda"] if a["request_knn"] is None else ref["perplexity"]) - 1
            summary.append({"blas": b, "threads": BUILDS[b][1], "label": a["label"], "path": a["path"],
                            "request_knn": a["request_knn"], "searched_fraction": a["searched_fraction"],
                            "perplexity": a["perplexity"], "perplexity_over_reference": vs_ref,
                            "tokens_per_s": rounds_json([x["tokens_per_s"]["median"] for x in each]),
                            "ratio_to_lm": rounds_json([x["ratio_to_lm"]["median"] for x in each])})
    report = {"bench": "bench_blas_pool", "command": " ".join(sys.argv), "rounds": args.rounds,
              "builds": {b: {"lib_dir": BUILDS[b][0], "threads": BUILDS[b][1], "env": BUILDS[b][2]} for b in builds},
              "machine": first["machine"], "inputs": first["inputs"], "tokens": first["scoring"]["tokens"],
              "reference": ref, "arms": summary, "runs": runs}
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"{'blas':11} {'arm':34} {'path':11} {'tokens/s':>9} {'vs lm':>7} {'vs ref':>8}")
    for a in summary:
        vs = "" if a["perplexity_over_reference"] is None else f"{100 * a['perplexity_over_reference']:+.2f}%"
        print(f"{a['blas']:11} {a['label']:34} {a['path']:11} {a['tokens_per_s']['median']:9.1f} "
              f"{a['ratio_to_lm']['median']:7.3f} {vs:>8}")
    print(f"JSON: {args.out}")


if __name__ == "__main__":
    main()

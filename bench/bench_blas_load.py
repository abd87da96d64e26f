#!/usr/bin/python3
"""A loaded `rag serve` under Debian's two OpenBLAS builds, alternated in one
run: does one OpenMP pool (bench_blas_pool.py) cost anything when many
requests run at once? Under the pthreads build every request shares
OpenBLAS's one pool; under the OpenMP build each gRPC handler thread that
computes opens its own OpenMP team, one thread wide while other calls
compute too (lm::CallThreads). The builds are bench_blas_pool.py's (openmp:
idle threads sleep at once; openmp-spin: libgomp's default spin).

Each round starts one server per build (order flipped every round; the
build chosen with LD_LIBRARY_PATH, checked in the server's /proc/PID/maps;
LibTorch's threads left to the server's default, lm::DefaultThreads), drives
it with `rag_load` for --seconds in each --modes mode, then stops it. Every
rag_load JSON is kept whole; the summary is the median over rounds of each
build's QPS and latency percentiles, by mode.

  bench/bench_blas_load.py --rag build/services/rag --load build/bench/rag_load \\
      --model data/models/brown-small --index INDEX --corpus data/brown/brown.jsonl \\
      --clients 32 --seconds 30 --rounds 3 --out bench/results/load_blas_DATE.json
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from bench_blas_pool import BUILDS, add_round_args, build_env, chosen_builds, rounds_json
from machine import machine


def mapped_blas(pid):
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            path = line.split()[-1] if "/" in line else ""
            if os.path.basename(path).startswith(("libopenblas", "libblas")):
                return path
    return "none"


def serve(args, build, tmp):
    lib_dir = BUILDS[build][0]
    port_file = os.path.join(tmp, f"port.{build}")
    if os.path.exists(port_file):
        os.remove(port_file)
    env = build_env(build)
    log = open(os.path.join(tmp, f"serve.{build}.log"), "w")
    proc = subprocess.Popen([args.rag, "serve", "--model", args.model, "--index", args.index, "--listen",
                             "127.0.0.1:0", "--port-file", port_file, "--read-only"],
                            env=env, stdout=log, stderr=log)
    for _ in range(1200):
        if os.path.exists(port_file) and os.path.getsize(port_file) > 0:
            break
        if proc.poll() is not None:
            sys.exit(f"bench_blas_load: rag serve ({build}) exited {proc.returncode}; see {log.name}")
        time.sleep(0.5)
    with open(port_file) as f:
        port = f.read().strip()
    loaded = mapped_blas(proc.pid)
    if not loaded.startswith(lib_dir):
        proc.kill()
        sys.exit(f"bench_blas_load: the {build} server mapped {loaded!r}, not a library under {lib_dir}")
    return proc, port, loaded


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rag", default="build/services/rag")
    ap.add_argument("--load", default="build/bench/rag_load")
    ap.add_argument("--model", required=True)
    ap.add_argument("--index", required=True, help="an index built with --datastore (for --modes knnlm)")
    ap.add_argument("--corpus", default="data/brown/brown.jsonl")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--modes", default="lm,knnlm")
    add_round_args(ap, rounds=3)
    args = ap.parse_args()
    builds = chosen_builds(ap, args)
    modes = [m for m in args.modes.split(",") if m]
    runs = {b: {m: [] for m in modes} for b in builds}
    loaded = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = builds if r % 2 == 0 else list(reversed(builds))
            for b in order:
                proc, port, loaded[b] = serve(args, b, tmp)
                try:
                    for m in modes:
                        out = os.path.join(tmp, f"{r}.{b}.{m}.json")
                        p = subprocess.run([args.load, "--server", f"127.0.0.1:{port}", "--server-pid",
                                            str(proc.pid), "--clients", str(args.clients), "--seconds",
                                            str(args.seconds), "--corpus", args.corpus, "--mode", m, "--json", out],
                                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                        if p.returncode != 0:
                            sys.exit(f"bench_blas_load: rag_load ({b}, {m}) failed:\n{p.stdout[-2000:]}")
                        with open(out) as f:
                            runs[b][m].append(json.load(f))
                        print(f"bench_blas_load: round {r + 1}, {b}, {m}: "
                              f"{runs[b][m][-1]['rpcs']['all']['qps']:.1f} QPS", file=sys.stderr)
                finally:
                    proc.terminate()
                    proc.wait()
    summary = []
    for b in builds:
        for m in modes:
            each = [x["rpcs"]["all"] for x in runs[b][m]]
            summary.append({"blas": b, "mode": m, "qps": rounds_json([x["qps"] for x in each]),
                            "p50_ms": rounds_json([x["p50_ms"] for x in each]),
                            "p99_ms": rounds_json([x["p99_ms"] for x in each]),
                            "errors": sum(x["errors"] for x in each)})
    report = {"bench": "bench_blas_load", "command": " ".join(sys.argv), "rounds": args.rounds,
              "clients": args.clients, "seconds": args.seconds, "model": args.model, "index": args.index,
              "machine": dict(machine(), blas_loaded=loaded),
              "arms": summary, "runs": runs}
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"{'blas':11} {'mode':6} {'QPS':>7} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
    for a in summary:
        print(f"{a['blas']:11} {a['mode']:6} {a['qps']['median']:7.1f} {a['p50_ms']['median']:8.1f} "
              f"{a['p99_ms']['median']:8.1f} {a['errors']:6d}")
    print(f"JSON: {args.out}")


if __name__ == "__main__":
    main()

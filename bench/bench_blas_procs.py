#!/usr/bin/python3
"""Processes side by side under each OpenBLAS build (bench_blas_pool.py's
builds), alternated in one run: a command that runs several `rag`
processes at once (by default tests/retro_probes_study_test.sh, which trains
two RETRO seeds side by side) is timed once per build per round, the order
flipped every round. Idle OpenMP threads that spin take the cores the other
process needs; this measures what that costs and what the passive wait that
`rag` sets for itself (lm::RestartWithPassiveOpenMP) gives back.

Each run's wall time (time.monotonic) and its children's user and system
CPU (getrusage) are kept; the summary is the median over rounds per build.

  bench/bench_blas_procs.py --rounds 3 --out bench/results/procs_blas_DATE.json \\
      -- bash tests/retro_probes_study_test.sh build/services/rag
"""
import argparse
import json
import resource
import subprocess
import sys
import time

from bench_blas_pool import BUILDS, add_round_args, build_env, chosen_builds, rounds_json
from machine import machine


def run(cmd, build):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    p = subprocess.run(cmd, env=build_env(build), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        sys.exit(f"bench_blas_procs: {' '.join(cmd)} failed under {build} ({p.returncode}):\n{p.stdout[-2000:]}")
    return {"wall_s": wall, "user_s": after.ru_utime - before.ru_utime, "sys_s": after.ru_stime - before.ru_stime}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_round_args(ap, rounds=3)
    ap.add_argument("cmd", nargs="+", help="the command to time (after --)")
    args = ap.parse_args()
    builds = chosen_builds(ap, args)
    runs = {b: [] for b in builds}
    for r in range(args.rounds):
        for b in builds if r % 2 == 0 else list(reversed(builds)):
            runs[b].append(run(args.cmd, b))
            print(f"bench_blas_procs: round {r + 1}, {b}: {runs[b][-1]['wall_s']:.1f} s", file=sys.stderr)
    summary = [{"blas": b, **{k: rounds_json([x[k] for x in runs[b]]) for k in ("wall_s", "user_s", "sys_s")}}
               for b in builds]
    report = {"bench": "bench_blas_procs", "command": " ".join(sys.argv), "cmd": args.cmd, "rounds": args.rounds,
              "builds": {b: {"lib_dir": BUILDS[b][0], "env": BUILDS[b][2]} for b in builds},
              "machine": machine(), "arms": summary, "runs": runs}
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"{'blas':11} {'wall s':>8} {'user s':>8} {'sys s':>8}")
    for a in summary:
        print(f"{a['blas']:11} {a['wall_s']['median']:8.1f} {a['user_s']['median']:8.1f} {a['sys_s']['median']:8.1f}")
    print(f"JSON: {args.out}")


if __name__ == "__main__":
    main()

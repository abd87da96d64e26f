#!/usr/bin/python3
"""RSS of one `rag build` by stage: samples the process's VmRSS every 0.2 s
and timestamps its stderr lines, then prints the peak of each stage (summarize) and writes both raw
series as JSON.

  bench/build_rss_stages.py --rag build/services/rag --corpus data/brown/brown.jsonl \\
      --model data/models/brown-small --out bench/results/build_rss_stages_DATE.json
  bench/build_rss_stages.py --summarize bench/results/build_rss_stages_DATE.json
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

from machine import machine


def vm_rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def summarize(samples, lines):
    """Peak RSS by stage. rag build prints a stage's lines after the work
    they report (progress, "trained ... in", "count index ... in"), so each
    sample belongs to the stage of the next stderr line."""
    stages = []
    for t, line in lines:
        m = re.match(r"build: (\w+)", line)
        if m:
            stages.append((t, m.group(1)))
    peaks = {}
    order = []
    j = 0
    for s, kib in samples:
        while j < len(stages) and stages[j][0] < s:
            j += 1
        name = stages[j][1] if j < len(stages) else "(after the last line)"
        if name not in peaks:
            order.append(name)
        peaks[name] = max(peaks.get(name, 0), kib)
    for name in order:
        print(f"{name:24s} peak {peaks[name] / 1024:7.1f} MiB")
    print(f"whole build peak {max(k for _, k in samples) / 1024:.1f} MiB")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rag")
    ap.add_argument("--corpus")
    ap.add_argument("--model")
    ap.add_argument("--out", help="JSON file for the raw samples and stderr lines")
    ap.add_argument("--interval", type=float, default=0.2)
    ap.add_argument("--summarize", metavar="JSON", help="only print the stage peaks of a kept JSON file")
    args = ap.parse_args()
    if args.summarize:
        with open(args.summarize) as f:
            kept = json.load(f)
        summarize(kept["rss_kib"], kept["stderr"])
        return
    if not (args.rag and args.corpus and args.model and args.out):
        ap.error("--rag, --corpus, --model and --out are required (or --summarize JSON)")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [args.rag, "build", "--corpus", args.corpus, "--model", args.model, "--out", os.path.join(tmp, "index")]
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        lines = []

        def read():
            for line in proc.stderr:
                lines.append([round(time.monotonic() - t0, 2), line.rstrip("\n")])

        reader = threading.Thread(target=read)
        reader.start()
        samples = []
        while proc.poll() is None:
            rss = vm_rss_kib(proc.pid)
            if rss is not None:
                samples.append([round(time.monotonic() - t0, 2), rss])
            time.sleep(args.interval)
        reader.join()
        if proc.returncode != 0:
            sys.exit(f"build_rss_stages: rag build failed ({proc.returncode}): {lines[-1:]}")
    m = machine()
    report = {"study": "build_rss_stages",
              "command": " ".join(cmd[:-1]) + " TMP (VmRSS from /proc every %.1f s; stderr lines timestamped)"
                         % args.interval,
              "git_commit": m["git_commit"], "machine": {"cores": m["cores"], "cpu": m["cpu"]},
              "rss_kib": samples, "stderr": lines}
    with open(args.out, "w") as f:
        json.dump(report, f)
    summarize(samples, lines)
    print(f"JSON: {args.out}")


if __name__ == "__main__":
    main()

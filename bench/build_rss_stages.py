#!/usr/bin/python3
"""RSS of one `rag build` by stage: samples the process's VmRSS every 0.2 s
and timestamps its stderr lines, then prints the peak of each stage (a stage
runs from its first progress line to the next stage's) and writes both raw
series as JSON.

  bench/build_rss_stages.py --rag build/services/rag --corpus data/brown/brown.jsonl \\
      --model data/models/brown-small --out bench/results/build_rss_stages_DATE.json
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


def vm_rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rag", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True, help="JSON file for the raw samples and stderr lines")
    ap.add_argument("--interval", type=float, default=0.2)
    args = ap.parse_args()
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
    commit = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], capture_output=True,
                            text=True).stdout.strip()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "")
    report = {"study": "build_rss_stages",
              "command": " ".join(cmd[:-1]) + " TMP (VmRSS from /proc every %.1f s; stderr lines timestamped)"
                         % args.interval,
              "git_commit": commit, "machine": {"cores": os.cpu_count(), "cpu": cpu},
              "rss_kib": samples, "stderr": lines}
    with open(args.out, "w") as f:
        json.dump(report, f)
    # A stage starts at its first "build: <stage>" line.
    starts = []
    for t, line in lines:
        m = re.match(r"build: (\w[\w ]*?)[:\s]", line)
        if m and (not starts or starts[-1][1] != m.group(1)):
            starts.append((t, m.group(1)))
    for i, (t, name) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else float("inf")
        peak = max((kib for s, kib in samples if t <= s < end), default=0)
        print(f"{name:24s} from {t:7.2f} s  peak {peak / 1024:7.1f} MiB")
    print(f"whole build peak {max(k for _, k in samples) / 1024:.1f} MiB; JSON: {args.out}")


if __name__ == "__main__":
    main()

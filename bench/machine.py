"""What the Python benches record about the machine and the tree they ran on
(the C++ benches' bench_report.h MachineJson, for the scripts): cores, CPU
model, and the git commit with "-dirty" when tracked files differ from it."""
import os
import subprocess


def machine():
    here = os.path.dirname(os.path.abspath(__file__))
    commit = subprocess.run(["git", "-C", here, "describe", "--always", "--dirty", "--abbrev=40"],
                            capture_output=True, text=True).stdout.strip() or "unknown"
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "")
    return {"cores": os.cpu_count(), "cpu": cpu, "git_commit": commit}

#!/usr/bin/env bash
# Chooses RETRO's copy-training recipe on the probes' dev half (issue 26,
# item 3): the steps and the fraction of prompt windows that retrieve their
# own document. Each candidate is scripts/study_retro_probes.sh with
# RETRO_PROBE_HALF=dev and one seed; the candidates train side by side, one
# thread each. The choice is the highest dev P@1 with the evidence in the
# index; ties go to fewer steps, then to the earlier candidate. The test
# half is never read. Put the choice in scripts/retro_copy_recipe.sh, then
# run study_retro_probes.sh on the test half.
#
#   scripts/tune_retro_recipe.sh MODEL INDEX OUT_DIR [CANDIDATES]
#
# CANDIDATES: OWN_DOCUMENT:STEPS,... (default 0.95:420,0.5:420,0.95:210).
# RETRO_SEED (default 1) is the seed; RETRO_TRAIN_ARGS passes through. A
# second run reuses every finished candidate. Writes
# OUT_DIR/retro_recipe_dev.json and prints the table.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
model="${1:?usage: tune_retro_recipe.sh MODEL INDEX OUT_DIR [CANDIDATES]}"
index="${2:?index directory}"
out="${3:?output directory}"
IFS=, read -r -a candidates <<<"${4:-0.95:420,0.5:420,0.95:210}"
seed="${RETRO_SEED:-1}"
PY=/usr/bin/python3; [ -x "$PY" ] || PY=python3
mkdir -p "$out"

dirs=() pids=()
for c in "${candidates[@]}"; do
  own="${c%%:*}" steps="${c#*:}"
  [[ "$own" =~ ^(0(\.[0-9]+)?|1(\.0+)?)$ && "$steps" =~ ^[1-9][0-9]*$ ]] ||
    { echo "tune_retro_recipe: candidate '$c' is not OWN_DOCUMENT:STEPS (a fraction in [0, 1], steps > 0)" >&2; exit 2; }
  dir="$out/own${own}_steps$steps"
  dirs+=("$dir")
  RETRO_PROBE_HALF=dev RETRO_OWN_DOCUMENT="$own" RETRO_STEPS="$steps" \
    bash "$here/scripts/study_retro_probes.sh" "$model" "$index" "$dir" "$seed" >>"$dir.log" 2>&1 &
  pids+=("$!")
done
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || { echo "tune_retro_recipe: candidate ${candidates[$i]} failed: see ${dirs[$i]}.log" >&2; exit 1; }
done

"$PY" - "$out" "${dirs[@]}" <<'PYEOF'
import json, os, sys
out, dirs = sys.argv[1], sys.argv[2:]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
candidates, commits = [], set()
for d in dirs:
    s = json.load(open(os.path.join(d, "retro_probes.json")))
    commits.add(s["git_commit"])  # each study records the commit it started at
    assert s["probe_half"] == "dev", (d, s["probe_half"])
    candidates.append({"own_document": s["own_document"], "steps": s["steps"], "seed": s["seeds"][0],
                       "p_at_1_in": s["p_at_1"]["in"]["mean"], "p_at_1_excluded": s["p_at_1"]["excluded"]["mean"],
                       "by_relation_in": {r: v["mean"] for r, v in s["by_relation"]["in"].items()},
                       "lm_p_at_1": s["lm"]["p_at_1"], "probes": s["lm"]["probes"],
                       "train_command": s["train_command"], "study": os.path.join(d, "retro_probes.json")})
# Highest P@1 first; among equals fewer steps, then the listed order.
best = min(range(len(candidates)), key=lambda i: (-candidates[i]["p_at_1_in"], candidates[i]["steps"], i))
report = {"study": "retro_recipe_dev", "probe_half": "dev", "git_commit": ",".join(sorted(commits)),
          "machine": {"cpu": cpu, "cores": os.cpu_count()},
          "rule": "highest dev P@1 with the evidence in the index; ties: fewer steps, then listed order",
          "candidates": candidates, "chosen": {k: candidates[best][k] for k in ("own_document", "steps")}}
with open(os.path.join(out, "retro_recipe_dev.json"), "w") as f:
    json.dump(report, f, indent=1)
    f.write("\n")
print(f"RETRO recipe on the dev half ({candidates[0]['probes']} probes; lm P@1 {candidates[0]['lm_p_at_1']:.3f})")
for i, c in enumerate(candidates):
    print(f"  own document {c['own_document']:<5} steps {c['steps']:>4}: P@1 in the index {c['p_at_1_in']:.3f},"
          f" excluded {c['p_at_1_excluded']:.3f}" + ("   <- chosen" if i == best else ""))
print(f"wrote {os.path.join(out, 'retro_recipe_dev.json')}")
PYEOF

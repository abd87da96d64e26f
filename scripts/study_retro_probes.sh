#!/usr/bin/env bash
# RETRO's knowledge probes over seeds, and the knowledge-injection
# experiment (issue 26, item 3). The demo's retrofit (scripts/demo.sh step
# 10) is trained once per seed: besides the ordinary windows it copy-trains
# on prompt windows over Brown and the *training* facts (WordNet facts
# disjoint from the probe facts, each in two wordings), 19 in 20 of them
# retrieving their own document, so that the neighbours hold what follows
# the prompt. The probe facts are excluded from training: they are only in
# the index. Each retrofit then answers a half of the probes (test) with
# each probe's fact document retrievable ("in the index") and excluded
# (--exclude-evidence); the difference is what the index injected. The LM
# alone is the baseline. Subject popularity: counts in INDEX (the corpus
# without the facts).
#
#   scripts/study_retro_probes.sh MODEL INDEX OUT_DIR [SEEDS]   (SEEDS default 1,2,3)
#
# RETRO_STEPS and RETRO_OWN_DOCUMENT (default the recipe's, the demo's) set
# the steps and the fraction of prompt windows retrieving their own
# document; RETRO_PROBE_HALF (default test; dev when choosing them, see
# scripts/tune_retro_recipe.sh) the probes evaluated; RETRO_TRAIN_ARGS adds
# words to `rag train` (the tests' tiny models: --config, --preset). The seeds train side
# by side, one thread each (on 2 cores about 1 hour for three at 420
# steps). A second run reuses every finished step; a killed training resumes.
# Writes OUT_DIR/retro_probes.json (every eval's JSON, the commands, the
# machine; mean and spread over the seeds) and prints the summary.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
model="${1:?usage: study_retro_probes.sh MODEL INDEX OUT_DIR [SEEDS]}"
index="${2:?index directory}"
out="${3:?output directory}"
IFS=, read -r -a seeds <<<"${4:-1,2,3}"
half="${RETRO_PROBE_HALF:-test}"
case "$half" in dev|test) ;; *) echo "study_retro_probes: RETRO_PROBE_HALF must be dev or test, not '$half'" >&2; exit 2 ;; esac
read -r -a extra <<<"${RETRO_TRAIN_ARGS:-}"
rag="${RAG:-${RAG_BUILD_DIR:-$here/build}/services/rag}"
PY=/usr/bin/python3; [ -x "$PY" ] || PY=python3
say() { printf '\n== %s ==\n' "$*" >&2; }
[ -x "$rag" ] || { echo "study_retro_probes: $rag is missing: run scripts/build.sh" >&2; exit 1; }
mkdir -p "$out"
# The commit of the code that runs, taken before the hour of training.
commit="$(git -C "$here" rev-parse HEAD 2>/dev/null || echo unknown)"
git -C "$here" diff --quiet HEAD 2>/dev/null || commit="$commit-dirty"
probes="$out/wordnet" idx="$out/index"

say "1. the WordNet probe facts and the disjoint training facts"
[ -f "$probes/train/train_facts.jsonl" ] ||
  "$PY" "$here/scripts/wordnet_probes.py" --out "$probes" --train-out "$probes/train" >&2
say "2. a copy of $index with both sets of facts added"
if [ ! -f "$idx/.facts_added" ]; then
  rm -rf "$idx"
  cp -r "$index" "$idx"
  for facts in "$probes/facts.jsonl" "$probes/train/train_facts.jsonl"; do
    "$rag" add --model "$model" --index "$idx" --corpus "$facts" --skip-existing --quiet >&2
  done
  touch "$idx/.facts_added"
fi

# shellcheck source=scripts/retro_copy_recipe.sh
source "$here/scripts/retro_copy_recipe.sh"
steps="${RETRO_STEPS:-$RETRO_RECIPE_STEPS}"
own_document="${RETRO_OWN_DOCUMENT:-$RETRO_RECIPE_OWN_DOCUMENT}"
say "3. the retrofits, $steps steps, own document $own_document, seeds ${seeds[*]} side by side"
retro_copy_recipe "$idx" "$model" "$probes/facts.jsonl" "$steps" "$own_document"
train_args=("${RETRO_COPY_RECIPE[@]}" "${extra[@]}")
pids=()
for seed in "${seeds[@]}"; do
  retro="$out/retro_seed$seed"
  [ -f "$retro/model_info.json" ] && continue
  resume=(); [ -f "$retro/checkpoint.pt" ] && resume=(--resume)
  "$rag" --threads 1 "${train_args[@]}" --seed "$seed" --out "$retro" "${resume[@]}" 2>"$out/train_seed$seed.log" &
  pids+=("$!")
done
for pid in "${pids[@]}"; do
  wait "$pid" || { echo "study_retro_probes: a training failed: see $out/train_seed*.log" >&2; exit 1; }
done

# evaluate NAME ARGS...: the chosen half of the probes, once.
evaluate() {
  local file="$out/$1.json"; shift
  [ -f "$file" ] && return 0
  "$rag" eval probes --index "$idx" --probes "$probes/probes.jsonl" --probe-half "$half" --popularity "$index" \
    --quiet --output "$file.partial" "$@" >/dev/null
  mv "$file.partial" "$file"
}
say "4. the $half half of the probes"
evaluate lm --model "$model" --mode lm
for seed in "${seeds[@]}"; do
  for evidence in in excluded; do
    excl=(); [ "$evidence" = excluded ] && excl=(--exclude-evidence)
    evaluate "retro_seed${seed}_evidence_$evidence" --model "$out/retro_seed$seed" --mode retro \
      --search-method bm25 "${excl[@]}"
  done
done

"$PY" - "$out" "$half" "$commit" "$steps" "$own_document" "$index" "${train_args[*]}" "${seeds[@]}" <<'PYEOF'
import json, os, statistics, sys
out, half, commit, steps, own_document, index, train_cmd = sys.argv[1:8]
seeds = [int(s) for s in sys.argv[8:]]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "unknown")
lm = json.load(open(os.path.join(out, "lm.json")))
runs = {e: [json.load(open(os.path.join(out, f"retro_seed{s}_evidence_{e}.json"))) for s in seeds]
        for e in ("in", "excluded")}

def summary(values):
    return {"mean": statistics.mean(values), "min": min(values), "max": max(values),
            "stdev": statistics.stdev(values) if len(values) > 1 else 0.0, "values": values}

# Evaluations are reused by file name: refuse ones of the other half.
stale = [r for rs in runs.values() for r in rs + [lm] if r["probe_half"] != half]
if stale:
    sys.exit(f"study_retro_probes: {out} holds evaluations of the {stale[0]['probe_half']} half, not {half}: "
             "use another OUT_DIR")
relations = sorted(lm["by_relation"])
report = {"study": "retro_probes", "git_commit": commit, "machine": {"cpu": cpu, "cores": os.cpu_count()},
          "steps": int(steps), "own_document": float(own_document), "probe_half": lm["probe_half"], "seeds": seeds, "popularity_index": index,
          "train_command": "rag " + train_cmd + " --seed S", "lm": lm, "runs": runs,
          "p_at_1": {e: summary([r["p_at_1"] for r in runs[e]]) for e in runs},
          "by_relation": {e: {rel: summary([r["by_relation"][rel]["p_at_1"] for r in runs[e]]) for rel in relations}
                          for e in runs}}
with open(os.path.join(out, "retro_probes.json"), "w") as f:
    json.dump(report, f, indent=1)
    f.write("\n")
print(f"\nRETRO probes, {lm['probe_half']} half ({lm['probes']} probes), {len(seeds)} seeds, {steps} steps; lm P@1 {lm['p_at_1']:.3f}")
for e in ("in", "excluded"):
    s = report["p_at_1"][e]
    print(f"  evidence {e:8s}: P@1 {s['mean']:.3f} (min {s['min']:.3f}, max {s['max']:.3f}) by seed "
          + " ".join(f"{v:.3f}" for v in s["values"]))
print(f"wrote {os.path.join(out, 'retro_probes.json')}")
PYEOF

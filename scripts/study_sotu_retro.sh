#!/usr/bin/env bash
# The State of the Union study of docs/results.md (issue 5, rerun by issue
# 24): does RETRO use its neighbours on a corpus whose documents repeat each
# other? Trains the `small` LM on the 233 addresses, builds their index,
# retrofits RETRO twice (dense neighbours; BM25 neighbours) and evaluates
# validation perplexity with retrieval off, on (leakage-filtered), on with
# the own document excluded, and with random chunks; bench_retro part (b)
# says how much of the next chunk the neighbours hold; then RETRO by overlap
# (scripts/study_retro_overlap.sh: OUT_DIR/overlap_dense.json, the table and
# plot in OUT_DIR/report).
#
#   scripts/study_sotu_retro.sh [OUT_DIR]      (default $RAG_DATA_DIR/studies/sotu)
#
# Writes OUT_DIR/sotu_retro.json (every eval's JSON, the commands and the
# machine) and prints the tables. About 45 minutes on 2 cores; a second run
# reuses every finished step (delete a step's output to redo it).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data="${RAG_DATA_DIR:-$here/data}"
out="${1:-$data/studies/sotu}"
build="${RAG_BUILD_DIR:-$here/build}"
rag="$build/services/rag"
PY=/usr/bin/python3; [ -x "$PY" ] || PY=python3
say() { printf '\n== %s ==\n' "$*" >&2; }
for exe in "$rag" "$build/bench/bench_retro"; do
  [ -x "$exe" ] || { echo "study_sotu_retro: $exe is missing: run scripts/build.sh -DRAG_BUILD_BENCHMARKS=ON" >&2; exit 1; }
done

bash "$here/scripts/prepare_growth_corpora.sh"
corpus="$data/growth/sotu.jsonl"
mkdir -p "$out"
lm="$out/lm" idx="$out/idx"

say "1. the small LM on the addresses"
if [ ! -f "$lm/model_info.json" ]; then
  resume=(); [ -f "$lm/checkpoint.pt" ] && resume=(--resume)
  "$rag" train --corpus "$corpus" --out "$lm" --preset small "${resume[@]}"
fi
say "2. the chunk index"
[ -f "$idx/manifest.json" ] || "$rag" build --corpus "$corpus" --model "$lm" --out "$idx"

# run NAME SEARCH: a RETRO retrofit whose training neighbours come from
# SEARCH (dense or bm25), then its evaluations with SEARCH at query time.
run() {
  local name="$1" search="$2" retro="$out/retro_$1"
  say "3. RETRO retrofit, $search neighbours ($retro)"
  if [ ! -f "$retro/model_info.json" ]; then
    "$rag" train --arch retro --index "$idx" --init "$lm" --out "$retro" --steps 300 --lr 3e-3 \
      --batch-size 4 --prompt-windows 0 --neighbour-search "$search"
  fi
  for eval in "off|--retrieval off" "on|--retrieval on" "own_doc_excluded|--retrieval on --exclude-own-doc" \
              "random|--retrieval random"; do
    local file="$out/${name}_${eval%%|*}.json"
    [ -f "$file" ] && continue
    say "4. validation perplexity, $name, ${eval%%|*}"
    # shellcheck disable=SC2086  # the flags are words
    "$rag" eval perplexity --model "$retro" --index "$idx" --corpus "$corpus" --split validation --mode retro \
      --search-method "$search" ${eval#*|} --quiet --output "$file.partial"
    mv "$file.partial" "$file"
  done
}
run dense dense
run bm25 bm25

say "5. what the neighbours hold (bench_retro part b)"
if [ ! -f "$out/bench_retro_b.txt" ]; then
  "$build/bench/bench_retro" --model "$out/retro_dense" --index "$idx" --corpus "$corpus" --parts b \
    > "$out/bench_retro_b.txt.partial"
  mv "$out/bench_retro_b.txt.partial" "$out/bench_retro_b.txt"
fi
cat "$out/bench_retro_b.txt"

say "6. RETRO by overlap (dense), leakage filter on and off"
if [ ! -f "$out/overlap_dense.json" ]; then
  bash "$here/scripts/study_retro_overlap.sh" "$out/retro_dense" "$idx" "$corpus" "$out/overlap_dense.json" \
    "$out/report"
fi

commit="$(git -C "$here" rev-parse HEAD 2>/dev/null || echo unknown)"
"$PY" - "$out" "$corpus" "$commit" <<'PYEOF'
import json, os, sys
out, corpus, commit = sys.argv[1:4]
runs = {}
for name in ("dense", "bm25"):
    for ev in ("off", "on", "own_doc_excluded", "random"):
        runs[f"{name}_{ev}"] = json.load(open(os.path.join(out, f"{name}_{ev}.json")))
report = {"study": "sotu_retro", "corpus": corpus, "git_commit": commit, "cores": os.cpu_count(),
          "bench_retro_b": open(os.path.join(out, "bench_retro_b.txt")).read(), "runs": runs}
json.dump(report, open(os.path.join(out, "sotu_retro.json"), "w"), indent=1)
for name in ("dense", "bm25"):
    off = runs[f"{name}_off"]["perplexity"]
    print(f"\n{name}-trained RETRO, {name} neighbours: "
          f"{runs[f'{name}_off']['documents']} validation addresses, {runs[f'{name}_off']['tokens']:,} tokens")
    for ev in ("off", "on", "own_doc_excluded", "random"):
        p = runs[f"{name}_{ev}"]["perplexity"]
        print(f"  retrieval {ev:18s} {p:8.2f}  {100 * (p / off - 1):+.2f}% vs off")
print(f"\nwrote {os.path.join(out, 'sotu_retro.json')}")
PYEOF

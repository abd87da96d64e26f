#!/usr/bin/env bash
# Verbatim continuation by mode: `rag eval memorization` (greedy suffix
# after a prefix drawn from a document; exact match of the whole suffix and
# per-token match) over one `rag serve`, for every served mode, on the
# same draws, in four conditions that say where the suffix can come from:
#   train, own document counted:      in the weights and in the index
#   train, own document excluded:     in the weights only
#   validation, own document counted: in the index only
#   validation, own document excluded: in neither (unless repeated elsewhere)
# The index must hold every document of the corpus (the model's validation
# documents included), as `rag build` without --datastore-split does.
# Usage: bench/bench_memorization_modes.sh RAG MODEL INDEX CORPUS OUT_JSON [SAMPLES (50)] [PREFIX (32)] [SUFFIX (32)]
set -euo pipefail
RAG="${1:?usage: bench_memorization_modes.sh RAG MODEL INDEX CORPUS OUT_JSON [SAMPLES] [PREFIX] [SUFFIX]}"
MODEL="${2:?model directory}"
INDEX="${3:?index directory}"
CORPUS="${4:?corpus .jsonl}"
OUT="${5:?output JSON}"
SAMPLES="${6:-50}"
PREFIX="${7:-32}"
SUFFIX="${8:-32}"
# shellcheck source=bench/serve_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/serve_lib.sh"
bench_init bench_memorization_modes
echo "bench_memorization_modes: starting rag serve" >&2
bench_serve "$RAG" "$MODEL" "$INDEX"
echo "bench_memorization_modes: modes ${MODES[*]}; $SAMPLES draws, prefix $PREFIX, suffix $SUFFIX" >&2

: >"$TMP/runs.jsonl"
for split in train validation; do
  for own in counted excluded; do
    for mode in "${MODES[@]}"; do
      excl=()
      [ "$own" = excluded ] && excl=(--exclude-own-doc)
      # RETRO's leakage filter applies to Score only; generation runs without it.
      "$RAG" eval memorization --server "$ADDR" --corpus "$CORPUS" --split "$split" --mode "$mode" "${excl[@]}" \
        --samples "$SAMPLES" --prefix-lengths "$PREFIX" --suffix-tokens "$SUFFIX" --seed 1 --json --quiet \
        >"$TMP/run.json"
      "$PY" -c 'import json,sys; j=json.load(open(sys.argv[1])); j["own_document"]=sys.argv[2]; print(json.dumps(j))' \
        "$TMP/run.json" "$own" >>"$TMP/runs.jsonl"
      echo "bench_memorization_modes: $split, own document $own, $mode: $(tail -1 "$TMP/runs.jsonl" | "$PY" -c 'import json,sys; j=json.load(sys.stdin); t=next(iter(j["by_prefix"].values())); print("exact %.3f, token match %.3f" % (t["exact"], t["token_match"]))')" >&2
    done
  done
done

COMMIT="$(git -C "$(dirname "$0")" rev-parse HEAD 2>/dev/null || echo unknown)"
git -C "$(dirname "$0")" diff --quiet HEAD 2>/dev/null || COMMIT="$COMMIT-dirty"
CPU="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
"$PY" - "$TMP/runs.jsonl" "$OUT" "$COMMIT" "$CPU" "$(nproc)" "$SAMPLES" "$PREFIX" "$SUFFIX" <<'PYEOF'
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
out = {"bench": "bench_memorization_modes",
       "machine": {"git_commit": sys.argv[3], "cpu": sys.argv[4], "cores": int(sys.argv[5])},
       "samples": int(sys.argv[6]), "prefix_tokens": int(sys.argv[7]), "suffix_tokens": int(sys.argv[8]),
       "runs": runs}
with open(sys.argv[2], "w") as f:
    json.dump(out, f, indent=1)
    f.write("\n")
print("bench_memorization_modes: wrote %s" % sys.argv[2], file=sys.stderr)
PYEOF

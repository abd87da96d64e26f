#!/usr/bin/env bash
# Knowledge probes by mode and by subject popularity, on the test half
# (issue 26, item 3): the WordNet probe set (scripts/wordnet_probes.py, as
# the demo makes it) is asked of the LM and of every retrieval mode the
# served index allows, with the fact documents added to a copy of INDEX
# (`rag add`, chunks and datastore keys) and each probe's own fact document
# retrievable ("in the index") or excluded (--exclude-evidence). A subject's
# popularity is its count in INDEX itself, the corpus without the facts.
# Usage: bench/bench_probes_modes.sh RAG MODEL INDEX OUT_JSON [MODES (lm,knnlm,infgram,ralm)]
# A mode may name a retriever, MODE:dense or MODE:bm25 (--search-method).
set -euo pipefail
RAG="${1:?usage: bench_probes_modes.sh RAG MODEL INDEX OUT_JSON [MODES]}"
MODEL="${2:?model directory}"
INDEX="${3:?index directory}"
OUT="${4:?output JSON}"
IFS=, read -r -a MODES <<<"${5:-lm,knnlm,infgram,ralm}"
PY=/usr/bin/python3
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TMP="$(mktemp -d "${TMPDIR:-/tmp}/bench_probes_modes.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

"$PY" "$HERE/scripts/wordnet_probes.py" --out "$TMP/wordnet" >&2
echo "bench_probes_modes: copying $INDEX and adding the fact documents" >&2
cp -r "$INDEX" "$TMP/facts-index"
"$RAG" add --model "$MODEL" --index "$TMP/facts-index" --corpus "$TMP/wordnet/facts.jsonl" --quiet >&2
: >"$TMP/runs.jsonl"
for spec in "${MODES[@]}"; do
  mode="${spec%%:*}"
  search=()
  [ "$spec" != "$mode" ] && search=(--search-method "${spec#*:}")
  for evidence in in excluded; do
    [ "$mode" = lm ] && [ "$evidence" = excluded ] && continue
    excl=()
    [ "$evidence" = excluded ] && excl=(--exclude-evidence)
    "$RAG" eval probes --model "$MODEL" --index "$TMP/facts-index" --probes "$TMP/wordnet/probes.jsonl" \
      --mode "$mode" "${search[@]}" "${excl[@]}" --probe-half test --popularity "$INDEX" --quiet --output "$TMP/run.json" >/dev/null
    "$PY" -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))))' "$TMP/run.json" >>"$TMP/runs.jsonl"
    echo "bench_probes_modes: $spec, evidence $evidence: P@1 $("$PY" -c 'import json,sys; print("%.3f" % json.load(open(sys.argv[1]))["p_at_1"])' "$TMP/run.json")" >&2
  done
done
"$PY" - "$TMP/runs.jsonl" "$OUT" "$INDEX" <<'PYEOF'
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
out = {"what": "rag eval probes --probe-half test --popularity %s, index = %s + the WordNet facts (rag add)"
               % (sys.argv[3], sys.argv[3]),
       "command": "bench/bench_probes_modes.sh", "runs": runs}
with open(sys.argv[2], "w") as f:
    json.dump(out, f, indent=1)
    f.write("\n")
print("bench_probes_modes: wrote %s" % sys.argv[2], file=sys.stderr)
PYEOF

#!/usr/bin/env bash
# The served modes side by side on the same documents: perplexity with the
# scored document's own occurrences/keys/chunks counted (leakage on) and
# excluded (leakage off), and scoring tokens/s, over one `rag serve` (warmed
# up before it answers), the arms alternated within each round and their
# order rotated from round to round.
# The documents are the second half of the model's validation split (the
# first half is where scripts/tune_infgram.py chose the infgram weights).
# Usage: bench/bench_modes.sh RAG MODEL INDEX CORPUS OUT_JSON [ROUNDS (default 3)]
set -euo pipefail
RAG="${1:?usage: bench_modes.sh RAG MODEL INDEX CORPUS OUT_JSON [ROUNDS]}"
MODEL="${2:?model directory}"
INDEX="${3:?index directory}"
CORPUS="${4:?corpus .jsonl}"
OUT="${5:?output JSON}"
ROUNDS="${6:-3}"
# shellcheck source=bench/serve_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/serve_lib.sh"
bench_init bench_modes

"$PY" - "$MODEL/split.json" "$CORPUS" "$TMP/test_half.jsonl" <<'PYEOF'
import json, sys
ids = json.load(open(sys.argv[1]))["validation_ids"]
test = set(ids[len(ids) // 2:])
n = 0
with open(sys.argv[3], "w") as out:
    for line in open(sys.argv[2]):
        if json.loads(line)["id"] in test:
            out.write(line)
            n += 1
if n != len(test):
    sys.exit("bench_modes: %d of the %d test-half documents are in the corpus" % (n, len(test)))
print("bench_modes: %d documents (validation, second half)" % n, file=sys.stderr)
PYEOF

echo "bench_modes: starting rag serve" >&2
bench_serve "$RAG" "$MODEL" "$INDEX"
ARMS=()
for m in "${MODES[@]}"; do
  ARMS+=("$m:on")
  [ "$m" != lm ] && ARMS+=("$m:off")
done
echo "bench_modes: arms ${ARMS[*]}, $ROUNDS rounds" >&2

: >"$TMP/runs.jsonl"
for ((r = 0; r < ROUNDS; r++)); do
  n=${#ARMS[@]}
  for ((i = 0; i < n; i++)); do
    arm="${ARMS[$(((i + r) % n))]}"
    mode="${arm%%:*}" leakage="${arm##*:}"
    excl=()
    [ "$leakage" = off ] && excl=(--exclude-own-doc)
    # RETRO's leakage filter is on by default: leakage on turns it off too.
    [ "$leakage" = on ] && [ "$mode" = retro ] && excl=(--leakage-filter 0)
    "$RAG" eval perplexity --server "$ADDR" --corpus "$TMP/test_half.jsonl" --split all --baseline none \
      --mode "$mode" "${excl[@]}" --json --quiet >"$TMP/run.json"
    "$PY" -c 'import json,sys; j=json.load(open(sys.argv[1])); j["round"]=int(sys.argv[2]); j["leakage"]=sys.argv[3]; print(json.dumps(j))' \
      "$TMP/run.json" "$r" "$leakage" >>"$TMP/runs.jsonl"
    echo "bench_modes: round $((r + 1)) $mode leakage $leakage: $(tail -1 "$TMP/runs.jsonl" | "$PY" -c 'import json,sys; j=json.load(sys.stdin); print("perplexity %.2f, %.0f tokens/s" % (j["perplexity"], j["tokens_per_second"]))')" >&2
  done
done

COMMIT="$(git -C "$(dirname "$0")" rev-parse HEAD 2>/dev/null || echo unknown)"
git -C "$(dirname "$0")" diff --quiet HEAD 2>/dev/null || COMMIT="$COMMIT-dirty"
CPU="$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
"$PY" - "$TMP/runs.jsonl" "$OUT" "$ROUNDS" "$COMMIT" "$CPU" "$(nproc)" <<'PYEOF'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
arms = {}
for r in runs:
    arms.setdefault((r["mode"], r["leakage"]), []).append(r)
rows = []
for (mode, leakage), rs in arms.items():
    ppl = {round(r["perplexity"], 6) for r in rs}
    if len(ppl) != 1:
        sys.exit("bench_modes: %s leakage %s gave different perplexities across rounds: %s" % (mode, leakage, ppl))
    tps = [r["tokens_per_second"] for r in rs]
    row = {"mode": mode, "leakage": leakage, "perplexity": rs[0]["perplexity"], "tokens": rs[0]["tokens"],
           "documents": rs[0]["documents"], "tokens_per_second": {"median": statistics.median(tps), "min": min(tps),
           "max": max(tps)}}
    for k in ("lambda", "lambda_sparse", "ralm", "leakage_filter"):
        if k in rs[0]:
            row[k] = rs[0][k]
    rows.append(row)
out = {"bench": "bench_modes", "rounds": int(sys.argv[3]),
       "machine": {"git_commit": sys.argv[4], "cpu": sys.argv[5], "cores": int(sys.argv[6])},
       "documents": "validation, second half", "rows": rows, "runs": runs}
with open(sys.argv[2], "w") as f:
    json.dump(out, f, indent=1)
    f.write("\n")
print("bench_modes: wrote %s" % sys.argv[2], file=sys.stderr)
PYEOF

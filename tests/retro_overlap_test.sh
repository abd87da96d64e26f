#!/usr/bin/env bash
# `rag eval retro-overlap` (RETRO's analysis by overlap, Borgeaud et al.
# 2022, section 4.4) on a tiny RETRO model: with no leakage filter and the
# scored document retrievable, most chunks are held whole by a neighbour
# (the document's own chunk and continuation); RETRO's leakage filter at F
# tokens drops every neighbour sharing a run of F tokens with the chunk it
# helps predict, so no full chunk can then overlap by F/m or more (an
# independent bound on the overlap computed); every token is in a bucket or in a
# document's first chunk; the report draws the table and plot; a model
# without RETRO is refused.
# Usage: retro_overlap_test.sh RAG_BINARY
set -euo pipefail
# shellcheck source=tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
lib_init retro_overlap_test
RAG="${1:?usage: retro_overlap_test.sh RAG_BINARY}"
[ -x "$RAG" ] || fail "rag binary '$RAG' is not executable"

tiny_model_and_index "$RAG" 7373 crosses --chunk-tokens 16 --continuation-tokens 16
echo '{"chunk_size": 16, "neighbour_tokens": 32, "encoder_layers": 1}' >"$TMP/retro.json"
run_logged "$TMP/retro.log" "rag train --arch retro" \
  "$RAG" --threads 1 train --arch retro --init "$TMP/model" --index "$TMP/index" --out "$TMP/retro" \
  --config "$TMP/retro.json" --preset tiny --steps 5 --batch-size 4 --eval-every 0 --checkpoint-every 0 --quiet
M=(--model "$TMP/retro" --index "$TMP/index")
run_logged "$TMP/ids.jsonl" "rag tokenize" \
  "$RAG" tokenize --model "$TMP/retro" --corpus "$TMP/corpus.jsonl" --out "$TMP/ids.jsonl"

overlap() {  # overlap OUT [OPTIONS...]
  local out="$1"
  shift
  run_logged "$out" "rag eval retro-overlap $*" \
    "$RAG" --threads 1 eval retro-overlap "${M[@]}" --corpus "$TMP/corpus.jsonl" --split all --quiet \
    --output "$out" --report "$TMP/report" "$@"
}

"$RAG" info --model "$TMP/retro" --json | "$PY" -c 'import json,sys; assert json.load(sys.stdin)["retro_chunk_tokens"] == 16' ||
  fail "rag info does not give the RETRO chunk size"

step "leakage on: neighbours hold whole chunks"
overlap "$TMP/on.json" --leakage-filter 0 --report-name leakage-on
step "leakage filter at 6 tokens: no chunk overlaps by 6/16 or more"
overlap "$TMP/filtered.json" --leakage-filter 6 --report-name filter-6
"$PY" - "$TMP" <<'PYEOF' || fail "the overlap buckets are wrong"
import json, sys
tmp = sys.argv[1]
tokens = sum(len(json.loads(l)["ids"]) for l in open(tmp + "/ids.jsonl"))
for name in ("on", "filtered"):
    j = json.load(open("%s/%s.json" % (tmp, name)))
    b = j["buckets"]
    assert len(b) == 8 and j["chunk_tokens"] == 16, j
    assert sum(x["tokens"] for x in b) + j["unbucketed_tokens"] == tokens, (name, tokens)
    assert j["all"]["tokens"] == sum(x["tokens"] for x in b)
    for x in b:
        for arm in ("on", "off", "random"):
            assert (x["perplexity"][arm] > 1) == (x["tokens"] > 0), (name, x)
    print("%s: chunks by bucket %s" % (name, [x["chunks"] for x in b]), file=sys.stderr)
on = json.load(open(tmp + "/on.json"))["buckets"]
assert on[7]["chunks"] > sum(x["chunks"] for x in on) / 2, "leakage on: most chunks should be held whole"
flt = json.load(open(tmp + "/filtered.json"))
assert flt["leakage_filter"] == 6 and flt["neighbours_filtered"] > 0, flt
# A kept neighbour shares runs of at most 5 tokens with its chunk: a full
# chunk overlaps by at most 5/16 < 0.375, so buckets [0.375, ...) hold only
# documents' short last chunks (5 / 0.375 = 13 tokens or fewer).
short = sum(1 for l in open(tmp + "/ids.jsonl") if 0 < len(json.loads(l)["ids"]) % 16 <= 13)
high = sum(x["chunks"] for x in flt["buckets"][3:])
print("filtered: %d chunks at 6/16 or more, %d short last chunks" % (high, short), file=sys.stderr)
assert high <= short, (high, short)
assert sum(x["chunks"] for x in flt["buckets"][:3]) > 0
PYEOF
[ -s "$TMP/report/overlap.png" ] || fail "the report has no overlap plot"
grep -q "## RETRO by overlap" "$TMP/report/summary.md" || fail "the report has no overlap table"
grep -q "| filter-6 |" "$TMP/report/summary.md" || fail "the report lacks the second run"

step "scripts/study_retro_overlap.sh and its table"
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
run_logged "$TMP/study.log" "study_retro_overlap.sh" \
  env RAG_BUILD_DIR="$(cd "$(dirname "$RAG")/.." && pwd)" \
  bash "$SRC/scripts/study_retro_overlap.sh" "$TMP/retro" "$TMP/index" "$TMP/corpus.jsonl" "$TMP/study.json" \
  "$TMP/study-report"
"$PY" - "$SRC/bench" "$TMP/study.json" <<'PYEOF' || fail "the study's JSON or table is wrong"
import json, sys
sys.path.insert(0, sys.argv[1])
import results_tables as t
j = json.load(open(sys.argv[2]))
assert sorted(j["runs"]) == ["filter_0", "filter_32"] and j["runs"]["filter_0"]["leakage_filter"] == 0, j["runs"].keys()
table = t.retro_overlap(j)
assert "| off | all |" in table and "| 32 tokens (" in table, table
print(table, file=sys.stderr)
PYEOF

step "errors"
if "$RAG" eval retro-overlap --model "$TMP/model" --index "$TMP/index" --corpus "$TMP/corpus.jsonl" \
  --split all 2>"$TMP/err"; then
  fail "retro-overlap without a RETRO model succeeded"
fi
grep -q "needs a RETRO model" "$TMP/err" || { cat "$TMP/err" >&2; fail "no clear error without a RETRO model"; }
echo "retro_overlap_test: PASS"

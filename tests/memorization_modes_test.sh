#!/usr/bin/env bash
# The memorization-by-mode bench and the canary study on small data: a tiny
# model and index (with a datastore, so every retrieval mode is served).
# bench/bench_memorization_modes.sh must give every served mode four
# conditions over the same draws; the LM ignores exclusion, so its two
# columns per split must agree, while the ∞-gram, which reads the index,
# must continue more documents verbatim with their own copy counted than
# without. scripts/study_canaries.py must train, index and measure: the
# ∞-gram puts every canary it holds at the top (the exposure cap), above the
# LM's mean. Both tables must render (bench/results_tables.py).
# Usage: memorization_modes_test.sh RAG_BINARY PYTHON_MODULE_DIR
set -euo pipefail
# shellcheck source=tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
lib_init memorization_modes_test
RAG="${1:?usage: memorization_modes_test.sh RAG_BINARY PYTHON_MODULE_DIR}"
MODULE_DIR="${2:?python module directory}"
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ -x "$RAG" ] || fail "rag binary '$RAG' is not executable"

tiny_model_and_index "$RAG" 6262 guards --datastore --chunk-tokens 16 --continuation-tokens 16

step "bench_memorization_modes.sh on the tiny corpus"
run_logged "$TMP/bench.log" "bench_memorization_modes.sh" \
  bash "$SRC/bench/bench_memorization_modes.sh" "$RAG" "$TMP/model" "$TMP/index" "$TMP/corpus.jsonl" \
  "$TMP/mem.json" 12 8 8
"$PY" - "$TMP/mem.json" <<'PYEOF' || fail "the memorization-by-mode result is wrong"
import json, sys
j = json.load(open(sys.argv[1]))
cell = {(r["mode"], r["split"], r["own_document"]): next(iter(r["by_prefix"].values())) for r in j["runs"]}
modes = sorted({m for m, _, _ in cell})
assert modes == ["infgram", "knnlm", "lm", "ralm"], modes
assert len(cell) == 4 * len(modes) and all(t["samples"] == 12 for t in cell.values()), cell
for split in ("train", "validation"):
    assert cell[("lm", split, "counted")] == cell[("lm", split, "excluded")], split
inf_on = cell[("infgram", "train", "counted")]["token_match"]
inf_off = cell[("infgram", "train", "excluded")]["token_match"]
print("infgram token match: %.3f own document counted, %.3f excluded" % (inf_on, inf_off), file=sys.stderr)
assert inf_on > inf_off + 0.2, (inf_on, inf_off)
PYEOF

step "study_canaries.py on the tiny corpus"
run_logged "$TMP/canaries.log" "study_canaries.py" \
  env PYTHONPATH="$MODULE_DIR" "$PY" "$SRC/scripts/study_canaries.py" --rag "$RAG" --corpus "$TMP/corpus.jsonl" \
  --work "$TMP/canary-work" --out "$TMP/canaries.json" --preset tiny --steps 30 --copies 1,10 --per-copy 1 \
  --candidates 40
"$PY" - "$TMP/canaries.json" <<'PYEOF' || fail "the canary study's result is wrong"
import json, math, sys
j = json.load(open(sys.argv[1]))
assert [k["copies"] for k in j["canaries"]] == [1, 10], j["canaries"]
assert all(0 <= k["trained_copies"] <= k["copies"] for k in j["canaries"])
cap = math.log2(41)
assert abs(j["exposure_cap_bits"] - cap) < 1e-9
by = {(r["mode"], r["canary"]): r for r in j["results"]}
for k in j["canaries"]:
    r = by[("infgram", k["id"])]
    assert r["candidates_scoring_higher"] == 0 and abs(r["exposure"] - cap) < 1e-9, r
lm = sum(by[("lm", k["id"])]["exposure"] for k in j["canaries"]) / len(j["canaries"])
print("mean exposure: lm %.2f, infgram %.2f (cap)" % (lm, cap), file=sys.stderr)
assert lm < cap, lm
PYEOF

step "the tables render"
"$PY" - "$SRC/bench" "$TMP/mem.json" "$TMP/canaries.json" <<'PYEOF' || fail "a table does not render"
import json, sys
sys.path.insert(0, sys.argv[1])
import results_tables as t
print(t.memorization_modes(json.load(open(sys.argv[2]))), file=sys.stderr)
print(t.canaries(json.load(open(sys.argv[3]))), file=sys.stderr)
PYEOF
echo "memorization_modes_test: PASS"

#!/usr/bin/env bash
# scripts/study_retro_probes.sh (issue 26, item 3) on a tiny model: the
# index copy holds the probe facts and the training facts (the original
# does not), each seed trains its own retrofit (their weights differ) with
# the probe facts excluded from training, every seed is evaluated on the
# test half with the evidence in the index and excluded, the summary's mean
# and spread are those of the per-seed files, a second run retrains nothing,
# and results_tables.py renders the table from the JSON.
# Usage: retro_probes_study_test.sh RAG_BINARY
set -euo pipefail
# shellcheck source=tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
lib_init retro_probes_study_test
RAG="${1:?usage: retro_probes_study_test.sh RAG_BINARY}"
[ -x "$RAG" ] || fail "rag binary '$RAG' is not executable"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

tiny_model_and_index "$RAG" 4242 names --chunk-tokens 16 --continuation-tokens 16
echo '{"chunk_size": 16, "neighbour_tokens": 32, "encoder_layers": 1}' >"$TMP/retro.json"
study() {
  RAG="$RAG" RETRO_STEPS=3 \
    RETRO_TRAIN_ARGS="--config $TMP/retro.json --preset tiny --eval-every 0 --checkpoint-every 0 --quiet" \
    bash "$HERE/scripts/study_retro_probes.sh" "$TMP/model" "$TMP/index" "$TMP/out" 1,2
}

step "two seeds, trained side by side, evaluated on the test half"
run_logged "$TMP/study.log" "study_retro_probes.sh" study
"$PY" - "$TMP/out" <<'PYEOF' || fail "the study's JSON is wrong"
import json, os, statistics, sys
out = sys.argv[1]
j = json.load(open(os.path.join(out, "retro_probes.json")))
assert j["seeds"] == [1, 2] and j["steps"] == 3, j["seeds"]
weights = []
for seed in (1, 2):
    info = json.load(open(os.path.join(out, "retro_seed%d" % seed, "model_info.json")))
    t = json.dumps(info)
    assert '"seed": %d' % seed in t, ("seed not recorded", seed)
    assert '"excluded_documents": 0' not in t, "the probe facts were not excluded from training"
    weights.append(open(os.path.join(out, "retro_seed%d" % seed, "model.pt"), "rb").read())
assert weights[0] != weights[1], "two seeds gave the same retrofit"
for e in ("in", "excluded"):
    runs = [json.load(open(os.path.join(out, "retro_seed%d_evidence_%s.json" % (s, e)))) for s in (1, 2)]
    assert all(r["probe_half"] == "test" and r["mode"] == "retro" for r in runs)
    assert all(r["exclude_evidence"] == (e == "excluded") for r in runs), e
    vals = [r["p_at_1"] for r in runs]
    s = j["p_at_1"][e]
    assert s["values"] == vals and abs(s["mean"] - statistics.mean(vals)) < 1e-12, (s, vals)
    assert s["min"] == min(vals) and s["max"] == max(vals)
lm = j["lm"]
assert lm["probe_half"] == "test" and lm["mode"] == "lm" and lm["probes"] > 0
assert sum(b["probes"] for b in lm["by_popularity"].values()) == lm["probes"]
print("P@1 lm %.3f, retro in %s, excluded %s" % (lm["p_at_1"], j["p_at_1"]["in"]["values"],
      j["p_at_1"]["excluded"]["values"]), file=sys.stderr)
PYEOF

step "the index copy holds both sets of facts; the original holds neither"
fact="$("$PY" -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["text"].split(".")[0])' \
  "$TMP/out/wordnet/facts.jsonl")"
train_fact="$("$PY" -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["text"].split(".")[0])' \
  "$TMP/out/wordnet/train/train_facts.jsonl")"
for text in "$fact" "$train_fact"; do
  n_copy="$("$RAG" count --index "$TMP/out/index" --text "$text" --json | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["count"])')"
  n_orig="$("$RAG" count --index "$TMP/index" --text "$text" --json | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["count"])')"
  if [ "$n_copy" -lt 1 ] || [ "$n_orig" != 0 ]; then
    fail "'$text': $n_copy in the copy, $n_orig in the original"
  fi
done

step "a second run reuses every step"
before="$(stat -c %Y "$TMP/out/retro_seed1/model_info.json" "$TMP/out/lm.json")"
run_logged "$TMP/study2.log" "study_retro_probes.sh (again)" study
[ "$(stat -c %Y "$TMP/out/retro_seed1/model_info.json" "$TMP/out/lm.json")" = "$before" ] ||
  fail "the second run trained or evaluated again"

step "results_tables.py renders the table from the JSON"
cp "$TMP/out/retro_probes.json" "$TMP/retro_probes.json"
printf '<!-- results-table retro_probes %s -->\n<!-- /results-table -->\n' "$TMP/retro_probes.json" >"$TMP/doc.md"
"$PY" "$HERE/bench/results_tables.py" --write "$TMP/doc.md" >/dev/null || fail "results_tables.py --write failed"
grep -q '^| retro (bm25) | excluded |' "$TMP/doc.md" || { cat "$TMP/doc.md" >&2; fail "no retro row in the table"; }
echo "retro_probes_study_test: OK"

#!/usr/bin/env bash
# scripts/study_retro_probes.sh (issue 26, item 3) on a tiny model: the
# index copy holds the probe facts and the training facts (the original
# does not), each seed trains its own retrofit (their weights differ) with
# the probe facts excluded from training, every seed is evaluated on the
# test half with the evidence in the index and excluded, the summary's mean
# and spread are those of the per-seed files, a second run retrains nothing,
# the test half's evaluations are never reused for the dev half,
# tune_retro_recipe.sh trains one retrofit per candidate recipe, evaluates
# the dev half only and chooses the best, and results_tables.py renders both
# tables from the JSON.
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

step "evaluations of the test half are not reused for the dev half"
if RETRO_PROBE_HALF=dev study >"$TMP/study_dev.log" 2>&1; then
  fail "study_retro_probes.sh reused the test half's evaluations for the dev half"
fi
grep -q "holds evaluations of the test half, not dev" "$TMP/study_dev.log" ||
  { cat "$TMP/study_dev.log" >&2; fail "no clear error for the other half's evaluations"; }

step "tune_retro_recipe.sh: two candidates on the dev half, the best chosen"
tune() {
  RAG="$RAG" RETRO_SEED=7 \
    RETRO_TRAIN_ARGS="--config $TMP/retro.json --preset tiny --eval-every 0 --checkpoint-every 0 --quiet" \
    bash "$HERE/scripts/tune_retro_recipe.sh" "$TMP/model" "$TMP/index" "$TMP/tune" 0.95:3,0.5:2
}
run_logged "$TMP/tune.log" "tune_retro_recipe.sh" tune
"$PY" - "$TMP/tune" <<'PYEOF' || fail "the tuning JSON is wrong"
import glob, json, os, sys
out = sys.argv[1]
j = json.load(open(os.path.join(out, "retro_recipe_dev.json")))
cs = j["candidates"]
assert [(c["own_document"], c["steps"]) for c in cs] == [(0.95, 3), (0.5, 2)], cs
for c, d in zip(cs, ("own0.95_steps3", "own0.5_steps2")):
    s = json.load(open(os.path.join(out, d, "retro_probes.json")))
    assert c["p_at_1_in"] == s["p_at_1"]["in"]["values"][0] and s["seeds"] == [7], d
    assert "--prompt-own-document %g" % c["own_document"] in c["train_command"], c["train_command"]
    assert "--steps %d" % c["steps"] in c["train_command"], c["train_command"]
# The test half is never read while choosing.
evals = [f for f in glob.glob(os.path.join(out, "*", "*.json")) if not f.endswith("retro_probes.json")]
assert len(evals) == 2 * 3, evals
assert all(json.load(open(f))["probe_half"] == "dev" for f in evals), evals
best = max(cs, key=lambda c: (c["p_at_1_in"], -c["steps"]))
assert j["chosen"] == {"own_document": best["own_document"], "steps": best["steps"]}, (j["chosen"], cs)
PYEOF

step "results_tables.py renders the table from the JSON"
cp "$TMP/out/retro_probes.json" "$TMP/retro_probes.json"
printf '<!-- results-table retro_probes %s -->\n<!-- /results-table -->\n' "$TMP/retro_probes.json" >"$TMP/doc.md"
"$PY" "$HERE/bench/results_tables.py" --write "$TMP/doc.md" >/dev/null || fail "results_tables.py --write failed"
grep -q '^| retro (bm25) | excluded |' "$TMP/doc.md" || { cat "$TMP/doc.md" >&2; fail "no retro row in the table"; }
printf '<!-- results-table retro_recipe_dev %s -->\n<!-- /results-table -->\n' "$TMP/tune/retro_recipe_dev.json" >"$TMP/doc2.md"
"$PY" "$HERE/bench/results_tables.py" --write "$TMP/doc2.md" >/dev/null || fail "results_tables.py --write (dev) failed"
[ "$(grep -c '^| 0.95 | 3 \|^| 0.5 | 2 ' "$TMP/doc2.md")" = 2 ] || { cat "$TMP/doc2.md" >&2; fail "no candidate rows"; }
echo "retro_probes_study_test: OK"

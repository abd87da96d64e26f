#!/usr/bin/env bash
# `rag eval probes --popularity INDEX --probe-half dev|test` (issue 26, item
# 3): every probe's subject count equals `rag count`'s (alone + after a
# space), its bucket follows PopQA-style decades, the bucket metrics cover
# every probe, and the dev and test halves split the probes in two
# (disjoint, together all of them, both non-empty).
# Usage: probe_popularity_test.sh RAG_BINARY
set -euo pipefail
# shellcheck source=tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
lib_init probe_popularity_test
RAG="${1:?usage: probe_popularity_test.sh RAG_BINARY}"
[ -x "$RAG" ] || fail "rag binary '$RAG' is not executable"

tiny_model_and_index "$RAG" 99 guards
M=(--model "$TMP/model" --index "$TMP/index")
# Subjects from the corpus (common and rare words) and two it never holds.
"$PY" - "$TMP/probes.jsonl" <<'PYEOF'
import json, sys
objects = "river stone bridge lantern harvest meadow copper violin".split()
subjects = "river stone tide prism ledger quartz Zorblax Quimbly ember willow compass saddle".split()
with open(sys.argv[1], "w") as f:
    for i, s in enumerate(subjects):
        f.write(json.dumps({"sub_label": s, "obj_label": objects[i % len(objects)], "predicate_id": "guards",
                            "template": "The [X] guards the [Y].", "candidates": objects}) + "\n")
PYEOF

step "--popularity: subject counts and buckets"
"$RAG" --threads 1 eval probes "${M[@]}" --probes "$TMP/probes.jsonl" --popularity "$TMP/index" --json --quiet \
  >"$TMP/all.json" 2>"$TMP/all.err" || { cat "$TMP/all.err" >&2; fail "eval probes --popularity failed"; }
while read -r subject; do
  "$RAG" count --index "$TMP/index" --text "$subject" --json >"$TMP/count.$subject.json"
done < <("$PY" -c 'import json,sys; [print(json.loads(l)["sub_label"]) for l in open(sys.argv[1])]' "$TMP/probes.jsonl")
"$PY" - "$TMP/all.json" "$TMP" <<'PYEOF' || fail "subject counts or buckets are wrong"
import json, sys
j = json.load(open(sys.argv[1]))
def bucket(n):
    return "0" if n == 0 else "1-9" if n < 10 else "10-99" if n < 100 else "100-999" if n < 1000 else "1000+"
seen = {}
for r in j["results"]:
    c = json.load(open("%s/count.%s.json" % (sys.argv[2], r["subject"])))
    want = c["count"] + c.get("count_after_a_space", 0)
    assert r["subject_count"] == want, (r["subject"], r["subject_count"], want)
    assert r["popularity"] == bucket(want), (r["subject"], r["popularity"])
    seen[r["popularity"]] = seen.get(r["popularity"], 0) + 1
assert {b: m["probes"] for b, m in j["by_popularity"].items()} == seen, (j["by_popularity"], seen)
assert sum(m["probes"] for m in j["by_relation_popularity"]["guards"].values()) == len(j["results"])
# The risky cases: unseen subjects and frequent ones.
assert seen.get("0", 0) == 2 and any(b not in ("0", "1-9") for b in seen), seen
assert j["probe_half"] == "all"
print("buckets %s" % sorted(seen.items()), file=sys.stderr)
PYEOF

step "--probe-half dev and test split the probes"
for half in dev test; do
  "$RAG" --threads 1 eval probes "${M[@]}" --probes "$TMP/probes.jsonl" --probe-half "$half" --json --quiet \
    >"$TMP/$half.json" 2>"$TMP/$half.err" || { cat "$TMP/$half.err" >&2; fail "eval probes --probe-half $half failed"; }
done
"$PY" - "$TMP/all.json" "$TMP/dev.json" "$TMP/test.json" <<'PYEOF' || fail "the halves do not split the probes"
import json, sys
a, d, t = (json.load(open(p)) for p in sys.argv[1:4])
lines = lambda j: {r["line"] for r in j["results"]}
assert d["probe_half"] == "dev" and t["probe_half"] == "test"
assert lines(d) and lines(t) and not lines(d) & lines(t) and lines(d) | lines(t) == lines(a), (lines(d), lines(t))
# A probe's score does not depend on which set it was scored in.
ranks = {r["line"]: r["rank"] for r in a["results"]}
assert all(ranks[r["line"]] == r["rank"] for r in d["results"] + t["results"])
print("dev %d probes, test %d" % (len(lines(d)), len(lines(t))), file=sys.stderr)
PYEOF

step "errors"
if "$RAG" eval probes "${M[@]}" --probes "$TMP/probes.jsonl" --probe-half train 2>"$TMP/bad.err"; then
  fail "--probe-half train was accepted"
fi
grep -q "probe-half must be all, dev or test" "$TMP/bad.err" || { cat "$TMP/bad.err" >&2; fail "no clear error"; }
if "$RAG" eval probes "${M[@]}" --probes "$TMP/probes.jsonl" --popularity "$TMP/nowhere" 2>"$TMP/bad2.err"; then
  fail "--popularity of a missing index was accepted"
fi
grep -q "popularity" "$TMP/bad2.err" || { cat "$TMP/bad2.err" >&2; fail "no clear error for a missing --popularity index"; }
echo "probe_popularity_test: PASS"

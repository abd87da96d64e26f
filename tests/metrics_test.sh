#!/usr/bin/env bash
# `rag serve --metrics-listen`: a known number of calls, then one scrape of
# /metrics parsed by a real exposition-format parser (Debian's
# python3-prometheus-client): the counts must match the calls made, and the
# size gauges the served index's `rag stats` and manifest.
#
# Usage: metrics_test.sh RAG_BINARY
set -euo pipefail
# shellcheck source=tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
lib_init metrics_test

RAG="${1:?usage: metrics_test.sh RAG_BINARY}"

[ -x "$RAG" ] || fail "rag binary '$RAG' is not executable"
"$PY" -c 'import prometheus_client.parser' 2>/dev/null ||
  fail "$PY cannot import prometheus_client: python3-prometheus-client is missing (scripts/setup.sh installs it)"

step "a 30-document corpus, a tiny model, an index with a datastore"
tiny_model_and_index "$RAG" 777 finds --datastore

step "rag serve --metrics-listen 127.0.0.1:0"
"$RAG" --threads 1 serve --model "$TMP/model" --index "$TMP/index" --listen 127.0.0.1:0 --port-file "$TMP/port" \
  --metrics-listen 127.0.0.1:0 --metrics-port-file "$TMP/metrics_port" >"$TMP/serve.log" 2>&1 &
SERVER_PID=$!
ADDR="127.0.0.1:$(wait_for_port "$SERVER_PID" "$TMP/port" "$TMP/serve.log" "rag serve")"
METRICS="http://127.0.0.1:$(tr -d '[:space:]' <"$TMP/metrics_port")/metrics"

# What the warm-up left (its Search, and ralm's dense queries, go through
# the embedding batcher): the batcher's counts below are the calls' own.
"$PY" -c 'import sys, urllib.request; open(sys.argv[2], "w").write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' \
  "$METRICS" "$TMP/metrics_before.txt"

step "the calls: 3 Search (k 4), 2 lm Score, 1 knnlm Score, 1 Generate (5 tokens), 1 bad Score"
for t in "the river" "a copper violin" "the falcon finds"; do
  "$RAG" query --server "$ADDR" --text "$t" -k 4 --json >>"$TMP/queries.jsonl"
done
"$RAG" score --server "$ADDR" --text "The river finds the stone." --json >"$TMP/score1.json"
"$RAG" score --server "$ADDR" --text "The ember finds the quartz near the tide." --json >"$TMP/score2.json"
"$RAG" score --server "$ADDR" --text "The river finds the stone." --mode knnlm --json >"$TMP/score3.json"
"$RAG" generate --server "$ADDR" --prompt "The river" --max-tokens 5 --temperature 0 --json >"$TMP/gen.json"
if "$RAG" score --server "$ADDR" --text "The river" --mode knnlm --lambda 7 >/dev/null 2>"$TMP/bad.err"; then
  fail "a lambda of 7 was accepted"
fi
grep -q "INVALID_ARGUMENT\|lambda" "$TMP/bad.err" || fail "the bad call failed for another reason: $(cat "$TMP/bad.err")"
"$RAG" stats --server "$ADDR" >"$TMP/stats.json"

step "scraping $METRICS"
"$PY" - "$METRICS" "$TMP" <<'PYEOF' || fail "the metrics do not match the calls (above)"
import json, sys, urllib.request
from prometheus_client.parser import text_string_to_metric_families

url, tmp = sys.argv[1], sys.argv[2]
text = urllib.request.urlopen(url, timeout=10).read().decode()
open(tmp + "/metrics.txt", "w").write(text)
def parse(text):
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples
samples = parse(text)
before = parse(open(tmp + "/metrics_before.txt").read())

def value(name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))

def delta(name):
    return value(name) - before.get((name, ()), 0)

failures = []
def expect(what, got, want):
    ok = got is not None and (want(got) if callable(want) else got == want)
    print("%-62s %-14s %s" % (what, got, "ok" if ok else "WRONG"))
    if not ok:
        failures.append(what)

scored_lm = sum(json.load(open(tmp + "/score%d.json" % i))["tokens"] for i in (1, 2))
scored_knn = json.load(open(tmp + "/score3.json"))["tokens"]
neighbours = sum(len(json.loads(l)["neighbours"]) for l in open(tmp + "/queries.jsonl"))
generated = json.load(open(tmp + "/gen.json"))["tokens"]
stats = json.load(open(tmp + "/stats.json"))
manifest = json.load(open(tmp + "/index/manifest.json"))

expect("Search OK", value("rag_requests_total", rpc="Search", mode="none", code="OK"), 3)
expect("Score lm OK", value("rag_requests_total", rpc="Score", mode="lm", code="OK"), 2)
expect("Score knnlm OK", value("rag_requests_total", rpc="Score", mode="knnlm", code="OK"), 1)
expect("Score knnlm INVALID_ARGUMENT",
       value("rag_requests_total", rpc="Score", mode="knnlm", code="INVALID_ARGUMENT"), 1)
expect("Generate lm OK", value("rag_requests_total", rpc="Generate", mode="lm", code="OK"), 1)
expect("latency histogram count, Score lm",
       value("rag_request_duration_seconds_count", rpc="Score", mode="lm"), 2)
expect("latency histogram +Inf bucket, Search",
       value("rag_request_duration_seconds_bucket", rpc="Search", mode="none", le="+Inf"), 3)
expect("neighbours returned = the queries' neighbours", value("rag_neighbours_returned_total"), neighbours)
expect("tokens scored, lm", value("rag_tokens_scored_total", mode="lm"), scored_lm)
expect("tokens scored, knnlm (the failed call adds none)", value("rag_tokens_scored_total", mode="knnlm"), scored_knn)
expect("tokens generated", value("rag_tokens_generated_total", mode="lm"), generated)
expect("embed seconds of Search > 0",
       value("rag_stage_seconds_total", rpc="Search", mode="none", stage="embed"), lambda v: v > 0)
expect("search seconds of knnlm Score > 0",
       value("rag_stage_seconds_total", rpc="Score", mode="knnlm", stage="search"), lambda v: v > 0)
expect("forward seconds of lm Score > 0",
       value("rag_stage_seconds_total", rpc="Score", mode="lm", stage="forward"), lambda v: v > 0)
expect("nothing in flight", value("rag_requests_in_flight", rpc="Search"), 0)
expect("index vectors = rag stats", value("rag_index_vectors"), stats["vectors"])
expect("datastore keys = the manifest's", value("rag_datastore_keys"), manifest["datastore"]["keys"])
expect("resident memory > 10 MB", value("process_resident_memory_bytes"), lambda v: v > 10e6)
# The embedding batcher ran the warm-up (its Search, and ralm's queries)
# and then the 3 Searches, one text each, one after another: 3 more passes
# of 1 sequence, nobody waiting.
expect("embedding batches of the warm-up", before.get(("rag_embed_batches_total", ())), lambda v: v >= 2)
expect("embedding batches of the calls", delta("rag_embed_batches_total"), 3)
expect("embedded sequences of the calls", delta("rag_embed_batch_sequences_total"), 3)
expect("largest embedding batch = the warm-up's", value("rag_embed_largest_batch"),
       before.get(("rag_embed_largest_batch", ())))
expect("waiting for the batcher", value("rag_embed_batch_waiting"), 0)
if failures:
    sys.exit("wrong: " + ", ".join(failures))
PYEOF

step "SIGTERM: a clean exit"
kill -TERM "$SERVER_PID"
wait "$SERVER_PID" || fail "rag serve exited $? after SIGTERM"
SERVER_PID=""
step "PASS"

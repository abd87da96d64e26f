#!/usr/bin/env bash
# Smoke test of bench/rag_load and of the served security options, end to
# end: a tiny model and index made here, `rag serve` on an ephemeral
# loopback port with a bearer token, `rag` commands without, with a wrong
# and with the right token, then 8 concurrent rag_load clients for a few
# seconds, which must see no error, and a clean SIGTERM shutdown.
#
# Usage: load_smoke_test.sh RAG_BINARY RAG_LOAD_BINARY
set -euo pipefail
# shellcheck source=tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
lib_init load_smoke_test

RAG="${1:?usage: load_smoke_test.sh RAG_BINARY RAG_LOAD_BINARY}"
LOAD="${2:?usage: load_smoke_test.sh RAG_BINARY RAG_LOAD_BINARY}"

step "a 30-document corpus, a tiny model and its index"
for i in $(seq 0 29); do
  printf '{"id": "doc-%02d", "text": "Document %d tells of the river %d and the stone bridge near the meadow. The falcon crosses the harbour at dawn while the lantern burns."}\n' "$i" "$i" "$((i * 7))"
done >"$TMP/corpus.jsonl"
run_logged "$TMP/train.log" "rag train" \
  "$RAG" --threads 1 train --corpus "$TMP/corpus.jsonl" --out "$TMP/model" --preset tiny --steps 20 --quiet
run_logged "$TMP/build.log" "rag build" \
  "$RAG" --threads 1 build --corpus "$TMP/corpus.jsonl" --model "$TMP/model" --out "$TMP/index" --quiet

step "rag serve with --auth-token-file"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$TMP/token"
printf 'not-the-token\n' >"$TMP/wrong"
"$RAG" --threads 1 serve --model "$TMP/model" --index "$TMP/index" --listen 127.0.0.1:0 --port-file "$TMP/port" \
  --auth-token-file "$TMP/token" >"$TMP/serve.log" 2>&1 &
SERVER_PID=$!
ADDR="127.0.0.1:$(wait_for_port "$SERVER_PID" "$TMP/port" "$TMP/serve.log" "rag serve")"

if "$RAG" stats --server "$ADDR" >"$TMP/out" 2>&1; then fail "stats without a token succeeded"; fi
grep -q "needs a bearer token" "$TMP/out" || { cat "$TMP/out" >&2; fail "no UNAUTHENTICATED message without a token"; }
if "$RAG" stats --server "$ADDR" --auth-token-file "$TMP/wrong" >"$TMP/out" 2>&1; then
  fail "stats with a wrong token succeeded"
fi
grep -q "wrong bearer token" "$TMP/out" || { cat "$TMP/out" >&2; fail "no UNAUTHENTICATED message for a wrong token"; }
"$RAG" stats --server "$ADDR" --auth-token-file "$TMP/token" >"$TMP/out" 2>&1 ||
  { cat "$TMP/out" >&2; fail "stats with the token failed"; }

step "rag_load: 8 clients, 4 s"
"$LOAD" --server "$ADDR" --server-pid "$SERVER_PID" --clients 8 --seconds 4 --generate-tokens 8 \
  --corpus "$TMP/corpus.jsonl" --auth-token-file "$TMP/token" --json "$TMP/load.json" >"$TMP/load.out" 2>&1 ||
  { cat "$TMP/load.out" >&2; fail "rag_load reported errors (above)"; }
cat "$TMP/load.out" >&2
grep -q '"errors": 0' "$TMP/load.json" || fail "load.json does not say 0 errors"
grep -q "server RSS" "$TMP/load.out" || fail "no server RSS line"

step "SIGTERM stops the server cleanly"
kill -TERM "$SERVER_PID"
wait "$SERVER_PID" || { cat "$TMP/serve.log" >&2; fail "rag serve exited non-zero after SIGTERM"; }
SERVER_PID=""
step "PASS"

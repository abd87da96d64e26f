#!/usr/bin/env bash
# End-to-end test of the Python example client (examples/python/rag_client.py)
# against a real `rag serve` on an ephemeral loopback port: its answers must
# equal those of the C++ client (`rag query/score/generate/stats --server`),
# errors must carry the gRPC code name, documents it streams in must become
# searchable, and the server must stop cleanly on SIGTERM.
#
# Usage: python_client_test.sh RAG_BINARY REPO_SOURCE_DIR
set -euo pipefail
# shellcheck source=tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
lib_init python_client_test

RAG="${1:?usage: python_client_test.sh RAG_BINARY REPO_SOURCE_DIR}"
SRC="${2:?usage: python_client_test.sh RAG_BINARY REPO_SOURCE_DIR}"
CLIENT="$SRC/examples/python/rag_client.py"
START=$SECONDS

[ -x "$RAG" ] || fail "rag binary '$RAG' is not executable"
[ -f "$CLIENT" ] || fail "no example client at $CLIENT"
[ -x "$PY" ] || fail "$PY is missing (install python3)"
# Missing dependencies are a failure, not a skip: scripts/setup.sh installs them.
"$PY" -c 'import grpc' 2>/dev/null ||
  fail "$PY cannot import grpc: python3-grpcio is missing (scripts/setup.sh installs it)"
"$PY" -c 'import google.protobuf' 2>/dev/null ||
  fail "$PY cannot import google.protobuf: python3-protobuf is missing (scripts/setup.sh installs it)"
command -v protoc >/dev/null || fail "protoc is missing: protobuf-compiler (scripts/setup.sh installs it)"
[ -x /usr/bin/grpc_python_plugin ] ||
  fail "/usr/bin/grpc_python_plugin is missing: protobuf-compiler-grpc (scripts/setup.sh installs it)"

# Prints the server log, then fails.
server_fail() {
  echo "---- server log ----" >&2
  cat "$TMP/serve.log" >&2 || true
  echo "--------------------" >&2
  fail "$@"
}

# ---------------------------------------------------------------------------
step "generating the Python stubs with protoc"
mkdir -p "$TMP/stubs"
protoc -I "$SRC/proto" --python_out="$TMP/stubs" --grpc_python_out="$TMP/stubs" \
  --plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin "$SRC/proto/rag.proto" ||
  fail "protoc could not generate the Python stubs from $SRC/proto/rag.proto"

step "writing a 30-document corpus"
# Deterministic: a fixed LCG picks words, so every run trains the same model.
"$PY" - "$TMP/corpus.jsonl" <<'EOF'
import json, sys
words = ("river stone bridge lantern harvest meadow copper violin orchard glacier thunder candle "
         "harbour falcon pepper marble saddle compass willow ember quartz tide ledger prism "
         "cobalt fern summit anvil basket whistle").split()
verbs = "crosses guards follows lifts carries paints hides finds warms counts".split()
state = 12345
def pick(seq):
    global state
    state = (state * 1103515245 + 12345) % (1 << 31)
    return seq[(state >> 8) % len(seq)]
with open(sys.argv[1], "w") as f:
    for i in range(30):
        sentences = []
        for _ in range(3):
            sentences.append("The %s %s the %s near the %s." % (pick(words), pick(verbs), pick(words), pick(words)))
        text = "Document %d tells of the %s. %s" % (i, words[i % len(words)], " ".join(sentences))
        f.write(json.dumps({"id": "doc-%02d" % i, "text": text}) + "\n")
EOF

step "training a tiny model"
run_logged "$TMP/train.log" "rag train" \
  "$RAG" --threads 1 train --corpus "$TMP/corpus.jsonl" --out "$TMP/model" --preset tiny --steps 30 --quiet

step "building the index"
run_logged "$TMP/build.log" "rag build" \
  "$RAG" --threads 1 build --corpus "$TMP/corpus.jsonl" --model "$TMP/model" --out "$TMP/index" --quiet

# start_server WHAT [SERVE_OPTIONS...]: rag serve on the test's model and
# index at an ephemeral loopback port; sets SERVER_PID and ADDR.
start_server() {
  local what="$1"
  shift
  rm -f "$TMP/port"
  "$RAG" --threads 1 serve --model "$TMP/model" --index "$TMP/index" --listen 127.0.0.1:0 \
    --port-file "$TMP/port" "$@" >"$TMP/serve.log" 2>&1 &
  SERVER_PID=$!
  ADDR="127.0.0.1:$(wait_for_port "$SERVER_PID" "$TMP/port" "$TMP/serve.log" "$what")"
}

step "starting rag serve on an ephemeral port"
start_server "rag serve"
step "server at $ADDR (pid $SERVER_PID)"

client() { "$PY" "$CLIENT" --server "$ADDR" --stubs "$TMP/stubs" "$@"; }

# compare KIND FILE_A FILE_B: checks two JSON outputs agree (see each kind).
compare() {
  "$PY" - "$@" <<'EOF' || fail "$1: the Python client and the C++ client disagree (above)"
import json, sys
kind, a_path, b_path = sys.argv[1:4]
a, b = json.load(open(a_path)), json.load(open(b_path))
def die(msg):
    print("python client: %s\nrag CLI:       %s\n%s: %s" % (json.dumps(a), json.dumps(b), kind, msg), file=sys.stderr)
    sys.exit(1)
if kind == "search":
    na, nb = a["neighbours"], b["neighbours"]
    if not na: die("no neighbours")
    if len(na) != len(nb): die("%d neighbours vs %d" % (len(na), len(nb)))
    for i, (x, y) in enumerate(zip(na, nb)):
        if x["rank"] != i + 1: die("rank %r at position %d" % (x["rank"], i))
        for key in ("doc_id", "chunk_id", "text"):
            if x[key] != y[key]: die("neighbour %d: %s %r vs %r" % (i, key, x[key], y[key]))
        if abs(x["distance"] - y["distance"]) > 1e-6:
            die("neighbour %d: distance %r vs %r" % (i, x["distance"], y["distance"]))
elif kind == "score":
    if a["tokens"] != b["tokens"]: die("tokens %r vs %r" % (a["tokens"], b["tokens"]))
    for key in ("perplexity", "nll"):
        if abs(a[key] - b[key]) > 1e-9 * max(1.0, abs(b[key])): die("%s %r vs %r" % (key, a[key], b[key]))
elif kind == "generate":
    if a["text"] != b["text"]: die("text %r vs %r" % (a["text"], b["text"]))
    if a["tokens"] != b["tokens"]: die("tokens %r vs %r" % (a["tokens"], b["tokens"]))
    if len(a["token_ids"]) != a["tokens"]: die("%d streamed tokens, final message says %d" % (len(a["token_ids"]), a["tokens"]))
elif kind == "stats":
    for key in ("documents", "chunks", "tokens", "vectors", "dim", "index_factory", "model_hash", "documents_added"):
        if a[key] != b[key]: die("%s %r vs %r" % (key, a[key], b[key]))
else:
    die("unknown comparison")
EOF
}

# json_get FILE EXPR: prints EXPR evaluated on the JSON in FILE (bound to j).
json_get() { "$PY" -c 'import json, sys; j = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"; }

# ---------------------------------------------------------------------------
QUERY="The river crosses the bridge near the orchard."

step "search: Python client vs rag query"
client search --text "$QUERY" -k 5 --json >"$TMP/search_py.json" || server_fail "rag_client.py search failed"
"$RAG" query --server "$ADDR" --text "$QUERY" -k 5 --json >"$TMP/search_cli.json" || server_fail "rag query failed"
compare search "$TMP/search_py.json" "$TMP/search_cli.json"
client search --text "$QUERY" -k 2 >"$TMP/search_py.txt" || server_fail "rag_client.py search (text) failed"
grep -q '^1\. \[doc-' "$TMP/search_py.txt" || fail "search text output has no rank-1 line: $(cat "$TMP/search_py.txt")"

step "score: Python client vs rag score"
client score --text "$QUERY" --json >"$TMP/score_py.json" || server_fail "rag_client.py score failed"
"$RAG" score --server "$ADDR" --text "$QUERY" --json >"$TMP/score_cli.json" || server_fail "rag score failed"
compare score "$TMP/score_py.json" "$TMP/score_cli.json"

step "generate (greedy): Python client vs rag generate"
client generate --prompt "The river" --max-tokens 20 --seed 7 --json >"$TMP/gen_py.json" ||
  server_fail "rag_client.py generate failed"
"$RAG" generate --server "$ADDR" --prompt "The river" --max-tokens 20 --seed 7 --temperature 0 --json \
  >"$TMP/gen_cli.json" || server_fail "rag generate failed"
compare generate "$TMP/gen_py.json" "$TMP/gen_cli.json"
# Streamed (non-JSON) output: the same text, printed token by token. The
# server replaces each invalid byte by U+FFFD, Python's decoder each invalid
# sequence, so runs of U+FFFD are compared as one.
client generate --prompt "The river" --max-tokens 20 --seed 7 >"$TMP/gen_py.txt" ||
  server_fail "rag_client.py generate (streaming) failed"
"$PY" - "$TMP/gen_py.txt" "$TMP/gen_py.json" <<'EOF' || fail "streamed generate output differs from the final text"
import json, re, sys
streamed = open(sys.argv[1], encoding="utf-8").read()
final = json.load(open(sys.argv[2]))["text"] + "\n"
norm = lambda s: re.sub("\ufffd+", "\ufffd", s)
if not streamed.strip() or norm(streamed) != norm(final):
    sys.exit("streamed %r\nfinal    %r" % (streamed, final))
EOF

step "generate (sampled, seeded): Python client vs rag generate"
client generate --prompt "The meadow" --max-tokens 30 --temperature 0.9 --top-k 50 --top-p 0.95 --seed 11 --json \
  >"$TMP/sample_py.json" || server_fail "rag_client.py generate (sampled) failed"
"$RAG" generate --server "$ADDR" --prompt "The meadow" --max-tokens 30 --temperature 0.9 --top-k 50 --top-p 0.95 \
  --seed 11 --json >"$TMP/sample_cli.json" || server_fail "rag generate (sampled) failed"
compare generate "$TMP/sample_py.json" "$TMP/sample_cli.json"

step "next-token"
client next-token --text "The river" --top-n 3 --json >"$TMP/next_py.json" || server_fail "rag_client.py next-token failed"
[ "$(json_get "$TMP/next_py.json" 'len(j["tokens"])')" = 3 ] || fail "next-token --top-n 3: $(cat "$TMP/next_py.json")"

step "an invalid request (k = -1) fails with INVALID_ARGUMENT"
set +e
client search --text "$QUERY" --k -1 >"$TMP/bad.out" 2>"$TMP/bad.err"
rc=$?
set -e
[ "$rc" -ne 0 ] || fail "search --k -1 exited 0; output: $(cat "$TMP/bad.out")"
grep -q INVALID_ARGUMENT "$TMP/bad.err" || fail "search --k -1 did not print INVALID_ARGUMENT: $(cat "$TMP/bad.err")"

step "stats (stubs generated by the client itself) vs rag stats"
"$PY" "$CLIENT" --server "$ADDR" stats --json >"$TMP/stats_before.json" ||
  server_fail "rag_client.py stats without --stubs failed"
"$RAG" stats --server "$ADDR" >"$TMP/stats_cli.json" || server_fail "rag stats failed"
compare stats "$TMP/stats_before.json" "$TMP/stats_cli.json"

step "add a document through the client, then find it"
NEW_TEXT="A zebra juggles seven purple umbrellas on the frozen lake at midnight."
"$PY" -c 'import json, sys; print(json.dumps({"id": "added-zebra", "text": sys.argv[1], "metadata": {"source": "test"}}))' \
  "$NEW_TEXT" >"$TMP/new.jsonl"
client add --jsonl "$TMP/new.jsonl" --json >"$TMP/add.json" || server_fail "rag_client.py add failed"
[ "$(json_get "$TMP/add.json" 'j["documents_added"]')" = 1 ] || fail "add reported: $(cat "$TMP/add.json")"
client search --text "$NEW_TEXT" -k 3 --json >"$TMP/search_new.json" || server_fail "search for the added text failed"
[ "$(json_get "$TMP/search_new.json" 'j["neighbours"][0]["doc_id"]')" = added-zebra ] ||
  fail "the added document is not rank 1 for its own text: $(cat "$TMP/search_new.json")"
client stats --json >"$TMP/stats_after.json" || server_fail "stats after add failed"
before="$(json_get "$TMP/stats_before.json" 'j["documents"]')"
after="$(json_get "$TMP/stats_after.json" 'j["documents"]')"
[ "$after" -eq $((before + 1)) ] || fail "stats: $before documents before the add, $after after (expected $((before + 1)))"
[ "$(json_get "$TMP/stats_after.json" 'j["documents_added"]')" = 1 ] ||
  fail "stats documents_added after one add: $(cat "$TMP/stats_after.json")"

step "adding the same id again fails with ALREADY_EXISTS"
set +e
client add --jsonl "$TMP/new.jsonl" >"$TMP/dup.out" 2>"$TMP/dup.err"
rc=$?
set -e
[ "$rc" -ne 0 ] || fail "a duplicate add exited 0: $(cat "$TMP/dup.out")"
grep -q ALREADY_EXISTS "$TMP/dup.err" || fail "a duplicate add did not print ALREADY_EXISTS: $(cat "$TMP/dup.err")"

step "SIGTERM stops the server with status 0 within 10 s"
kill -TERM "$SERVER_PID"
for _ in $(seq 1 100); do
  kill -0 "$SERVER_PID" 2>/dev/null || break
  sleep 0.1
done
kill -0 "$SERVER_PID" 2>/dev/null && server_fail "rag serve still running 10 s after SIGTERM"
set +e
wait "$SERVER_PID"
rc=$?
set -e
SERVER_PID=""
[ "$rc" -eq 0 ] || server_fail "rag serve exited with status $rc after SIGTERM (expected 0)"

# ---------------------------------------------------------------------------
step "TLS and a bearer token: a second server, and the client's --tls-ca and --auth-token-file"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout "$TMP/key.pem" -out "$TMP/cert.pem" \
  >"$TMP/openssl.log" 2>&1 || { cat "$TMP/openssl.log" >&2; fail "openssl could not make a test certificate"; }
echo "py-client-s3cret-token-77" >"$TMP/token"
echo "py-client-s3cret-token-78" >"$TMP/wrong-token"
start_server "rag serve (TLS, token)" --tls-cert "$TMP/cert.pem" --tls-key "$TMP/key.pem" \
  --auth-token-file "$TMP/token"
client --tls-ca "$TMP/cert.pem" --auth-token-file "$TMP/token" score --text "$QUERY" --json >"$TMP/score_tls_py.json" ||
  server_fail "rag_client.py score over TLS with the token failed"
"$RAG" score --server "$ADDR" --tls-ca "$TMP/cert.pem" --auth-token-file "$TMP/token" --text "$QUERY" --json \
  >"$TMP/score_tls_cli.json" || server_fail "rag score over TLS with the token failed"
compare score "$TMP/score_tls_py.json" "$TMP/score_tls_cli.json"
compare score "$TMP/score_tls_py.json" "$TMP/score_cli.json"  # the same model and text as the plain server
client --tls-ca "$TMP/cert.pem" --auth-token-file "$TMP/token" generate --prompt "The river" --max-tokens 5 \
  --seed 7 --json >"$TMP/gen_tls_py.json" || server_fail "rag_client.py generate (a stream) over TLS with the token failed"
# expect_refused WHAT CODE ARGS...: the client fails and names the gRPC code.
expect_refused() {
  local what="$1" code="$2" rc
  shift 2
  set +e
  client "$@" score --text "$QUERY" >"$TMP/refused.out" 2>"$TMP/refused.err"
  rc=$?
  set -e
  [ "$rc" -ne 0 ] || fail "$what: the call succeeded: $(cat "$TMP/refused.out")"
  grep -q "$code" "$TMP/refused.err" || fail "$what: no $code in: $(cat "$TMP/refused.err")"
  step "$what: refused with $code"
}
expect_refused "TLS, no token" UNAUTHENTICATED --tls-ca "$TMP/cert.pem"
expect_refused "TLS, a wrong token" UNAUTHENTICATED --tls-ca "$TMP/cert.pem" --auth-token-file "$TMP/wrong-token"
expect_refused "the token over plaintext to a TLS server" UNAVAILABLE --auth-token-file "$TMP/token" --timeout 5
kill -TERM "$SERVER_PID"
set +e
wait "$SERVER_PID"
rc=$?
set -e
SERVER_PID=""
[ "$rc" -eq 0 ] || server_fail "rag serve (TLS, token) exited with status $rc after SIGTERM (expected 0)"

step "PASS in $((SECONDS - START)) s"

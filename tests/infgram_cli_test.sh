#!/usr/bin/env bash
# The infgram mode end to end on a tiny model and index: `rag score --mode
# infgram --components` in-process and over gRPC against a brute-force
# ∞-gram written from the paper (tests/python/infgram_reference.py), with
# and without own-document exclusion; next-token at lambda 1 (the ∞-gram
# alone); greedy generation at lambda 1 repeats a corpus document; `rag eval
# perplexity --mode infgram`; the errors a user can hit.
# Usage: infgram_cli_test.sh RAG_BINARY
set -euo pipefail
# shellcheck source=tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
lib_init infgram_cli_test
RAG="${1:?usage: infgram_cli_test.sh RAG_BINARY}"
[ -x "$RAG" ] || fail "rag binary '$RAG' is not executable"
REF="$(dirname "${BASH_SOURCE[0]}")/python/infgram_reference.py"

tiny_model_and_index "$RAG" 4242 keeps
M=(--model "$TMP/model" --index "$TMP/index")
run_logged "$TMP/tokenize.log" "rag tokenize" \
  "$RAG" tokenize --model "$TMP/model" --corpus "$TMP/corpus.jsonl" --out "$TMP/ids.jsonl"

# A text the corpus holds (doc-07) and one it does not (the same words in
# new sentences).
"$PY" -c 'import json,sys; [print(d["text"], end="") for d in map(json.loads, open(sys.argv[1])) if d["id"] == "doc-07"]' \
  "$TMP/corpus.jsonl" >"$TMP/own.txt"
printf 'The copper keeps the tide near the falcon. The river keeps the prism near the violin.' >"$TMP/new.txt"

score() {  # score OUT TEXT_FILE MODE [OPTIONS...]
  local out="$1" text="$2" mode="$3"
  shift 3
  run_logged "$out.log" "rag score --mode $mode $*" \
    "$RAG" --threads 1 score "${M[@]}" --text-file "$text" --mode "$mode" --json --components "$@"
  cp "$out.log" "$out"
}

step "scores against the reference (defaults, then lambda 0.3 / 0.9, then own document excluded)"
LAMBDA=$("$RAG" score --help | sed -n 's/.*of p_inf where several tokens follow the matched suffix (default \([0-9.]*\)).*/\1/p')
SPARSE=$("$RAG" score --help | sed -n 's/.*one token alone follows the matched suffix (default \([0-9.]*\)).*/\1/p')
if [ -z "$LAMBDA" ] || [ -z "$SPARSE" ]; then fail "rag score --help does not give the infgram defaults"; fi
for t in own new; do
  score "$TMP/$t.lm.json" "$TMP/$t.txt" lm
  score "$TMP/$t.inf.json" "$TMP/$t.txt" infgram
  "$PY" "$REF" "$TMP/ids.jsonl" score "$TMP/$t.inf.json" "$TMP/$t.lm.json" "$LAMBDA" "$SPARSE" >>"$TMP/ref.out" ||
    fail "infgram score of $t.txt differs from the reference"
  score "$TMP/$t.inf2.json" "$TMP/$t.txt" infgram --lambda 0.3 --lambda-sparse 0.9
  "$PY" "$REF" "$TMP/ids.jsonl" score "$TMP/$t.inf2.json" "$TMP/$t.lm.json" 0.3 0.9 >>"$TMP/ref.out" ||
    fail "infgram score of $t.txt at lambda 0.3/0.9 differs from the reference"
done
score "$TMP/own.excl.json" "$TMP/own.txt" infgram --exclude-doc-id doc-07
"$PY" "$REF" "$TMP/ids.jsonl" score "$TMP/own.excl.json" "$TMP/own.lm.json" "$LAMBDA" "$SPARSE" doc-07 >>"$TMP/ref.out" ||
  fail "infgram score of doc-07 with doc-07 excluded differs from the reference"
cat "$TMP/ref.out" >&2
# The risky cases happened: doc-07 matched itself whole, and excluding it
# cut the matches short.
"$PY" - "$TMP/own.inf.json" "$TMP/own.excl.json" <<'PYEOF' || fail "exclusion did not change the matches"
import json, sys
own, excl = (json.load(open(p))["token_logprobs"] for p in sys.argv[1:3])
a = max(t["infgram_suffix_tokens"] for t in own)
b = max(t["infgram_suffix_tokens"] for t in excl)
print("longest suffix: %d with doc-07, %d without" % (a, b), file=sys.stderr)
assert a >= len(own) - 1 and b < a / 2
PYEOF

step "gRPC gives the in-process answers"
"$RAG" --threads 1 serve "${M[@]}" --listen 127.0.0.1:0 --port-file "$TMP/port" >"$TMP/serve.log" 2>&1 &
SERVER_PID=$!
ADDR="127.0.0.1:$(wait_for_port "$SERVER_PID" "$TMP/port" "$TMP/serve.log" "rag serve")"
"$RAG" score --server "$ADDR" --text-file "$TMP/own.txt" --mode infgram --json --components \
  --exclude-doc-id doc-07 >"$TMP/own.excl.grpc.json"
"$PY" - "$TMP/own.excl.json" "$TMP/own.excl.grpc.json" <<'PYEOF' || fail "gRPC and in-process infgram scores differ"
import json, sys
a, b = (json.load(open(p))["token_logprobs"] for p in sys.argv[1:3])
assert len(a) == len(b) and all(abs(x["logprob"] - y["logprob"]) < 1e-5 for x, y in zip(a, b))
PYEOF
"$RAG" info --server "$ADDR" --json | grep -q '"infgram"' || fail "rag info does not list the infgram mode"

step "next-token at lambda 1 is the ∞-gram's distribution (a dense and a sparse estimate)"
for CONTEXT in "The copper keeps the prism near the" "The copper keeps the"; do
  "$RAG" tokenize --model "$TMP/model" --text "$CONTEXT" --json >"$TMP/context.json"
  "$RAG" next-token --server "$ADDR" --text "$CONTEXT" --mode infgram --lambda 1 --lambda-sparse 1 --top-n 30 \
    --json >"$TMP/next.json"
  "$PY" "$REF" "$TMP/ids.jsonl" next "$TMP/next.json" "$TMP/context.json" >>"$TMP/next.out" ||
    fail "infgram next-token after '$CONTEXT' differs from the reference"
done
cat "$TMP/next.out" >&2
if ! grep -q "^next: 1 followers" "$TMP/next.out" || ! grep -Eq "^next: ([2-9]|[1-9][0-9]+) followers" "$TMP/next.out"; then
  fail "the next-token contexts did not give one sparse and one dense estimate"
fi

step "greedy generation at lambda 1 repeats the document its prompt comes from"
# The first two sentences: a prompt that ends where a token does.
PROMPT=$("$PY" -c 'import sys; print(". ".join(open(sys.argv[1]).read().split(". ")[:2]) + ".", end="")' "$TMP/own.txt")
"$RAG" generate --server "$ADDR" --prompt "$PROMPT" --mode infgram --lambda 1 --lambda-sparse 1 --temperature 0 \
  --max-tokens 12 --json >"$TMP/gen.json"
"$PY" - "$TMP/gen.json" "$TMP/own.txt" "$PROMPT" <<'PYEOF' || fail "infgram generation did not follow the corpus"
import json, sys
text = json.load(open(sys.argv[1]))["text"]
own, prompt = open(sys.argv[2]).read(), sys.argv[3]
print("generated %r" % text, file=sys.stderr)
assert len(text) > 20 and own.startswith(prompt + text[:20]), text
PYEOF

step "rag eval perplexity --mode infgram"
run_logged "$TMP/eval.log" "rag eval perplexity --mode infgram" \
  "$RAG" --threads 1 eval perplexity "${M[@]}" --corpus "$TMP/corpus.jsonl" --split all --baseline none \
  --mode infgram --exclude-own-doc --json --quiet
"$PY" - "$TMP/eval.log" <<'PYEOF' || fail "eval perplexity --mode infgram gave no finite perplexity"
import json, math, sys
j = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
assert j["mode"] == "infgram" and math.isfinite(j["perplexity"]) and j["tokens"] > 0, j
PYEOF

step "errors"
if "$RAG" score --model "$TMP/model" --text "The river" --mode infgram 2>"$TMP/noindex.err"; then
  fail "infgram without an index succeeded"
fi
grep -q "mode infgram counts in the index's documents" "$TMP/noindex.err" || { cat "$TMP/noindex.err" >&2; fail "no clear error without an index"; }
if "$RAG" score --server "$ADDR" --text "The river" --mode infgram --lambda-sparse 1.5 2>"$TMP/lambda.err"; then
  fail "lambda_sparse 1.5 was accepted"
fi
grep -q "infgram.lambda_sparse must be in \[0, 1\]" "$TMP/lambda.err" || { cat "$TMP/lambda.err" >&2; fail "no clear error for lambda_sparse"; }
echo "infgram_cli_test: PASS"

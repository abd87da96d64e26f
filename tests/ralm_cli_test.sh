#!/usr/bin/env bash
# The ralm mode (In-Context RALM) end to end on a tiny model and index:
# the passage put in front of a prompt's continuation is the top chunk that
# `rag query` gives for the prompt (BM25 and dense, with and without the
# prompt's document excluded); next-token after a prompt is the distribution
# `rag score --prompt-bytes` gives the token after it, and greedy generation
# follows it; the first block (no query yet) is the plain LM; gRPC gives the
# in-process answers; `rag eval perplexity --mode ralm` records its
# settings; the errors a user can hit. The layout itself is checked against
# hand-laid windows in tests/in_context_test.cc.
# Usage: ralm_cli_test.sh RAG_BINARY
set -euo pipefail
# shellcheck source=tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
lib_init ralm_cli_test
RAG="${1:?usage: ralm_cli_test.sh RAG_BINARY}"
[ -x "$RAG" ] || fail "rag binary '$RAG' is not executable"

# Chunks of 16 tokens and 16 of continuation: the default passage (a quarter
# of the tiny model's 64-token context) is a chunk; 32 tokens are a chunk and
# its continuation.
tiny_model_and_index "$RAG" 5151 holds --chunk-tokens 16 --continuation-tokens 16
M=(--model "$TMP/model" --index "$TMP/index")
"$PY" -c 'import json,sys; [print(d["text"], end="") for d in map(json.loads, open(sys.argv[1])) if d["id"] == "doc-11"]' \
  "$TMP/corpus.jsonl" >"$TMP/own.txt"
# The prompt: doc-11's first sentence (shorter than the 32-token query).
PROMPT=$("$PY" -c 'import sys; print(open(sys.argv[1]).read().split(". ")[0] + ".", end="")' "$TMP/own.txt")

step "the passage of a generation is rag query's top chunk for the prompt"
gen() {  # gen OUT [OPTIONS...]
  local out="$1"
  shift
  run_logged "$out" "rag generate --mode ralm $*" \
    "$RAG" --threads 1 generate "${M[@]}" --prompt "$PROMPT" --mode ralm --temperature 0 --max-tokens 9 --json "$@"
}
query() {  # query OUT METHOD [OPTIONS...]
  local out="$1" method="$2"
  shift 2
  run_logged "$out" "rag query --method $method $*" \
    "$RAG" --threads 1 query "${M[@]}" --text "$PROMPT" --method "$method" -k 1 --json "$@"
}
gen "$TMP/gen.bm25.json" --search-method bm25 --ralm-passage-tokens 32
query "$TMP/query.bm25.json" bm25
gen "$TMP/gen.dense.json"
query "$TMP/query.dense.json" dense
TOP=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["neighbours"][0]["doc_id"])' "$TMP/query.bm25.json")
gen "$TMP/gen.excl.json" --search-method bm25 --ralm-passage-tokens 32 --exclude-doc-id "$TOP"
query "$TMP/query.excl.json" bm25 --exclude-doc "$TOP"
"$PY" - "$TMP" "$TOP" "$PROMPT" <<'PYEOF' || fail "the passages are not rag query's top chunks"
import json, sys
tmp, top, prompt = sys.argv[1], sys.argv[2], sys.argv[3]
def last_json(path):
    return json.loads(open(path).read().strip().splitlines()[-1])
for arm in ("bm25", "dense", "excl"):
    gen = last_json("%s/gen.%s.json" % (tmp, arm))
    hit = json.load(open("%s/query.%s.json" % (tmp, arm)))["neighbours"][0]
    r = gen["retrievals"]
    # 9 tokens from the prompt's end: blocks at 0, 4 and 8 of the generated text.
    assert [x["chunk"] for x in r] == [0, 1, 2], r
    assert r[0]["query"] == prompt, (r[0]["query"], prompt)
    assert r[0]["doc_ids"] == [hit["doc_id"]], (arm, r[0]["doc_ids"], hit["doc_id"])
    # The passage: 32 tokens (chunk and continuation), or the default 16 (the chunk).
    passage = hit["text"] if arm == "dense" else hit["text"] + hit["continuation"]
    assert r[0]["neighbours"] == [passage], (arm, r[0]["neighbours"], passage)
    print("%s: passage from %s" % (arm, hit["doc_id"]), file=sys.stderr)
assert last_json(tmp + "/gen.excl.json")["retrievals"][0]["doc_ids"] != [top]
PYEOF

step "next-token after the prompt is the scored distribution, and greedy generation follows it"
R=(--mode ralm --search-method bm25 --ralm-passage-tokens 32)  # as gen.bm25.json
run_logged "$TMP/next.json" "rag next-token --mode ralm" \
  "$RAG" --threads 1 next-token "${M[@]}" --text "$PROMPT" "${R[@]}" --top-n 1000 --json
run_logged "$TMP/score.json" "rag score --mode ralm --prompt-bytes" \
  "$RAG" --threads 1 score "${M[@]}" --text-file "$TMP/own.txt" --prompt-bytes ${#PROMPT} "${R[@]}" --json
run_logged "$TMP/score.lm.json" "rag score --mode lm" \
  "$RAG" --threads 1 score "${M[@]}" --text-file "$TMP/own.txt" --mode lm --json
run_logged "$TMP/prompt.ids.json" "rag tokenize" "$RAG" tokenize --model "$TMP/model" --text "$PROMPT" --json
"$PY" - "$TMP" <<'PYEOF' || fail "ralm next-token, score and generation disagree"
import json, math, sys
tmp = sys.argv[1]
def last_json(path):
    return json.loads(open(path).read().strip().splitlines()[-1])
nxt = last_json(tmp + "/next.json")
score = last_json(tmp + "/score.json")
lm = last_json(tmp + "/score.lm.json")
ids = last_json(tmp + "/prompt.ids.json")["ids"]
toks = score["token_logprobs"]
p = len(ids)
assert [t["token"] for t in toks[:p]] == ids, "the prompt's tokens do not start the text"
by_id = {t["token"]: t["logprob"] for t in nxt["tokens"]}
target = toks[p]["token"]
assert abs(by_id[target] - toks[p]["logprob"]) < 1e-4, (by_id[target], toks[p]["logprob"])
# The first block has no query: the plain LM's.
for a, b in zip(toks[:4], lm["token_logprobs"][:4]):
    assert abs(a["logprob"] - b["logprob"]) < 1e-4, (a, b)
# ...and the passages change the rest.
assert max(abs(a["logprob"] - b["logprob"]) for a, b in zip(toks[4:], lm["token_logprobs"][4:])) > 1e-3
blocks = math.ceil(p / 4) + math.ceil((len(toks) - p) / 4)
assert score["retrievals"] == blocks - 1, (score["retrievals"], blocks)
gen = last_json(tmp + "/gen.bm25.json")
best = max(nxt["tokens"], key=lambda t: t["logprob"])["token"]
assert gen["token_ids"][0] == best, (gen["token_ids"][0], best)
print("token after the prompt: %.5f (next-token) vs %.5f (score); %d retrievals" %
      (by_id[target], toks[p]["logprob"], score["retrievals"]), file=sys.stderr)
PYEOF

step "gRPC gives the in-process answers"
"$RAG" --threads 1 serve "${M[@]}" --listen 127.0.0.1:0 --port-file "$TMP/port" >"$TMP/serve.log" 2>&1 &
SERVER_PID=$!
ADDR="127.0.0.1:$(wait_for_port "$SERVER_PID" "$TMP/port" "$TMP/serve.log" "rag serve")"
"$RAG" info --server "$ADDR" --json | grep -q '"ralm"' || fail "rag info does not list the ralm mode"
"$RAG" score --server "$ADDR" --text-file "$TMP/own.txt" --prompt-bytes ${#PROMPT} "${R[@]}" --json \
  >"$TMP/score.grpc.json"
"$RAG" generate --server "$ADDR" --prompt "$PROMPT" "${R[@]}" --temperature 0 --max-tokens 9 --json \
  >"$TMP/gen.grpc.json"
"$PY" - "$TMP" <<'PYEOF' || fail "gRPC and in-process ralm answers differ"
import json, sys
tmp = sys.argv[1]
def last_json(path):
    return json.loads(open(path).read().strip().splitlines()[-1])
a, b = (last_json(tmp + p)["token_logprobs"] for p in ("/score.json", "/score.grpc.json"))
assert len(a) == len(b) and all(abs(x["logprob"] - y["logprob"]) < 1e-5 for x, y in zip(a, b))
assert last_json(tmp + "/gen.bm25.json")["token_ids"] == last_json(tmp + "/gen.grpc.json")["token_ids"]
PYEOF

step "rag eval perplexity --mode ralm records its settings"
run_logged "$TMP/eval.log" "rag eval perplexity --mode ralm" \
  "$RAG" --threads 1 eval perplexity "${M[@]}" --corpus "$TMP/corpus.jsonl" --split all --baseline none \
  --mode ralm --exclude-own-doc --ralm-stride 8 --json --quiet
"$PY" - "$TMP/eval.log" <<'PYEOF' || fail "eval perplexity --mode ralm gave no perplexity or no settings"
import json, math, sys
j = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
assert j["mode"] == "ralm" and math.isfinite(j["perplexity"]) and j["tokens"] > 0, j
assert j["ralm"] == {"stride": 8, "query_tokens": 32, "passage_tokens": 16, "search_method": "dense"}, j["ralm"]
assert j["exclude_own_document"] is True
PYEOF

step "errors"
expect_error() {  # expect_error MESSAGE ARGS...
  local message="$1"
  shift
  if "$RAG" "$@" 2>"$TMP/err"; then fail "rag $* succeeded"; fi
  grep -qF "$message" "$TMP/err" || { cat "$TMP/err" >&2; fail "rag $*: no clear error ('$message')"; }
}
expect_error "mode ralm retrieves passages from an index" score --model "$TMP/model" --text "The river" --mode ralm
expect_error "ralm.stride must be in [0, 32]" score --server "$ADDR" --text "The river" --mode ralm --ralm-stride 33
expect_error "ralm.passage_tokens must be in [0, 60]" \
  score --server "$ADDR" --text "The river" --mode ralm --ralm-passage-tokens 61
expect_error "prompt_bytes must be in [0, the text's 9 bytes]" \
  score --server "$ADDR" --text "The river" --mode ralm --prompt-bytes 10
echo "ralm_cli_test: PASS"

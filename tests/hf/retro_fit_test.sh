#!/usr/bin/env bash
# RETRO-fitting a downloaded model (Borgeaud et al. 2022, 4.4: the
# pretrained decoder frozen, only the neighbour encoder and the chunked
# cross-attention trained), end to end with `rag`: a random GPT-2-layout
# directory (vocab.json + merges.txt, learned positions) and a random
# GPT-NeoX-layout one (Pythia's tokenizer.json layout with end-of-text at id 0,
# 2 shards, rotary on a quarter of each head, parallel residual, untied
# output), made by
# tests/hf/make_hf_checkpoint.py with GPT-2's real vocabulary. For each:
# `rag build --model DIR`, `rag train --arch retro --init DIR` for a few
# steps, then
#   (a) the decoder is frozen: `rag score --mode retro --retrieval off` on the
#       RETRO model equals `rag score` of the downloaded directory within 1e-5
#       per token, and --mode lm (served by base/) equals it exactly;
#   (b) the cross-attention learned: validation loss with neighbours is below
#       the loss without, and retrieval changes the scores;
#   (c) the saved model reopens: base/ is a Hugging Face directory with the
#       downloaded model's content hash, `rag eval perplexity --mode retro`
#       runs on the split the training made (split.json), and `rag serve`
#       answers Score as in-process.
# An index built with the other model is refused.
#
# Usage: retro_fit_test.sh RAG_BINARY REPO_SOURCE_DIR GPT2_VOCAB_DIR
# (KEEP_TMP=1 keeps the working directory.)
set -euo pipefail
# shellcheck source=tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
lib_init retro_fit_test

RAG="${1:?usage: retro_fit_test.sh RAG_BINARY REPO_SOURCE_DIR GPT2_VOCAB_DIR}"
SRC="${2:?}"
VOCAB="${3:?}"
MAKE="$SRC/tests/hf/make_hf_checkpoint.py"

[ -x "$RAG" ] || fail "rag binary '$RAG' is not executable"
[ -f "$VOCAB/encoder.json" ] && [ -f "$VOCAB/vocab.bpe" ] ||
  fail "no GPT-2 vocabulary in $VOCAB (scripts/prepare_corpus.sh fetches it)"
"$PY" -c 'import numpy' || fail "$PY cannot import numpy (scripts/setup.sh installs python3-numpy)"

step "writing a 40-document corpus"
# Sentences over a small word list: every chunk has neighbours sharing most
# of its words, so the cross-attention has something to read.
"$PY" - "$TMP/corpus.jsonl" <<'EOF'
import json, sys
words = ("river stone bridge lantern harvest meadow copper violin orchard glacier thunder candle "
         "harbour falcon pepper marble saddle compass willow ember quartz tide ledger prism").split()
state = 777
def pick(seq):
    global state
    state = (state * 1103515245 + 12345) % (1 << 31)
    return seq[(state >> 8) % len(seq)]
with open(sys.argv[1], "w") as f:
    for i in range(40):
        text = " ".join(f"The {pick(words)} of the {pick(words)} is near the {pick(words)}." for _ in range(10))
        f.write(json.dumps({"id": f"doc{i:02d}", "text": text}) + "\n")
EOF
# RETRO chunks of 16 tokens (the index's), neighbours of chunk + continuation.
echo '{"chunk_size": 16, "neighbour_tokens": 32, "encoder_layers": 1}' > "$TMP/retro.json"

"$PY" "$MAKE" --arch gpt2 --out "$TMP/gpt2" --gpt2-vocab "$VOCAB" --seed 21 --layers 2 --width 64 --heads 4 \
  --context 128 --dtype float32 || fail "make_hf_checkpoint.py gpt2"
"$PY" "$MAKE" --arch gpt_neox --out "$TMP/neox" --gpt2-vocab "$VOCAB" --seed 22 --layers 2 --width 64 --heads 4 \
  --context 128 --shards 2 --rotary-pct 0.25 --parallel-residual 1 --qk-std 0.2 --tokenizer neox ||
  fail "make_hf_checkpoint.py gpt_neox"

TEXT="The copper of the violin is near the harbour. The river of the stone is near the bridge."
# Max |a - b| over per-token log-probs of two `rag score --json` outputs; fails above $3.
compare_scores() {
  "$PY" - "$1" "$2" "$3" <<'EOF'
import json, sys
a = [t["logprob"] for t in json.load(open(sys.argv[1]))["token_logprobs"]]
b = [t["logprob"] for t in json.load(open(sys.argv[2]))["token_logprobs"]]
assert len(a) == len(b) > 10, (len(a), len(b))
worst = max(abs(x - y) for x, y in zip(a, b))
print(f"  {len(a)} tokens, max |diff| = {worst:.2e}", file=sys.stderr)
assert worst <= float(sys.argv[3]), worst
EOF
}

for arch in gpt2 neox; do
  M="$TMP/$arch"
  R="$TMP/$arch.retro"
  step "$arch: rag build --model (chunks of 16 + 16)"
  "$RAG" build --corpus "$TMP/corpus.jsonl" --model "$M" --out "$TMP/$arch.idx" --chunk-tokens 16 \
    --continuation-tokens 16 --quiet > /dev/null || fail "$arch: rag build"

  step "$arch: rag train --arch retro --init (decoder frozen)"
  "$RAG" train --arch retro --init "$M" --index "$TMP/$arch.idx" --out "$R" --config "$TMP/retro.json" \
    --preset tiny --steps 30 --batch-size 4 --lr 3e-3 --eval-every 0 --checkpoint-every 0 --quiet --json \
    > "$TMP/$arch.train.json" 2> "$TMP/$arch.train.log" || { cat "$TMP/$arch.train.log" >&2; fail "$arch: rag train"; }
  "$PY" - "$TMP/$arch.train.json" <<'EOF' || fail "$arch: the cross-attention did not learn"
import json, math, sys
j = json.load(open(sys.argv[1]))
assert j["arch"] == "retro" and j["retrofit"] is True and j["steps"] == 30, j
assert j["validation_documents"] >= 1 and j["train_documents"] >= 30, j
with_nb, without = j["validation_loss"], j["validation_loss_no_retrieval"]
print(f"  validation loss {with_nb:.3f} with neighbours, {without:.3f} without", file=sys.stderr)
assert math.isfinite(with_nb) and with_nb < without - 0.1, j
EOF
  [ -f "$R/split.json" ] || fail "$arch: the RETRO model has no split.json"
  grep -q "has no split.json (a downloaded model)" "$TMP/$arch.train.log" || fail "$arch: the made split is not reported"

  step "$arch: base/ is the downloaded directory, with its content hash"
  "$PY" - "$R/base/config.json" <<'EOF' || fail "$arch: base/ is not a Hugging Face directory"
import json, sys
assert "model_type" in json.load(open(sys.argv[1]))
EOF
  ls "$R/base" | grep -q safetensors || fail "$arch: base/ has no safetensors file: $(ls "$R/base")"
  "$RAG" info --model "$M" --json > "$TMP/$arch.info.json" || fail "$arch: rag info (downloaded)"
  "$RAG" info --model "$R" --json > "$TMP/$arch.retro.info.json" || fail "$arch: rag info (RETRO)"
  "$PY" - "$TMP/$arch.info.json" "$TMP/$arch.retro.info.json" <<'EOF' || fail "$arch: base/ is not the downloaded model"
import json, sys
hf = json.load(open(sys.argv[1]))["model"]
retro = json.load(open(sys.argv[2]))["model"]
assert retro["format"] == "huggingface" and retro["content_hash"] == hf["content_hash"], (hf, retro)
EOF

  step "$arch: (a) with retrieval off the RETRO model scores as the downloaded one"
  "$RAG" score --model "$M" --text "$TEXT" --json > "$TMP/$arch.hf.score.json" || fail "$arch: score (downloaded)"
  "$RAG" score --model "$R" --mode retro --retrieval off --text "$TEXT" --json > "$TMP/$arch.off.score.json" ||
    fail "$arch: score --mode retro --retrieval off"
  compare_scores "$TMP/$arch.hf.score.json" "$TMP/$arch.off.score.json" 1e-5 ||
    fail "$arch: the decoder moved during training (retrieval off != downloaded model)"
  "$RAG" score --model "$R" --mode lm --text "$TEXT" --json > "$TMP/$arch.lm.score.json" || fail "$arch: score --mode lm"
  compare_scores "$TMP/$arch.hf.score.json" "$TMP/$arch.lm.score.json" 0 || fail "$arch: base/ scores differently"

  step "$arch: (b, c) with retrieval the trained cross-attention changes the scores"
  "$RAG" score --model "$R" --index "$TMP/$arch.idx" --mode retro --text "$TEXT" --json \
    > "$TMP/$arch.on.score.json" || fail "$arch: score --mode retro"
  if compare_scores "$TMP/$arch.off.score.json" "$TMP/$arch.on.score.json" 1e-3 2> /dev/null; then
    fail "$arch: retrieval changes nothing: the cross-attention did not train"
  fi
  "$RAG" eval perplexity --model "$R" --index "$TMP/$arch.idx" --corpus "$TMP/corpus.jsonl" --split validation \
    --baseline none --mode retro --quiet --json > "$TMP/$arch.ppl.json" || fail "$arch: eval perplexity --mode retro"
done

step "an index built with the other model is refused"
if "$RAG" train --arch retro --init "$TMP/neox" --index "$TMP/gpt2.idx" --out "$TMP/mismatch" \
  --config "$TMP/retro.json" --preset tiny --steps 2 --quiet > "$TMP/mismatch.out" 2>&1; then
  fail "RETRO-fitting the GPT-NeoX model accepted the GPT-2 model's index"
fi
grep -q "was built with model" "$TMP/mismatch.out" || fail "unclear mismatch error: $(cat "$TMP/mismatch.out")"

step "rag serve on the RETRO-fitted GPT-NeoX model answers as in-process"
"$RAG" serve --model "$TMP/neox.retro" --index "$TMP/neox.idx" --listen 127.0.0.1:0 --port-file "$TMP/port" \
  > "$TMP/serve.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 300); do [ -s "$TMP/port" ] && break; sleep 0.1; done
[ -s "$TMP/port" ] || { cat "$TMP/serve.log" >&2; fail "rag serve did not start"; }
"$RAG" score --server "127.0.0.1:$(cat "$TMP/port")" --mode retro --text "$TEXT" --json \
  > "$TMP/served.score.json" || fail "score --mode retro over gRPC"
compare_scores "$TMP/neox.on.score.json" "$TMP/served.score.json" 0 || fail "served log-probs differ from in-process ones"
kill -TERM "$SERVER_PID"; wait "$SERVER_PID" || fail "rag serve did not stop cleanly"; SERVER_PID=""
echo "retro_fit_test: ok (gpt2 and gpt_neox: decoder frozen = downloaded model within 1e-5, cross-attention trained, reopens, serves)"

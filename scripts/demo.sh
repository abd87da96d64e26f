#!/usr/bin/env bash
# One command from a fresh Debian 12 machine to the main job on the embedded
# default corpus (the Brown corpus): set-up, build, train the `small` model,
# then evaluate it (validation perplexity against the unigram baseline) and
# generate from it. A second run reuses what the first one finished; an
# interrupted training run resumes from its checkpoint.
#
# Environment: RAG_DATA_DIR (default <repo>/data), RAG_DEMO_PRESET (small),
# RAG_DEMO_STEPS (the preset's default).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
data="${RAG_DATA_DIR:-$here/data}"
preset="${RAG_DEMO_PRESET:-small}"
model="$data/models/brown-$preset"
corpus="$data/brown/brown.jsonl"
rag="${RAG_BUILD_DIR:-$here/build}/services/rag"

"$here/scripts/setup.sh"
RAG_BUILD_TARGET=rag "$here/scripts/build.sh"

section() { printf '\n== %s ==\n' "$*"; }

section "1. Train the $preset model on the Brown corpus ($corpus)"
steps=()
[ -n "${RAG_DEMO_STEPS:-}" ] && steps=(--steps "$RAG_DEMO_STEPS")
if [ -f "$model/model_info.json" ]; then
  echo "already trained: $model (delete it to train again)"
elif [ -f "$model/checkpoint.pt" ]; then
  "$rag" train --corpus "$corpus" --out "$model" --preset "$preset" "${steps[@]}" --resume
else
  "$rag" train --corpus "$corpus" --out "$model" --preset "$preset" "${steps[@]}"
fi

section "2. Validation perplexity (held-out Brown documents) vs the unigram baseline"
"$rag" eval perplexity --model "$model" --corpus "$corpus" --split validation --quiet \
  --output "$model/eval_validation.json"
echo "(JSON: $model/eval_validation.json; the target is a ratio to unigram of at most 1/3)"

section "3. Score a sentence"
"$rag" score --model "$model" --text "The jury said it did find that the election was conducted well."

section "4. Generate (greedy, then top-p sampling)"
for prompt in "The committee said that" "She looked at him and"; do
  printf -- '--- greedy: "%s" ->\n%s' "$prompt" "$prompt"
  "$rag" generate --model "$model" --prompt "$prompt" --temperature 0 --max-tokens 40
  printf -- '--- top-p 0.9, T 0.8: "%s" ->\n%s' "$prompt" "$prompt"
  "$rag" generate --model "$model" --prompt "$prompt" --temperature 0.8 --top-p 0.9 --seed 1 --max-tokens 40
done

#!/usr/bin/env bash
# One command from a fresh Debian 12 machine to the main job on the embedded
# default corpus (the Brown corpus): set-up, build, train the `small` model,
# evaluate it (validation perplexity against the unigram baseline), generate
# from it, build the retrieval index and the kNN-LM datastore over the
# corpus, start the gRPC server, query it, and compare LM and kNN-LM
# perplexity and generations over gRPC. A second run reuses what the first one finished; an
# interrupted training run or index build resumes where it stopped.
#
# About an hour on 2 cores. `scripts/demo.sh --quick` (scripts/demo_quick.sh)
# shows the system's point in a few minutes.
#
# Environment: RAG_DATA_DIR (default <repo>/data), RAG_DEMO_PRESET (small),
# RAG_DEMO_STEPS (the preset's default).
set -euo pipefail
case "${1:-}" in
  --quick) exec "$(dirname "${BASH_SOURCE[0]}")/demo_quick.sh" ;;
  --full | "") ;;
  *) echo "usage: scripts/demo.sh [--quick | --full]" >&2; exit 2 ;;
esac
# shellcheck source=scripts/demo_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/demo_common.sh"
preset="${RAG_DEMO_PRESET:-small}"
model="$data/models/brown-$preset"
index="$data/indexes/brown-$preset"

demo_setup

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

section "5. Build the retrieval index and the kNN-LM datastore ($index)"
if [ -f "$index/manifest.json" ] && [ -f "$index/datastore/keys.faiss" ]; then
  echo "already built: $index (delete it to build again)"
else
  # The datastore holds one key per token of the model's training documents
  # (about 1.6M keys, ~10 min on 2 cores), so the validation documents the
  # demo scores are not in it. Rerunning the same command after an
  # interruption resumes the build; --overwrite only replaces an index an
  # older demo built without a datastore.
  "$rag" build --corpus "$corpus" --model "$model" --out "$index" --overwrite \
    --datastore --datastore-split train --datastore-factory "IVF1024,PQ32"
fi
"$rag" validate "$index" --json

section "6. Start the gRPC server (127.0.0.1, a free port) and query it"
demo_serve "$model" "$index"
"$rag" stats --server "$server"
for q in "The jury said the election was conducted" \
         "The President sent a message to Congress about the budget" \
         "She looked at him and smiled"; do
  printf -- '\n--- neighbours of "%s" (over gRPC):\n' "$q"
  "$rag" query --server "$server" --text "$q" -k 3
done
printf -- '\n--- next tokens after "The jury said" (over gRPC):\n'
"$rag" next-token --server "$server" --text "The jury said" --top-n 5
if [ -f "$here/examples/python/rag_client.py" ]; then
  printf -- '\n--- the same search from the Python client (examples/python):\n'
  /usr/bin/python3 "$here/examples/python/rag_client.py" --server "$server" search \
    --text "The jury said the election was conducted" -k 3
fi

section "7. kNN-LM over gRPC: validation perplexity, LM vs kNN-LM, and generation in both modes"
# Each validation document is scored once per temperature of the neighbour
# distribution; each pass interpolates the LM's and the neighbours'
# log-probabilities at every lambda (the LM alone is printed too).
"$rag" eval perplexity --server "$server" --corpus "$corpus" --split validation --mode knnlm \
  --sweep "lambda=0.25,0.5;temperature=1,10" --baseline none --output "$model/eval_knnlm_validation.json" \
  --report "$model/report"
echo "(JSON: $model/eval_knnlm_validation.json; the target is at least 13% below the LM at the best lambda)"
for mode in lm knnlm; do
  printf -- '--- %s, greedy: "The committee said that" ->\nThe committee said that' "$mode"
  "$rag" generate --server "$server" --mode "$mode" --prompt "The committee said that" \
    --temperature 0 --max-tokens 40
done

section "8. Knowledge probes: WordNet facts added to the live index (never to the LM's training data)"
# scripts/wordnet_probes.py renders facts from WordNet 3.0 (Debian's
# wordnet-base): national capitals (instances of national_capital, the
# country from their part holonym) and people's occupations (instances of
# composer, painter, ...). Each fact becomes one document ("Honiara is the
# capital of Solomon Islands." plus WordNet's gloss), added over gRPC to the
# running server: the chunk index and the kNN-LM datastore take it at once.
# The probes ask the facts in the documents' words (capital-of, occupation)
# and the other way round (capital-is: "The capital of [X] is [Y]."), which
# no document says. --exclude-evidence scores each probe without its own
# document: what the system knows without the injected fact.
probes_dir="$data/probes/wordnet"
/usr/bin/python3 "$here/scripts/wordnet_probes.py" --out "$probes_dir" \
  --train-out "$probes_dir/train"
"$rag" add --server "$server" --corpus "$probes_dir/facts.jsonl" --skip-existing --quiet
for run in "lm|--mode lm" "knnlm_without_evidence|--mode knnlm --exclude-evidence" "knnlm|--mode knnlm"; do
  echo
  name="${run%%|*}"
  args="${run#*|}"
  "$rag" eval probes --server "$server" --probes "$probes_dir/probes.jsonl" $args --quiet \
    --output "$model/probes_$name.json" --report "$model/report"
done
echo "(JSON: $model/probes_*.json)"
# Other WordNet facts, none about a probe's subject and each stated in two
# wordings ("Sana is the capital of Yemen." / "The capital of Yemen is
# Sana."), for RETRO to learn in step 10 to read a fact from its neighbours.
# Added after the kNN-LM probes: 1,403 sentences of the same shapes in the
# datastore pull the kNN distribution towards every occupation and
# capital they name (knnlm P@1 0.39 instead of 0.61, docs/results.md).
"$rag" add --server "$server" --corpus "$probes_dir/train/train_facts.jsonl" --skip-existing --quiet

section "9. Memorization: does the model, or the datastore, reproduce its training text?"
# Carlini et al. 2023: sequences drawn (seeded) from the training split,
# greedy continuation of 16, 32 and 64 tokens of true prefix, compared with
# the true 32-token suffix; columns bucket the samples by how often
# prefix + suffix occurs in the corpus (exact counts, suffix array). The
# kNN-LM is run with the sampled document's keys in its datastore and
# without them (--exclude-own-doc): the difference is what retrieval adds.
for run in "lm|--mode lm" "knnlm|--mode knnlm" "knnlm_own_doc_excluded|--mode knnlm --exclude-own-doc"; do
  echo
  name="${run%%|*}"
  args="${run#*|}"
  "$rag" eval memorization --server "$server" --corpus "$corpus" --split train --samples 30 \
    --prefix-lengths 16,32,64 --suffix-tokens 32 $args --quiet --output "$model/memorization_$name.json" \
    --report "$model/report"
done
echo "(JSON: $model/memorization_*.json; plots and summary: $model/report/summary.md)"
printf -- '\n--- exact counts from the index (rag count):\n'
"$rag" count --index "$index" --model "$model" --text "the United States"

demo_stop_server

section "10. RETRO: retrofit chunked cross-attention onto the LM; retrieval on, off and random"
# The decoder stays frozen; a 2-layer neighbour encoder and CCA at decoder
# layers 1 and 3 learn to read 2 neighbours (chunk + continuation) of every
# 64-token chunk, retrieved from the index above with the chunk's own
# document excluded, and of prompt windows: a document's first tokens
# (Brown's and the training facts' of step 8) padded to end a chunk, whose
# continuation attends to the neighbours BM25 finds for the prompt (19 in
# 20 may find their own document, which teaches copying from a neighbour
# that continues the prompt: --prompt-own-document; run 12 of
# docs/results.md). The padding is hidden from the frozen decoder's
# self-attention (all but its last token), so a padded prompt reads as the
# LM read [end-of-text, prompt]. The probe facts are left out of training
# (--exclude-documents): they reach RETRO only through the index.
# RAG_DEMO_RETRO_STEPS sets the steps (default the recipe's, about 5 s each
# on 2 cores); rerunning resumes.
retro="$model-retro"
# shellcheck source=scripts/retro_copy_recipe.sh
source "$here/scripts/retro_copy_recipe.sh"
retro_copy_recipe "$index" "$model" "$probes_dir/facts.jsonl" "${RAG_DEMO_RETRO_STEPS:-}"
retro_train=("${RETRO_COPY_RECIPE[@]}" --out "$retro")
if [ -f "$retro/model_info.json" ]; then
  echo "already trained: $retro (delete it to train again)"
elif [ -f "$retro/checkpoint.pt" ]; then
  "$rag" "${retro_train[@]}" --resume
else
  "$rag" "${retro_train[@]}"
fi
# Validation perplexity with the neighbours of each chunk (own document
# excluded, as in training), with none (the ablation: the frozen LM) and
# with random chunks (the control).
for retrieval in on off random; do
  echo
  "$rag" eval perplexity --model "$retro" --index "$index" --corpus "$corpus" --split validation --mode retro \
    --retrieval "$retrieval" --exclude-own-doc --quiet --output "$retro/eval_retro_$retrieval.json"
done
echo "(JSON: $retro/eval_retro_*.json; see docs/results.md for why Brown's neighbours help this little)"
printf -- '--- retro, greedy, with the neighbours of each chunk: "The committee said that" ->\nThe committee said that'
"$rag" generate --model "$retro" --index "$index" --mode retro --prompt "The committee said that" \
  --temperature 0 --max-tokens 80 --show-neighbours
# The WordNet probes in retro mode: each probe's left context ends a chunk,
# so the object attends to the neighbours retrieved with it, here by BM25
# (which finds the fact's document for every probe; the small LM's
# embeddings for 18%), re-cut so the fact's object starts the neighbour's
# continuation. The retrofit copies the object from the aligned neighbour
# tokens (capital-of 0.70, occupation 0.79 P@1 in run 12) but has not
# learnt to read a fact stated the other way round (capital-is, about
# 0.03): 0.56 overall, 10x the LM (docs/results.md).
echo
"$rag" eval probes --model "$retro" --index "$index" --probes "$probes_dir/probes.jsonl" --mode retro \
  --search-method bm25 --quiet --output "$model/probes_retro_bm25.json" --report "$model/report"
# Memorization in retro mode: the prefix laid out to end a chunk and its
# neighbours re-cut on it, with the sampled document in the index and
# without it (with it, more of the true suffix comes back).
for run in "retro|" "retro_own_doc_excluded|--exclude-own-doc"; do
  echo
  name="${run%%|*}"
  args="${run#*|}"
  "$rag" eval memorization --model "$retro" --index "$index" --corpus "$corpus" --split train --samples 30 \
    --prefix-lengths 16,32,64 --suffix-tokens 32 --mode retro $args --quiet \
    --output "$model/memorization_$name.json" --report "$model/report"
done
echo "(JSON: $model/probes_retro_bm25.json, $model/memorization_retro*.json; report: $model/report/summary.md)"

#!/usr/bin/env bash
# `scripts/demo.sh --quick`: the system's point in minutes on 2 cores, from a
# fresh Debian 12 machine (set-up and build included). A compact model
# trained for a few minutes on the Brown corpus, an index and a kNN-LM
# datastore over Brown's press section (88 documents), the gRPC server,
# neighbours over gRPC, validation perplexity of the LM next to the
# kNN-LM's, and WordNet facts added to the live index then asked as
# knowledge probes: what retrieval adds to a model that never saw them.
# scripts/demo.sh (no flag) is the full hour: every mode, RETRO included.
#
# Environment: RAG_DATA_DIR (default <repo>/data), RAG_DEMO_STEPS (300).
set -euo pipefail
# shellcheck source=scripts/demo_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/demo_common.sh"
start=$SECONDS
model="$data/models/brown-quick"
press="$data/brown/brown-press.jsonl"
index="$data/indexes/brown-quick-press"
steps="${RAG_DEMO_STEPS:-300}"

demo_setup
echo "set-up and build: $((SECONDS - start)) s"

section "1. Train the small model for $steps steps on the Brown corpus"
if [ -f "$model/model_info.json" ]; then
  echo "already trained: $model (delete it to train again)"
elif [ -f "$model/checkpoint.pt" ]; then
  "$rag" train --corpus "$corpus" --out "$model" --preset small --steps "$steps" --resume
else
  "$rag" train --corpus "$corpus" --out "$model" --preset small --steps "$steps"
fi

section "2. Index + kNN-LM datastore over Brown's press section ($index)"
# The press documents (reportage, editorial, reviews); the datastore keeps
# one key per token of those the model trained on, so the validation
# documents scored in step 4 are not in it.
grep '"genre": "press' "$corpus" >"$press"
echo "$(wc -l <"$press") press documents"
if [ -f "$index/manifest.json" ] && [ -f "$index/datastore/keys.faiss" ]; then
  echo "already built: $index (delete it to build again)"
else
  "$rag" build --corpus "$press" --model "$model" --out "$index" --overwrite --datastore --datastore-split train
fi

section "3. The gRPC server (127.0.0.1, a free port): neighbours and next tokens"
demo_serve "$model" "$index"
"$rag" stats --server "$server"
for q in "The jury said the election was conducted" "The President sent a message to Congress about the budget"; do
  printf -- '\n--- neighbours of "%s" (over gRPC):\n' "$q"
  "$rag" query --server "$server" --text "$q" -k 3
done
printf -- '\n--- next tokens after "The jury said" (over gRPC):\n'
"$rag" next-token --server "$server" --text "The jury said" --top-n 5

section "4. Validation perplexity of the press documents the model never saw: LM vs kNN-LM vs ∞-gram"
"$rag" eval perplexity --server "$server" --corpus "$press" --split validation --mode knnlm \
  --sweep "lambda=0.25;temperature=1" --baseline none --output "$model/eval_knnlm_press.json"
# The suffix array counts every press document: each scored document's own
# occurrences are left out (the datastore holds the training documents only).
echo
"$rag" eval perplexity --server "$server" --corpus "$press" --split validation --mode infgram --exclude-own-doc \
  --baseline none --quiet --output "$model/eval_infgram_press.json"

section "5. Knowledge probes: WordNet facts added to the live index, never to the LM's training data"
probes_dir="$data/probes/wordnet-quick"
/usr/bin/python3 "$here/scripts/wordnet_probes.py" --out "$probes_dir" --capitals 20 --per-occupation 2
"$rag" add --server "$server" --corpus "$probes_dir/facts.jsonl" --skip-existing --quiet
for mode in lm knnlm infgram; do
  echo
  "$rag" eval probes --server "$server" --probes "$probes_dir/probes.jsonl" --mode "$mode" --quiet \
    --output "$model/probes_quick_$mode.json"
done
demo_stop_server
echo
echo "quick demo: $((SECONDS - start)) s in all (JSON in $model/). scripts/demo.sh runs the full hour."

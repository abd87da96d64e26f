# shellcheck shell=bash
# The demo's RETRO copy-training recipe, owned here and sourced by
# scripts/demo.sh (step 10), scripts/study_retro_probes.sh and
# scripts/tune_retro_recipe.sh, so the study measures the retrofit the demo
# trains. Besides the ordinary windows, 24 prompt windows per step, a
# fraction of them (OWN_DOCUMENT) retrieving their own document; PROBE_FACTS
# are excluded from training (they reach RETRO only through the index).
# The default steps and own-document fraction are the ones chosen on the
# probes' dev half by scripts/tune_retro_recipe.sh (docs/results.md, "Issue
# 26, third part").
#   retro_copy_recipe INDEX MODEL PROBE_FACTS [STEPS [OWN_DOCUMENT]]  -> sets RETRO_COPY_RECIPE
RETRO_RECIPE_STEPS=420
RETRO_RECIPE_OWN_DOCUMENT=0.95
retro_copy_recipe() {
  # shellcheck disable=SC2034  # read by the sourcing script
  RETRO_COPY_RECIPE=(train --arch retro --index "$1" --init "$2" --steps "${4:-$RETRO_RECIPE_STEPS}" --lr 3e-3
                     --batch-size 4 --prompt-windows 24 --exclude-documents "$3"
                     --prompt-own-document "${5:-$RETRO_RECIPE_OWN_DOCUMENT}")
}

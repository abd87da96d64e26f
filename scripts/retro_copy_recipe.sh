# shellcheck shell=bash
# The demo's RETRO copy-training recipe, owned here and sourced by
# scripts/demo.sh (step 10) and scripts/study_retro_probes.sh, so the study
# measures the retrofit the demo trains. Besides the ordinary windows, 24
# prompt windows per step, 19 in 20 of them retrieving their own document;
# PROBE_FACTS are excluded from training (they reach RETRO only through the
# index). Chosen in docs/results.md runs 1 to 12.
#   retro_copy_recipe INDEX MODEL PROBE_FACTS STEPS  -> sets RETRO_COPY_RECIPE
retro_copy_recipe() {
  # shellcheck disable=SC2034  # read by the sourcing script
  RETRO_COPY_RECIPE=(train --arch retro --index "$1" --init "$2" --steps "$4" --lr 3e-3 --batch-size 4
                     --prompt-windows 24 --exclude-documents "$3" --prompt-own-document 0.95)
}

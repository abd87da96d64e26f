// `rag eval memorization` (verbatim memorization by prefix length and
// repetition, Carlini et al. 2023) and `rag eval extraction` (training-data
// extraction, Carlini et al. 2021) against a TARGET. Both count exact corpus
// occurrences; the evaluations are eval::EvaluateMemorization and
// eval::EvaluateExtraction, this file owns the flags, the generation
// callbacks and the output.
#pragma once

#include "services/cli/common.h"

namespace rag::cli {

// Register `memorization` and `extraction` under `eval`.
Command AddEvalMemorizationCommand(CLI::App* eval);
Command AddEvalExtractionCommand(CLI::App* eval);

}  // namespace rag::cli

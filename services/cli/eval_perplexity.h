// `rag eval perplexity`: perplexity of a corpus (or the model's train or
// validation split of it) under a TARGET, against the unigram baseline, with
// an optional kNN-LM lambda/temperature sweep. The loop is
// eval::EvaluatePerplexity; this file owns the flags and the output.
#pragma once

#include "services/cli/common.h"

namespace rag::cli {

// Registers `perplexity` under `eval`.
Command AddEvalPerplexityCommand(CLI::App* eval);

}  // namespace rag::cli

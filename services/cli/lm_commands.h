// The language-model commands of a TARGET: `rag score` (log-likelihood and
// perplexity of a text), `rag generate` (continue a prompt) and
// `rag next-token` (the most likely next tokens), in lm, knnlm, retro, infgram or ralm mode.
#pragma once

#include "services/cli/common.h"

namespace rag::cli {

Command AddScoreCommand(CLI::App* app);
Command AddGenerateCommand(CLI::App* app);
Command AddNextTokenCommand(CLI::App* app);

}  // namespace rag::cli

// `rag train`: a language model (and its tokenizer), or a RETRO model
// retrofitted on an index (--arch retro).
#pragma once

#include "services/cli/common.h"

namespace rag::cli {

Command AddTrainCommand(CLI::App* app);

}  // namespace rag::cli

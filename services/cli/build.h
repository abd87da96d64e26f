// `rag build`: a retrieval index over a corpus (chunk store, FAISS index,
// token counts), and optionally the kNN-LM datastore.
#pragma once

#include "services/cli/common.h"

namespace rag::cli {

Command AddBuildCommand(CLI::App* app);

}  // namespace rag::cli

// `rag count`: exact occurrences of a text's tokens in an index's documents
// (the index's suffix array, retriever::TokenCounts), and which documents.
#pragma once

#include "services/cli/common.h"

namespace rag::cli {

Command AddCountCommand(CLI::App* app);

}  // namespace rag::cli

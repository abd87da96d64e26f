// `rag validate`: prints retriever::ValidateIndex's findings on an index
// directory (checksums, counts, recall@10 against exact search); exit code 1
// when a check fails.
#pragma once

#include "services/cli/common.h"

namespace rag::cli {

Command AddValidateCommand(CLI::App* app);

}  // namespace rag::cli

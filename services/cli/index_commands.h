// The index commands of a TARGET: `rag query` (nearest chunks of a text),
// `rag stats` (counts and provenance of the served index) and `rag add`
// (documents added to a live index).
#pragma once

#include "services/cli/common.h"

namespace rag::cli {

Command AddQueryCommand(CLI::App* app);
Command AddAddCommand(CLI::App* app);
Command AddStatsCommand(CLI::App* app);

}  // namespace rag::cli

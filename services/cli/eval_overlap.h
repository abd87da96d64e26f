// `rag eval retro-overlap`: RETRO's analysis by overlap (eval/overlap.h):
// every document scored with retrieval on, off and random; chunks bucketed
// by how much of them their "on" neighbours hold; perplexity per bucket and
// arm, in a table, JSON and the --report (table and plot).
#pragma once

#include "services/cli/common.h"

namespace rag::cli {

// Registers `retro-overlap` under `eval`.
Command AddEvalOverlapCommand(CLI::App* eval);

}  // namespace rag::cli

// `rag merge --out IDX S_0 ... S_{N-1}`: one index from N shards built on
// one trained index (index_builder::MergeShards), for those who build wide
// and serve on one box.
#pragma once

#include "services/cli/common.h"

namespace rag::cli {

Command AddMergeCommand(CLI::App* app);

}  // namespace rag::cli

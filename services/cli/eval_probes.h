// `rag eval probes`: knowledge probes (LAMA JSONL) against a TARGET, P@1,
// P@10 and MRR by relation. The ranking is eval::EvaluateProbes; this file
// owns the flags, the score callback and the output.
#pragma once

#include "services/cli/common.h"

namespace rag::cli {

// Registers `probes` under `eval`.
Command AddEvalProbesCommand(CLI::App* eval);

}  // namespace rag::cli

// `rag serve`: a model (and index) over gRPC until SIGINT or SIGTERM.
#pragma once

#include "services/cli/common.h"

namespace rag::cli {

Command AddServeCommand(CLI::App* app);

}  // namespace rag::cli

// `rag info`: what a TARGET serves: the model's identity (format,
// architecture, parameters, stored dtype, content and tokenizer hashes,
// vocabulary, context) and the modes it can run.
#pragma once

#include <nlohmann/json.hpp>

#include "proto/rag.pb.h"
#include "services/cli/common.h"

namespace rag::cli {

// The identity as the JSON every command's output shows under "model".
nlohmann::json ModelJson(const rag::v1::ModelIdentity& m);

Command AddInfoCommand(CLI::App* app);

}  // namespace rag::cli

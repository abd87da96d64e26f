// The files every model directory (lm::LanguageModel, lm::RetroModel) has
// and the rules for writing and opening them: model.pt written atomically,
// config.json, tokenizer.json, the content hash, and model_info.json written
// last and read first, so a half-written directory never opens. Stateless
// functions; not safe against concurrent writers of one directory.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/file_util.h"
#include "common/status.h"
#include "lm/language_model.h"
#include "lm/tokenizer.h"

namespace rag::lm::internal {

// Starts writing `dir`: parses `info_json` (InvalidArgument unless a JSON
// object), creates the directory and removes model_info.json, so a stale one
// never vouches for files while they are replaced. Returns the parsed info.
absl::StatusOr<nlohmann::json> BeginModelDir(const std::string& dir, const std::string& info_json);

// Writes model.pt (to a temporary file, then renamed), config.json
// (`config_json`) and tokenizer.json, in that order, each atomically.
absl::Status WriteModelFiles(const std::string& dir, const std::shared_ptr<torch::nn::Module>& module,
                             const std::string& config_json, const Tokenizer& tokenizer);

// Adds content_hash, tokenizer_hash, parameters, format_version (2) and a
// self_checksum over the rest to `info`, and writes it as model_info.json:
// the last file, that makes `dir` open.
absl::Status FinishModelDir(const std::string& dir, nlohmann::json info, const std::string& content_hash,
                            const Tokenizer& tokenizer, int64_t parameters);

// The content hash model_info.json records. NotFound when `dir` or
// model_info.json is missing (the message names `kind`, e.g. "RETRO model",
// and the `train_command` that resumes an interrupted run); DataLoss when
// model_info.json holds no content hash.
absl::StatusOr<std::string> ReadRecordedContentHash(const std::string& dir, const std::string& kind,
                                                    const std::string& train_command);

// DataLoss unless `computed` equals the `recorded` content hash of `dir`.
absl::Status CheckContentHash(const std::string& dir, const std::string& computed, const std::string& recorded);

// Config::FromJson of dir/config.json, errors annotated with the path.
template <typename Config>
absl::StatusOr<Config> ReadModelConfig(const std::string& dir) {
  const std::string path = (std::filesystem::path(dir) / kConfigFile).string();
  RAG_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  auto config = Config::FromJson(text);
  if (!config.ok()) return Annotate(config.status(), "reading " + path);
  return config;
}

// Tokenizer::Load of dir/tokenizer.json, errors annotated.
absl::StatusOr<Tokenizer> ReadModelTokenizer(const std::string& dir);

// Loads dir/model.pt into `module` and sets it to eval mode. DataLoss when
// the file is unreadable or does not fit the module.
absl::Status LoadModelWeights(const std::string& dir, const std::shared_ptr<torch::nn::Module>& module);

}  // namespace rag::lm::internal

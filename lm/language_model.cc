#include "lm/language_model.h"

#include <unistd.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "common/file_util.h"
#include "common/status.h"

namespace rag::lm {
namespace fs = std::filesystem;
using nlohmann::json;

LanguageModel::LanguageModel(TransformerConfig config, Tokenizer tokenizer, TransformerLM module)
    : config_(std::move(config)), tokenizer_(std::move(tokenizer)), module_(std::move(module)) {}

absl::StatusOr<std::string> ComputeContentHash(const std::string& dir) {
  RAG_ASSIGN_OR_RETURN(std::string config_text, ReadFile((fs::path(dir) / kConfigFile).string()));
  RAG_ASSIGN_OR_RETURN(std::string tokenizer_hash, HashFileHex((fs::path(dir) / kTokenizerFile).string()));
  RAG_ASSIGN_OR_RETURN(std::string weights_hash, HashFileHex((fs::path(dir) / kWeightsFile).string()));
  return HashHex(config_text + "\n" + tokenizer_hash + "\n" + weights_hash);
}

absl::Status LanguageModel::Save(const std::string& dir, const std::string& info_json) {
  json info = json::parse(info_json, nullptr, false);
  if (info.is_discarded() || !info.is_object()) return absl::InvalidArgumentError("model info must be a JSON object");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError("creating model directory '" + dir + "': " + ec.message());

  // A stale model_info.json must not vouch for new weights while they are written.
  fs::remove(fs::path(dir) / kInfoFile, ec);
  const std::string weights = (fs::path(dir) / kWeightsFile).string();
  const std::string tmp = weights + ".tmp." + std::to_string(::getpid());
  try {
    torch::save(module_, tmp);
  } catch (const c10::Error& e) {
    return absl::InternalError("saving weights to '" + tmp + "': " + e.what_without_backtrace());
  }
  RAG_RETURN_IF_ERROR(DurableRename(tmp, weights));
  RAG_RETURN_IF_ERROR(WriteFileAtomic((fs::path(dir) / kConfigFile).string(), config_.ToJson()));
  RAG_RETURN_IF_ERROR(tokenizer_.Save((fs::path(dir) / kTokenizerFile).string()));
  RAG_ASSIGN_OR_RETURN(content_hash_, ComputeContentHash(dir));
  info["content_hash"] = content_hash_;
  info["tokenizer_hash"] = tokenizer_.Hash();
  info["parameters"] = module_->NumParameters();
  info["format_version"] = 1;
  return WriteFileAtomic((fs::path(dir) / kInfoFile).string(), info.dump(2) + "\n");
}

absl::StatusOr<std::unique_ptr<LanguageModel>> LanguageModel::Open(const std::string& dir) {
  if (!fs::is_directory(dir)) return absl::NotFoundError("model directory '" + dir + "' does not exist");
  const fs::path info_path = fs::path(dir) / kInfoFile;
  if (!fs::exists(info_path)) {
    return absl::NotFoundError("'" + dir + "' holds no finished model (" + kInfoFile +
                               " is missing; was training interrupted? rerun `rag train` with --resume)");
  }
  RAG_ASSIGN_OR_RETURN(std::string info_text, ReadFile(info_path.string()));
  json info = json::parse(info_text, nullptr, false);
  if (info.is_discarded() || !info.is_object() || !info.contains("content_hash") ||
      !info["content_hash"].is_string()) {
    return absl::DataLossError("'" + info_path.string() + "' is corrupt (no content_hash)");
  }
  RAG_ASSIGN_OR_RETURN(std::string hash, ComputeContentHash(dir));
  if (hash != info["content_hash"].get<std::string>()) {
    return absl::DataLossError("model directory '" + dir + "' does not match its content hash (a file is corrupt or was modified after training)");
  }
  RAG_ASSIGN_OR_RETURN(std::string config_text, ReadFile((fs::path(dir) / kConfigFile).string()));
  auto config = TransformerConfig::FromJson(config_text);
  if (!config.ok()) return Annotate(config.status(), "reading " + (fs::path(dir) / kConfigFile).string());
  auto tokenizer = Tokenizer::Load((fs::path(dir) / kTokenizerFile).string());
  if (!tokenizer.ok()) return Annotate(tokenizer.status(), "reading tokenizer");
  if (tokenizer->vocab_size() > config->vocab_size) {
    return absl::DataLossError("tokenizer has " + std::to_string(tokenizer->vocab_size()) +
                               " tokens but the model only " + std::to_string(config->vocab_size));
  }
  TransformerLM module(*config);
  try {
    torch::load(module, (fs::path(dir) / kWeightsFile).string());
  } catch (const c10::Error& e) {
    return absl::DataLossError("loading weights from '" + (fs::path(dir) / kWeightsFile).string() +
                               "': " + e.what_without_backtrace());
  }
  module->eval();
  auto model = std::make_unique<LanguageModel>(std::move(*config), std::move(*tokenizer), std::move(module));
  model->content_hash_ = hash;
  return model;
}

}  // namespace rag::lm

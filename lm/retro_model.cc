#include "lm/retro_model.h"

#include <unistd.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "common/file_util.h"
#include "common/status.h"

namespace rag::lm {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// The RETRO directory's own files plus its base LM's hash: changing either
// changes the model.
absl::StatusOr<std::string> RetroContentHash(const std::string& dir, const std::string& base_hash) {
  RAG_ASSIGN_OR_RETURN(std::string own, ComputeContentHash(dir));
  return HashHex("retro\n" + own + "\n" + base_hash);
}

}  // namespace

bool IsRetroModelDir(const std::string& dir) {
  auto text = ReadFile((fs::path(dir) / kConfigFile).string());
  if (!text.ok()) return false;
  json j = json::parse(*text, nullptr, false);
  return j.is_object() && j.contains("arch") && j["arch"] == "retro_lm";
}

RetroModel::RetroModel(RetroConfig config, RetroLM module, std::unique_ptr<LanguageModel> base)
    : config_(std::move(config)), module_(std::move(module)), base_(std::move(base)) {}

absl::Status RetroModel::Save(const std::string& dir, const std::string& base_dir, const std::string& info_json) {
  json info = json::parse(info_json, nullptr, false);
  if (info.is_discarded() || !info.is_object()) return absl::InvalidArgumentError("model info must be a JSON object");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError("creating model directory '" + dir + "': " + ec.message());
  // A stale model_info.json must not vouch for new weights while they are written.
  fs::remove(fs::path(dir) / kInfoFile, ec);

  // base/: a verified copy of the base LM (each file atomically).
  const fs::path base = fs::path(dir) / kRetroBaseDir;
  if (fs::weakly_canonical(base_dir, ec) != fs::weakly_canonical(base, ec)) {
    fs::create_directories(base, ec);
    if (ec) return absl::InternalError("creating '" + base.string() + "': " + ec.message());
    fs::remove(base / kInfoFile, ec);
    for (const char* f : {kConfigFile, kTokenizerFile, kWeightsFile, kInfoFile}) {
      RAG_ASSIGN_OR_RETURN(std::string bytes, ReadFile((fs::path(base_dir) / f).string()));
      RAG_RETURN_IF_ERROR(WriteFileAtomic((base / f).string(), bytes));
    }
  }
  RAG_ASSIGN_OR_RETURN(std::string base_hash, ComputeContentHash(base.string()));
  if (!base_->content_hash().empty() && base_hash != base_->content_hash()) {
    return absl::FailedPreconditionError("'" + base_dir + "' is not the base LM this RETRO model was built on");
  }
  if (auto split = ReadFile((fs::path(base_dir) / kSplitFile).string()); split.ok()) {
    RAG_RETURN_IF_ERROR(WriteFileAtomic((fs::path(dir) / kSplitFile).string(), *split));
  }

  const std::string weights = (fs::path(dir) / kWeightsFile).string();
  const std::string tmp = weights + ".tmp." + std::to_string(::getpid());
  try {
    torch::save(module_, tmp);
  } catch (const c10::Error& e) {
    return absl::InternalError("saving weights to '" + tmp + "': " + e.what_without_backtrace());
  }
  RAG_RETURN_IF_ERROR(DurableRename(tmp, weights));
  RAG_RETURN_IF_ERROR(WriteFileAtomic((fs::path(dir) / kConfigFile).string(), config_.ToJson()));
  RAG_RETURN_IF_ERROR(base_->tokenizer().Save((fs::path(dir) / kTokenizerFile).string()));
  RAG_ASSIGN_OR_RETURN(content_hash_, RetroContentHash(dir, base_hash));
  info["arch"] = "retro";
  info["content_hash"] = content_hash_;
  info["base_hash"] = base_hash;
  info["tokenizer_hash"] = base_->tokenizer().Hash();
  info["parameters"] = module_->NumParameters();
  info["format_version"] = 1;
  return WriteFileAtomic((fs::path(dir) / kInfoFile).string(), info.dump(2) + "\n");
}

absl::StatusOr<std::unique_ptr<RetroModel>> RetroModel::Open(const std::string& dir) {
  if (!fs::is_directory(dir)) return absl::NotFoundError("model directory '" + dir + "' does not exist");
  const fs::path info_path = fs::path(dir) / kInfoFile;
  if (!fs::exists(info_path)) {
    return absl::NotFoundError("'" + dir + "' holds no finished RETRO model (" + kInfoFile +
                               " is missing; was training interrupted? rerun `rag train --arch retro` with --resume)");
  }
  RAG_ASSIGN_OR_RETURN(std::string info_text, ReadFile(info_path.string()));
  json info = json::parse(info_text, nullptr, false);
  if (info.is_discarded() || !info.is_object() || !info.contains("content_hash") ||
      !info["content_hash"].is_string()) {
    return absl::DataLossError("'" + info_path.string() + "' is corrupt (no content_hash)");
  }
  auto base = LanguageModel::Open((fs::path(dir) / kRetroBaseDir).string());
  if (!base.ok()) return Annotate(base.status(), "opening the base LM of RETRO model '" + dir + "'");
  RAG_ASSIGN_OR_RETURN(std::string hash, RetroContentHash(dir, (*base)->content_hash()));
  if (hash != info["content_hash"].get<std::string>()) {
    return absl::DataLossError("model directory '" + dir +
                               "' does not match its content hash (a file is corrupt or was modified after training)");
  }
  RAG_ASSIGN_OR_RETURN(std::string config_text, ReadFile((fs::path(dir) / kConfigFile).string()));
  auto config = RetroConfig::FromJson(config_text);
  if (!config.ok()) return Annotate(config.status(), "reading " + (fs::path(dir) / kConfigFile).string());
  auto tokenizer = Tokenizer::Load((fs::path(dir) / kTokenizerFile).string());
  if (!tokenizer.ok()) return Annotate(tokenizer.status(), "reading tokenizer");
  if (tokenizer->Hash() != (*base)->tokenizer().Hash()) {
    return absl::FailedPreconditionError("RETRO model '" + dir + "' and its base LM have different tokenizers");
  }
  if (config->decoder.vocab_size < tokenizer->vocab_size()) {
    return absl::DataLossError("tokenizer has " + std::to_string(tokenizer->vocab_size()) +
                               " tokens but the model only " + std::to_string(config->decoder.vocab_size));
  }
  RetroLM module(*config);
  try {
    torch::load(module, (fs::path(dir) / kWeightsFile).string());
  } catch (const c10::Error& e) {
    return absl::DataLossError("loading weights from '" + (fs::path(dir) / kWeightsFile).string() +
                               "': " + e.what_without_backtrace());
  }
  module->eval();
  auto model = std::make_unique<RetroModel>(std::move(*config), std::move(module), std::move(*base));
  model->content_hash_ = hash;
  return model;
}

}  // namespace rag::lm

#include "lm/retro_model.h"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "common/file_util.h"
#include "common/status.h"
#include "lm/internal/model_dir.h"

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
  RAG_ASSIGN_OR_RETURN(json info, internal::BeginModelDir(dir, info_json));

  // base/: a verified copy of the base LM (each file atomically).
  std::error_code ec;
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

  RAG_RETURN_IF_ERROR(internal::WriteModelFiles(dir, module_.ptr(), config_.ToJson(), base_->tokenizer()));
  RAG_ASSIGN_OR_RETURN(content_hash_, RetroContentHash(dir, base_hash));
  info["arch"] = "retro";
  info["base_hash"] = base_hash;
  return internal::FinishModelDir(dir, std::move(info), content_hash_, base_->tokenizer(), module_->NumParameters());
}

absl::StatusOr<std::unique_ptr<RetroModel>> RetroModel::Open(const std::string& dir) {
  RAG_ASSIGN_OR_RETURN(std::string recorded,
                       internal::ReadRecordedContentHash(dir, "RETRO model", "rag train --arch retro"));
  auto base = LanguageModel::Open((fs::path(dir) / kRetroBaseDir).string());
  if (!base.ok()) return Annotate(base.status(), "opening the base LM of RETRO model '" + dir + "'");
  if ((*base)->module()->scripted()) {
    return absl::FailedPreconditionError("the base LM of RETRO model '" + dir + "' is a " +
                                         (*base)->identity().format + " model, which RETRO does not support");
  }
  RAG_ASSIGN_OR_RETURN(std::string hash, RetroContentHash(dir, (*base)->content_hash()));
  RAG_RETURN_IF_ERROR(internal::CheckContentHash(dir, hash, recorded));
  RAG_ASSIGN_OR_RETURN(RetroConfig config, internal::ReadModelConfig<RetroConfig>(dir));
  RAG_ASSIGN_OR_RETURN(Tokenizer tokenizer, internal::ReadModelTokenizer(dir));
  if (tokenizer.Hash() != (*base)->tokenizer().Hash()) {
    return absl::FailedPreconditionError("RETRO model '" + dir + "' and its base LM have different tokenizers");
  }
  if (config.decoder.vocab_size < tokenizer.vocab_size()) {
    return absl::DataLossError("tokenizer has " + std::to_string(tokenizer.vocab_size()) +
                               " tokens but the model only " + std::to_string(config.decoder.vocab_size));
  }
  RetroLM module(config);
  RAG_RETURN_IF_ERROR(internal::LoadModelWeights(dir, module.ptr()));
  auto model = std::make_unique<RetroModel>(std::move(config), std::move(module), std::move(*base));
  model->content_hash_ = hash;
  return model;
}

}  // namespace rag::lm

#include "lm/language_model.h"

#include <nlohmann/json.hpp>

#include "common/status.h"
#include "lm/hf/pretrained.h"
#include "lm/internal/model_dir.h"
#include "lm/torchscript_lm.h"

namespace rag::lm {

LanguageModel::LanguageModel(TransformerConfig config, Tokenizer tokenizer, TransformerLM module)
    : config_(std::move(config)), tokenizer_(std::move(tokenizer)), module_(std::move(module)) {}

absl::Status LanguageModel::Save(const std::string& dir, const std::string& info_json) {
  // Checked before anything is written, so a refused save leaves `dir` as it was.
  if (identity_.format != "rag") {
    return absl::FailedPreconditionError("a " + identity_.format + " model is not saved as a rag model directory");
  }
  RAG_ASSIGN_OR_RETURN(nlohmann::json info, internal::BeginModelDir(dir, info_json));
  RAG_RETURN_IF_ERROR(internal::WriteModelFiles(dir, module_.ptr(), config_.ToJson(), tokenizer_));
  RAG_ASSIGN_OR_RETURN(identity_.content_hash, ComputeContentHash(dir));
  return internal::FinishModelDir(dir, std::move(info), identity_.content_hash, tokenizer_, module_->NumParameters());
}

absl::StatusOr<std::unique_ptr<LanguageModel>> LanguageModel::Open(const std::string& dir) {
  // Before the Hugging Face check: a TorchScript dir's config.json also has a model_type.
  if (IsTorchScriptModelDir(dir)) return OpenTorchScriptModel(dir);
  if (hf::IsHfModelDir(dir)) return hf::OpenHfModel(dir);
  RAG_ASSIGN_OR_RETURN(std::string recorded, internal::ReadRecordedContentHash(dir, "model", "rag train"));
  RAG_ASSIGN_OR_RETURN(std::string hash, ComputeContentHash(dir));
  RAG_RETURN_IF_ERROR(internal::CheckContentHash(dir, hash, recorded));
  RAG_ASSIGN_OR_RETURN(TransformerConfig config, internal::ReadModelConfig<TransformerConfig>(dir));
  RAG_ASSIGN_OR_RETURN(Tokenizer tokenizer, internal::ReadModelTokenizer(dir));
  if (tokenizer.vocab_size() > config.vocab_size) {
    return absl::DataLossError("tokenizer has " + std::to_string(tokenizer.vocab_size()) +
                               " tokens but the model only " + std::to_string(config.vocab_size));
  }
  TransformerLM module(config);
  RAG_RETURN_IF_ERROR(internal::LoadModelWeights(dir, module.ptr()));
  auto model = std::make_unique<LanguageModel>(std::move(config), std::move(tokenizer), std::move(module));
  model->identity_.content_hash = hash;
  return model;
}

}  // namespace rag::lm

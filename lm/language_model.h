// A trained language model as it lives on disk: the model directory with
// config.json, tokenizer.json, model.pt and model_info.json (written last;
// holds the content hash that indexes and datastores record). Once opened,
// inference methods are safe to call from many threads.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "lm/model_config.h"
#include "lm/tokenizer.h"
#include "lm/transformer_lm.h"

namespace rag::lm {

// File names inside a model directory.
inline constexpr char kConfigFile[] = "config.json";
inline constexpr char kTokenizerFile[] = "tokenizer.json";
inline constexpr char kWeightsFile[] = "model.pt";
inline constexpr char kInfoFile[] = "model_info.json";
inline constexpr char kSplitFile[] = "split.json";
inline constexpr char kCheckpointFile[] = "checkpoint.pt";

// What a model is, as --json output, the Info rpc and index manifests show it.
struct ModelIdentity {
  std::string format = "rag";                   // "rag" (rag train), "huggingface" or "torchscript"
  std::string architecture = "transformer_lm";  // "transformer_lm", "gpt2", "gpt_neox"; any for torchscript
  std::string stored_dtype = "F32";             // the weights' dtype on disk
  std::string content_hash;                     // "" until saved or opened
};

class LanguageModel {
 public:
  LanguageModel(TransformerConfig config, Tokenizer tokenizer, TransformerLM module);

  // Loads a model directory and verifies its content hash. NotFound when the
  // directory or a file is missing (a training run that never finished has
  // no model_info.json), DataLoss when a file is corrupt or was modified.
  // A TorchScript export (model.torchscript.pt, or config.json with
  // model_type "torchscript") is read by OpenTorchScriptModel
  // (lm/torchscript_lm.h); another Hugging Face directory (config.json with
  // a model_type) by hf::OpenHfModel (lm/hf/pretrained.h).
  static absl::StatusOr<std::unique_ptr<LanguageModel>> Open(const std::string& dir);

  // Writes model.pt, config.json, tokenizer.json, then model_info.json with
  // `info_json` (a JSON object) merged in. Each file is replaced atomically
  // and model_info.json comes last, so a crash leaves no model that opens.
  absl::Status Save(const std::string& dir, const std::string& info_json = "{}");

  const TransformerConfig& config() const { return config_; }
  const Tokenizer& tokenizer() const { return tokenizer_; }
  TransformerLM& module() { return module_; }
  // XXH3 over config, tokenizer and weights; "" until saved or opened.
  const std::string& content_hash() const { return identity_.content_hash; }
  const ModelIdentity& identity() const { return identity_; }
  void SetIdentity(ModelIdentity identity) { identity_ = std::move(identity); }
  int64_t NumParameters() const { return module_->NumParameters(); }

 private:
  TransformerConfig config_;
  Tokenizer tokenizer_;
  TransformerLM module_;
  ModelIdentity identity_;
};

// Content hash of a model: derived from the exact bytes of its config,
// tokenizer and weights, so any change to any of them changes it.
absl::StatusOr<std::string> ComputeContentHash(const std::string& dir);

}  // namespace rag::lm

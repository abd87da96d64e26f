// A trained RETRO model as it lives on disk. The directory holds the
// RetroLM and, under base/, the plain LM whose embedder built the index
// RETRO retrieves from (its chunks are embedded with that model at query
// time, so it travels with the RETRO weights):
//
//   config.json       RetroConfig ("arch": "retro_lm")
//   tokenizer.json    the base LM's
//   model.pt          RetroLM weights
//   split.json        the base LM's document split (copied when it has one; a
//                     retrofit of a downloaded model writes the split it made)
//   base/             the base LM's model directory (config, tokenizer, model.pt, model_info.json),
//                     or for a Hugging Face base its config, tokenizer and safetensors files
//   model_info.json   written last: arch, content hash, base hash, training record
//
// Once opened, inference methods are safe to call from many threads.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "lm/language_model.h"
#include "lm/retro_lm.h"

namespace rag::lm {

inline constexpr char kRetroBaseDir[] = "base";

// True when `dir`'s config.json describes a RetroLM (arch "retro_lm").
bool IsRetroModelDir(const std::string& dir);

class RetroModel {
 public:
  RetroModel(RetroConfig config, RetroLM module, std::unique_ptr<LanguageModel> base);

  // Loads a RETRO model directory, verifying its content hash and its base
  // LM's. NotFound when a file is missing (an unfinished training run),
  // DataLoss when a file is corrupt, FailedPrecondition when the base LM's
  // tokenizer is not the RETRO model's.
  static absl::StatusOr<std::unique_ptr<RetroModel>> Open(const std::string& dir);

  // Writes model.pt, config.json, tokenizer.json, base/ (a copy of
  // `base_dir`, the base LM's directory, in its format: hf::HfModelFiles of
  // a Hugging Face one), split.json, then model_info.json
  // with `info_json` merged in; model_info.json comes last, so a crash
  // leaves no model that opens.
  absl::Status Save(const std::string& dir, const std::string& base_dir, const std::string& info_json = "{}");

  const RetroConfig& config() const { return config_; }
  const Tokenizer& tokenizer() const { return base_->tokenizer(); }
  RetroLM& module() { return module_; }
  LanguageModel& base() { return *base_; }
  const std::string& content_hash() const { return content_hash_; }

 private:
  RetroConfig config_;
  RetroLM module_;
  std::unique_ptr<LanguageModel> base_;
  std::string content_hash_;
};

}  // namespace rag::lm

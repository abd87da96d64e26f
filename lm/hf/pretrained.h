// Pretrained checkpoints in the Hugging Face layout, as downloaded from the
// hub: config.json (model_type "gpt2" or "gpt_neox"), model.safetensors or
// its shards, and the tokenizer (tokenizer.json, or vocab.json + merges.txt).
// They load into our own TransformerLM, which has every switch these two
// architectures need (lm/model_config.h), so scoring, generation, kNN-LM and
// RETRO code paths run on them unchanged.
//
// Weight mapping (HF name -> ours), per block N:
//   GPT-2   wte / wpe / ln_f -> token_embedding / position_embedding / ln_final
//           h.N.ln_1, ln_2 -> ln_attn, ln_mlp;  h.N.attn.c_attn, c_proj -> attn.qkv, proj;
//           h.N.mlp.c_fc, c_proj -> fc_in, fc_out. Conv1D stores [in, out]: transposed.
//           Output tied to wte.
//   NeoX    embed_in / final_layer_norm / embed_out -> token_embedding / ln_final / output
//           layers.N.input_layernorm, post_attention_layernorm -> ln_attn, ln_mlp
//           attention.query_key_value -> attn.qkv, its rows regrouped from
//           NeoX's per-head [H, 3, E] to our [3, H, E]; attention.dense -> proj;
//           mlp.dense_h_to_4h, dense_4h_to_h -> fc_in, fc_out.
// Stored fp16 / bf16 / fp64 weights are converted to fp32 once, straight
// from the mapped file into the parameter; the mapping is released after
// loading, so one copy of the weights stays in memory.
// Stateless functions; safe to call from many threads on different dirs.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "lm/language_model.h"
#include "lm/model_config.h"
#include "lm/transformer_lm.h"

namespace rag::lm::hf {

// True when dir/config.json exists and names a "model_type": a Hugging Face
// directory rather than one `rag train` wrote.
bool IsHfModelDir(const std::string& dir);

// The architectures this reader maps.
inline constexpr const char* kSupportedModelTypes[] = {"gpt2", "gpt_neox"};

// config.json -> our config. `model_type` receives "gpt2" or "gpt_neox".
// InvalidArgument naming the key for an unknown model_type, a missing or
// mistyped key, or a setting our module does not implement (e.g. GPT-2's
// scale_attn_by_inverse_layer_idx, rope scaling).
absl::StatusOr<TransformerConfig> ConfigFromHf(const std::string& config_json, std::string* model_type);

struct HfCheckpoint {
  std::string model_type;
  std::string stored_dtype;  // the weights' dtype in the files ("F32", "BF16", ...; "mixed" if several)
  TransformerConfig config;
  TransformerLM module{nullptr};  // in eval mode, fp32
  std::vector<std::string> weight_files;
  std::string config_json;  // config.json's bytes (what the content hash covers)
};

// Reads config.json and the safetensors weights of `dir` (no tokenizer).
// Errors name the file and tensor: a missing tensor or one whose shape
// disagrees with config.json, an unknown dtype, a tensor this architecture
// does not have (so a different model is never half-loaded), a truncated file.
absl::StatusOr<HfCheckpoint> LoadHfCheckpoint(const std::string& dir);

// The files of `dir` that OpenHfModel reads (config.json; tokenizer.json,
// else vocab.json + merges.txt; model.safetensors, else
// model.safetensors.index.json and its shards) plus those of transformers'
// small companions that are present (tokenizer_config.json,
// special_tokens_map.json, generation_config.json), as paths: what a copy
// of the model needs (lm::RetroModel keeps one under base/). NotFound when
// a needed file is missing; the errors of SafetensorsWeights::Open.
absl::StatusOr<std::vector<std::string>> HfModelFiles(const std::string& dir);

// The content hash OpenHfModel gives `dir`, without building the model:
// reads the tokenizer and hashes config.json and every weight file.
absl::StatusOr<std::string> HfContentHash(const std::string& dir);

// LoadHfCheckpoint plus the tokenizer (tokenizer.json, else vocab.json +
// merges.txt) and a content hash over config.json, the tokenizer and every
// weight file, as a LanguageModel.
absl::StatusOr<std::unique_ptr<LanguageModel>> OpenHfModel(const std::string& dir);

}  // namespace rag::lm::hf

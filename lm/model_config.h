// Configuration of the decoder-only transformer: presets (tiny/small/base),
// overrides from JSON, validation and (de)serialisation as config.json.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace rag::lm {

struct TransformerConfig {
  int64_t vocab_size = 4096;   // set from the tokenizer
  int64_t context = 256;       // maximum tokens the model attends over
  int64_t d_model = 256;
  int64_t n_layers = 4;
  int64_t n_heads = 4;
  int64_t d_ff = 1024;         // MLP hidden width
  double dropout = 0.0;        // on attention output, MLP output and embeddings
  std::string positions = "rotary";  // "rotary" or "learned"
  double rope_base = 10000.0;
  double layer_norm_eps = 1e-5;
  // The fields below describe pretrained architectures (GPT-2, GPT-NeoX);
  // our own presets keep the defaults, and ToJson writes a field only when
  // it differs from its default, so configs saved before they existed are
  // byte-identical (their content hashes stay valid).
  std::string activation = "gelu";  // "gelu" (erf, GPT-NeoX) or "gelu_tanh" (GPT-2's gelu_new)
  double rotary_fraction = 1.0;     // share of each head's dims rotated (NeoX rotary_pct)
  bool parallel_residual = false;   // x + Attn(LN1(x)) + MLP(LN2(x)) (GPT-NeoX)
  bool tie_embeddings = true;       // output layer = input embedding; false adds a separate one

  // Returns the named preset ("tiny", "small", "base") or InvalidArgument
  // listing the known names.
  static absl::StatusOr<TransformerConfig> Preset(const std::string& name);

  // Parses config.json; unknown keys are rejected so a typo is not silently ignored.
  static absl::StatusOr<TransformerConfig> FromJson(const std::string& json_text);
  // Applies the keys present in `json_text` on top of this config (for --config FILE).
  absl::Status ApplyOverrides(const std::string& json_text);
  std::string ToJson() const;

  // InvalidArgument naming the field when a value is out of range or
  // inconsistent (d_model not divisible by n_heads, odd head size with rotary...).
  absl::Status Validate() const;

  int64_t head_dim() const { return d_model / n_heads; }
  // Leading dims of each head that rotary positions rotate (even; GPT-NeoX
  // truncates head_dim * rotary_fraction the same way).
  int64_t rotary_dims() const { return static_cast<int64_t>(static_cast<double>(head_dim()) * rotary_fraction); }
};

}  // namespace rag::lm

#include "lm/model_config.h"

#include <nlohmann/json.hpp>

#include "common/status.h"

namespace rag::lm {
namespace {

using nlohmann::json;

absl::Status ApplyJson(const json& j, TransformerConfig& c) {
  if (!j.is_object()) return absl::InvalidArgumentError("model config: expected a JSON object");
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& key = it.key();
    const json& v = it.value();
    auto want_int = [&](int64_t& field) -> absl::Status {
      if (!v.is_number_integer()) return absl::InvalidArgumentError("model config: '" + key + "' must be an integer");
      field = v.get<int64_t>();
      return absl::OkStatus();
    };
    auto want_num = [&](double& field) -> absl::Status {
      if (!v.is_number()) return absl::InvalidArgumentError("model config: '" + key + "' must be a number");
      field = v.get<double>();
      return absl::OkStatus();
    };
    if (key == "vocab_size") { RAG_RETURN_IF_ERROR(want_int(c.vocab_size)); }
    else if (key == "context") { RAG_RETURN_IF_ERROR(want_int(c.context)); }
    else if (key == "d_model") { RAG_RETURN_IF_ERROR(want_int(c.d_model)); }
    else if (key == "n_layers") { RAG_RETURN_IF_ERROR(want_int(c.n_layers)); }
    else if (key == "n_heads") { RAG_RETURN_IF_ERROR(want_int(c.n_heads)); }
    else if (key == "d_ff") { RAG_RETURN_IF_ERROR(want_int(c.d_ff)); }
    else if (key == "dropout") { RAG_RETURN_IF_ERROR(want_num(c.dropout)); }
    else if (key == "rope_base") { RAG_RETURN_IF_ERROR(want_num(c.rope_base)); }
    else if (key == "layer_norm_eps") { RAG_RETURN_IF_ERROR(want_num(c.layer_norm_eps)); }
    else if (key == "rotary_fraction") { RAG_RETURN_IF_ERROR(want_num(c.rotary_fraction)); }
    else if (key == "parallel_residual" || key == "tie_embeddings") {
      if (!v.is_boolean()) return absl::InvalidArgumentError("model config: '" + key + "' must be true or false");
      (key == "parallel_residual" ? c.parallel_residual : c.tie_embeddings) = v.get<bool>();
    } else if (key == "activation") {
      if (!v.is_string()) return absl::InvalidArgumentError("model config: 'activation' must be a string");
      c.activation = v.get<std::string>();
    } else if (key == "positions") {
      if (!v.is_string()) return absl::InvalidArgumentError("model config: 'positions' must be a string");
      c.positions = v.get<std::string>();
    } else if (key == "arch" || key == "format_version") {
      // written by ToJson for readers; not a tunable
    } else {
      return absl::InvalidArgumentError("model config: unknown key '" + key + "'");
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<TransformerConfig> TransformerConfig::Preset(const std::string& name) {
  TransformerConfig c;
  if (name == "tiny") {
    // Trains in seconds on 2 cores: for tests and quick checks.
    c.context = 64; c.d_model = 64; c.n_layers = 2; c.n_heads = 4; c.d_ff = 256;
  } else if (name == "small") {
    // The demo's model: a few minutes of training on 2 cores.
    c.context = 256; c.d_model = 256; c.n_layers = 4; c.n_heads = 4; c.d_ff = 1024;
  } else if (name == "base") {
    // The largest that trains usefully on 2 cores in about an hour.
    c.context = 256; c.d_model = 384; c.n_layers = 6; c.n_heads = 6; c.d_ff = 1536;
  } else {
    return absl::InvalidArgumentError("unknown preset '" + name + "' (known: tiny, small, base)");
  }
  return c;
}

absl::StatusOr<TransformerConfig> TransformerConfig::FromJson(const std::string& json_text) {
  TransformerConfig c;
  RAG_RETURN_IF_ERROR(c.ApplyOverrides(json_text));
  return c;
}

absl::Status TransformerConfig::ApplyOverrides(const std::string& json_text) {
  json j = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError("model config: not valid JSON");
  TransformerConfig c = *this;
  RAG_RETURN_IF_ERROR(ApplyJson(j, c));
  RAG_RETURN_IF_ERROR(c.Validate());
  *this = c;
  return absl::OkStatus();
}

std::string TransformerConfig::ToJson() const {
  json j = {{"arch", "transformer_lm"}, {"format_version", 1},
            {"vocab_size", vocab_size}, {"context", context}, {"d_model", d_model},
            {"n_layers", n_layers},     {"n_heads", n_heads}, {"d_ff", d_ff},
            {"dropout", dropout},       {"positions", positions}, {"rope_base", rope_base},
            {"layer_norm_eps", layer_norm_eps}};
  const TransformerConfig defaults;
  if (activation != defaults.activation) j["activation"] = activation;
  if (rotary_fraction != defaults.rotary_fraction) j["rotary_fraction"] = rotary_fraction;
  if (parallel_residual != defaults.parallel_residual) j["parallel_residual"] = parallel_residual;
  if (tie_embeddings != defaults.tie_embeddings) j["tie_embeddings"] = tie_embeddings;
  return j.dump(2) + "\n";
}

absl::Status TransformerConfig::Validate() const {
  auto bad = [](const std::string& m) { return absl::InvalidArgumentError("model config: " + m); };
  if (vocab_size < 2 || vocab_size > (1 << 24)) return bad("vocab_size must be in [2, 2^24]");
  if (context < 2 || context > 65536) return bad("context must be in [2, 65536]");
  if (d_model < 1 || d_model > 16384) return bad("d_model must be in [1, 16384]");
  if (n_layers < 1 || n_layers > 256) return bad("n_layers must be in [1, 256]");
  if (n_heads < 1 || d_model % n_heads != 0) return bad("d_model must be divisible by n_heads");
  if (d_ff < 1) return bad("d_ff must be positive");
  if (dropout < 0 || dropout >= 1) return bad("dropout must be in [0, 1)");
  if (positions != "rotary" && positions != "learned") return bad("positions must be 'rotary' or 'learned'");
  if (rotary_fraction <= 0 || rotary_fraction > 1) return bad("rotary_fraction must be in (0, 1]");
  if (positions == "rotary" && (rotary_dims() < 2 || rotary_dims() % 2 != 0)) {
    return bad("rotary positions need an even number (>= 2) of rotated dims per head, got " +
               std::to_string(rotary_dims()));
  }
  if (activation != "gelu" && activation != "gelu_tanh") return bad("activation must be 'gelu' or 'gelu_tanh'");
  if (rope_base <= 1) return bad("rope_base must be > 1");
  if (layer_norm_eps <= 0) return bad("layer_norm_eps must be positive");
  return absl::OkStatus();
}

}  // namespace rag::lm

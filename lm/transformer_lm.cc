#include "lm/transformer_lm.h"

#include <cmath>
#include <limits>
#include <set>
#include <utility>

namespace rag::lm {

namespace F = torch::nn::functional;

torch::Tensor ApplyRotary(const torch::Tensor& x, const torch::Tensor& positions, double base) {
  const int64_t e = x.size(-1);
  const int64_t half = e / 2;
  // inv_freq: [E/2]; angles: [T, E/2]
  auto opts = torch::TensorOptions().dtype(torch::kFloat32).device(x.device());
  auto inv_freq = torch::pow(base, -torch::arange(0, half, opts) / static_cast<double>(half));
  auto angles = positions.to(opts).unsqueeze(1) * inv_freq.unsqueeze(0);
  auto cos = angles.cos().to(x.dtype());  // [T, E/2], broadcast over B, H
  auto sin = angles.sin().to(x.dtype());
  auto x1 = x.narrow(-1, 0, half);
  auto x2 = x.narrow(-1, half, half);
  return torch::cat({x1 * cos - x2 * sin, x2 * cos + x1 * sin}, -1);
}

torch::Tensor ApplyPartialRotary(const torch::Tensor& x, const torch::Tensor& positions, double base,
                                 int64_t rotary_dims) {
  const int64_t e = x.size(-1);
  if (rotary_dims >= e) return ApplyRotary(x, positions, base);
  return torch::cat({ApplyRotary(x.narrow(-1, 0, rotary_dims), positions, base),
                     x.narrow(-1, rotary_dims, e - rotary_dims)}, -1);
}

CausalSelfAttentionImpl::CausalSelfAttentionImpl(const TransformerConfig& config) : config_(config) {
  reset();
}

void CausalSelfAttentionImpl::reset() {
  qkv = register_module("qkv", torch::nn::Linear(config_.d_model, 3 * config_.d_model));
  proj = register_module("proj", torch::nn::Linear(config_.d_model, config_.d_model));
  dropout = register_module("dropout", torch::nn::Dropout(config_.dropout));
}

torch::Tensor CausalSelfAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& positions,
                                               torch::Tensor* keys, torch::Tensor* values,
                                               const torch::Tensor& hidden_keys) {
  const int64_t b = x.size(0), t = x.size(1), d = x.size(2);
  const int64_t h = config_.n_heads, e = d / h;
  // [B, T, 3D] -> 3 x [B, H, T, E]
  auto parts = qkv->forward(x).view({b, t, 3, h, e}).permute({2, 0, 3, 1, 4}).unbind(0);
  torch::Tensor q = parts[0], k = parts[1], v = parts[2];
  if (config_.positions == "rotary") {
    q = ApplyPartialRotary(q, positions, config_.rope_base, config_.rotary_dims());
    k = ApplyPartialRotary(k, positions, config_.rope_base, config_.rotary_dims());
  }
  int64_t past = 0;
  if (keys != nullptr && keys->defined()) {
    past = keys->size(2);
    k = torch::cat({*keys, k}, 2);  // [B, H, P + T, E]
    v = torch::cat({*values, v}, 2);
  }
  if (keys != nullptr) {
    *keys = k;
    *values = v;
  }
  // scores: [B, H, T, P + T]
  auto scores = torch::matmul(q, k.transpose(-2, -1)) * (1.0 / std::sqrt(static_cast<double>(e)));
  if (t > 1) {
    // Query i sits at position past + i and may see keys 0 .. past + i.
    auto mask = torch::ones({t, past + t}, torch::TensorOptions().dtype(torch::kBool).device(x.device()))
                    .triu(past + 1);
    scores = scores.masked_fill(mask, -std::numeric_limits<float>::infinity());
  }
  if (hidden_keys.defined()) {
    TORCH_CHECK(hidden_keys.dim() == 2 && hidden_keys.size(0) == b && hidden_keys.size(1) == past + t,
                "hidden_keys: expected [B, P + T] = [", b, ", ", past + t, "], got ", hidden_keys.sizes());
    // Query i (position past + i) keeps its own key even when hidden, so every
    // row of the softmax has at least one finite score.
    auto opts = torch::TensorOptions().dtype(torch::kLong).device(x.device());
    auto own = torch::arange(past, past + t, opts).unsqueeze(1) == torch::arange(0, past + t, opts).unsqueeze(0);
    auto hide = hidden_keys.view({b, 1, 1, past + t}) & own.logical_not().view({1, 1, t, past + t});
    scores = scores.masked_fill(hide, -std::numeric_limits<float>::infinity());  // [B, H, T, P + T]
  }
  auto attn = torch::softmax(scores, -1);
  auto y = torch::matmul(attn, v);                 // [B, H, T, E]
  y = y.transpose(1, 2).reshape({b, t, d});        // [B, T, D]
  return dropout->forward(proj->forward(y));
}

BlockImpl::BlockImpl(const TransformerConfig& config) : config_(config) { reset(); }

void BlockImpl::reset() {
  auto ln_opts = torch::nn::LayerNormOptions({config_.d_model}).eps(config_.layer_norm_eps);
  ln_attn = register_module("ln_attn", torch::nn::LayerNorm(ln_opts));
  attn = register_module("attn", CausalSelfAttention(config_));
  ln_mlp = register_module("ln_mlp", torch::nn::LayerNorm(ln_opts));
  fc_in = register_module("fc_in", torch::nn::Linear(config_.d_model, config_.d_ff));
  fc_out = register_module("fc_out", torch::nn::Linear(config_.d_ff, config_.d_model));
  dropout = register_module("dropout", torch::nn::Dropout(config_.dropout));
}

torch::Tensor BlockImpl::forward(const torch::Tensor& x, const torch::Tensor& positions, torch::Tensor* keys,
                                 torch::Tensor* values, const torch::Tensor& hidden_keys) {
  auto a = attn->forward(ln_attn->forward(x), positions, keys, values, hidden_keys);  // [B, T, D]
  // Parallel (GPT-NeoX): x + Attn(LN1(x)) + MLP(LN2(x)), both reading x.
  if (config_.parallel_residual) return x + a + dropout->forward(Mlp(x));
  // Sequential pre-LayerNorm (GPT-2): h = x + Attn(LN1(x)), then h + MLP(LN2(h)).
  auto h = x + a;
  return h + dropout->forward(Mlp(h));
}

torch::Tensor BlockImpl::Mlp(const torch::Tensor& x) {
  auto u = fc_in->forward(ln_mlp->forward(x));  // [B, T, F]
  // GPT-2's gelu_new is the tanh approximation; GPT-NeoX and ours use erf.
  u = config_.activation == "gelu_tanh" ? F::gelu(u, F::GELUFuncOptions().approximate("tanh")) : F::gelu(u);
  return fc_out->forward(u);  // [B, T, D]
}

TransformerLMImpl::TransformerLMImpl(const TransformerConfig& config) : config_(config) {
  TORCH_CHECK(config_.Validate().ok(), "invalid TransformerConfig: ", config_.Validate().ToString());
  reset();
}

TransformerLMImpl::TransformerLMImpl(const TransformerConfig& config, std::shared_ptr<torch::jit::Module> script)
    : config_(config), script_(std::move(script)) {
  TORCH_CHECK(script_ != nullptr, "TransformerLM: null TorchScript module");
  TORCH_CHECK(config_.Validate().ok(), "invalid TransformerConfig: ", config_.Validate().ToString());
  // Tied weights may appear under several names; each storage counts once.
  std::set<std::pair<const void*, int64_t>> seen;
  for (const auto& p : script_->named_parameters(/*recurse=*/true)) {
    if (!seen.insert({p.value.data_ptr(), p.value.numel()}).second) continue;
    std::string name = "script/" + p.name;
    for (char& c : name) c = c == '.' ? '/' : c;
    register_parameter(name, p.value, p.value.requires_grad());
  }
}

void TransformerLMImpl::reset() {
  TORCH_CHECK(!script_, "TransformerLM: a TorchScript model has no layers to reset");
  token_embedding = register_module("token_embedding",
                                    torch::nn::Embedding(config_.vocab_size, config_.d_model));
  if (config_.positions == "learned") {
    position_embedding = register_module("position_embedding",
                                         torch::nn::Embedding(config_.context, config_.d_model));
  }
  if (!config_.tie_embeddings) {
    output = register_module("output",
                             torch::nn::Linear(torch::nn::LinearOptions(config_.d_model, config_.vocab_size).bias(false)));
  }
  blocks = register_module("blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < config_.n_layers; ++i) blocks->push_back(Block(config_));
  ln_final = register_module("ln_final", torch::nn::LayerNorm(
      torch::nn::LayerNormOptions({config_.d_model}).eps(config_.layer_norm_eps)));
  dropout = register_module("dropout", torch::nn::Dropout(config_.dropout));

  // GPT-2 initialisation: N(0, 0.02), residual output projections scaled by
  // 1/sqrt(2 * layers) so the residual stream's variance stays bounded.
  torch::NoGradGuard no_grad;
  const double std = 0.02;
  const double residual_std = std / std::sqrt(2.0 * static_cast<double>(config_.n_layers));
  for (auto& item : named_parameters()) {
    const std::string& name = item.key();
    torch::Tensor& p = item.value();
    if (name.find("ln_") != std::string::npos) {
      if (name.size() >= 6 && name.compare(name.size() - 6, 6, "weight") == 0) p.fill_(1.0);
      else p.zero_();
    } else if (name.size() >= 4 && name.compare(name.size() - 4, 4, "bias") == 0) {
      p.zero_();
    } else if (name.find("proj.weight") != std::string::npos || name.find("fc_out.weight") != std::string::npos) {
      p.normal_(0.0, residual_std);
    } else {
      p.normal_(0.0, std);
    }
  }
}

void TransformerLMImpl::train(bool on) {
  torch::nn::Module::train(on);
  if (script_) script_->train(on);
}

torch::Tensor TransformerLMImpl::ForwardHidden(const torch::Tensor& tokens, KVCache* cache) {
  TORCH_CHECK(tokens.dim() == 2, "tokens: expected [B, T], got ", tokens.sizes());
  const int64_t t = tokens.size(1);
  const int64_t past = cache != nullptr ? cache->length() : 0;
  TORCH_CHECK(past + t <= config_.context, "sequence of ", past + t, " tokens exceeds the model context of ",
              config_.context);
  if (script_) {
    TORCH_CHECK(cache == nullptr || cache->keys.empty(), "KVCache: holds keys of a non-scripted model");
    // [B, P + T]: the script always sees the sequence from position 0.
    torch::Tensor all = past > 0 ? torch::cat({cache->tokens, tokens}, 1) : tokens;
    c10::IValue out = script_->run_method("hidden", all);
    TORCH_CHECK(out.isTensor(), "TorchScript hidden(): expected a Tensor, got ", out.tagKind());
    torch::Tensor hidden = out.toTensor();  // [B, P + T, D]
    TORCH_CHECK(hidden.dim() == 3 && hidden.size(0) == all.size(0) && hidden.size(1) == all.size(1) &&
                    hidden.size(2) == config_.d_model,
                "TorchScript hidden(): expected [", all.size(0), ", ", all.size(1), ", ", config_.d_model, "], got ",
                hidden.sizes());
    if (cache != nullptr) cache->tokens = all;
    return past > 0 ? hidden.narrow(1, past, t) : hidden;  // [B, T, D]
  }
  auto positions = torch::arange(past, past + t, torch::TensorOptions().dtype(torch::kLong).device(tokens.device()));
  auto x = token_embedding->forward(tokens);  // [B, T, D]
  if (config_.positions == "learned") x = x + position_embedding->forward(positions).unsqueeze(0);
  x = dropout->forward(x);
  if (cache != nullptr && cache->keys.size() != blocks->size()) {
    cache->keys.assign(blocks->size(), torch::Tensor());
    cache->values.assign(blocks->size(), torch::Tensor());
  }
  for (size_t i = 0; i < blocks->size(); ++i) {
    x = blocks->at<BlockImpl>(i).forward(x, positions, cache ? &cache->keys[i] : nullptr,
                                         cache ? &cache->values[i] : nullptr);
  }
  return ln_final->forward(x);  // [B, T, D]
}

torch::Tensor TransformerLMImpl::Logits(const torch::Tensor& hidden) {
  // [B, T, D] -> [B, T, V]
  if (script_) {
    c10::IValue out = script_->run_method("logits", hidden);
    TORCH_CHECK(out.isTensor(), "TorchScript logits(): expected a Tensor, got ", out.tagKind());
    torch::Tensor logits = out.toTensor();
    TORCH_CHECK(logits.dim() == hidden.dim() && logits.size(-1) == config_.vocab_size &&
                    logits.sizes().slice(0, logits.dim() - 1).equals(hidden.sizes().slice(0, hidden.dim() - 1)),
                "TorchScript logits(): expected the input's leading dims and ", config_.vocab_size,
                " logits, input ", hidden.sizes(), ", got ", logits.sizes());
    return logits;
  }
  return F::linear(hidden, output ? output->weight : token_embedding->weight);
}

int64_t TransformerLMImpl::NumParameters() const {
  int64_t n = 0;
  for (const auto& p : parameters()) n += p.numel();
  return n;
}

}  // namespace rag::lm

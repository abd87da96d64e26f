// Decoder-only transformer LM (GPT-2 family): pre-LayerNorm blocks, causal
// self-attention, rotary (on all or a leading share of each head, GPT-NeoX
// style) or learned positions, sequential or parallel residual, output layer
// tied to the input embedding or separate. One module serves our own models
// and pretrained GPT-2 / GPT-NeoX checkpoints (lm/hf/pretrained.h maps their
// weights in). Forward passes may extend a KVCache for incremental decoding.
// A TransformerLM may instead wrap a TorchScript module (lm/torchscript_lm.h)
// that computes ForwardHidden and Logits for any other architecture.
// A module instance is not thread-safe for training; concurrent inference
// under torch::NoGradGuard with separate caches is safe.
//
// Tensor legend: B batch, T new tokens, P cached (past) tokens, H heads,
// E head size (D / H), D model width, F MLP width, V vocabulary.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <vector>

#include "lm/model_config.h"

namespace rag::lm {

// Keys and values of every layer for the tokens seen so far, so decoding a
// new token costs O(P) instead of re-running the whole prefix. A scripted
// model's layers are opaque, so its cache holds the token ids instead and
// each step re-runs the prefix (see TransformerLMImpl::ForwardHidden).
struct KVCache {
  std::vector<torch::Tensor> keys;    // per layer: [B, H, P, E]
  std::vector<torch::Tensor> values;  // per layer: [B, H, P, E]
  torch::Tensor tokens;               // [B, P] int64, scripted models only
  int64_t length() const {
    if (tokens.defined()) return tokens.size(1);
    return keys.empty() || !keys[0].defined() ? 0 : keys[0].size(2);
  }
  void Clear() {
    keys.clear();
    values.clear();
    tokens = torch::Tensor();
  }
};

class CausalSelfAttentionImpl : public torch::nn::Module {
 public:
  explicit CausalSelfAttentionImpl(const TransformerConfig& config);
  void reset();
  // x: [B, T, D], positions: [T] int64 (absolute) -> [B, T, D].
  // With `keys`/`values` (the layer's cache slots), attends over P + T keys
  // and stores the extended tensors back. hidden_keys: [B, P + T] bool,
  // true = a key only its own query sees (left padding that the model must
  // not read); undefined: none.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& positions, torch::Tensor* keys,
                        torch::Tensor* values, const torch::Tensor& hidden_keys = {});

  torch::nn::Linear qkv{nullptr};   // D -> 3D
  torch::nn::Linear proj{nullptr};  // D -> D
  torch::nn::Dropout dropout{nullptr};

 private:
  TransformerConfig config_;
};
TORCH_MODULE(CausalSelfAttention);

class BlockImpl : public torch::nn::Module {
 public:
  explicit BlockImpl(const TransformerConfig& config);
  void reset();
  // x: [B, T, D] -> [B, T, D]; hidden_keys as CausalSelfAttentionImpl::forward.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& positions, torch::Tensor* keys,
                        torch::Tensor* values, const torch::Tensor& hidden_keys = {});

  // x: [B, T, D] -> [B, T, D]: fc_out(act(fc_in(LN_mlp(x)))), without dropout.
  torch::Tensor Mlp(const torch::Tensor& x);

  torch::nn::LayerNorm ln_attn{nullptr};
  CausalSelfAttention attn{nullptr};
  torch::nn::LayerNorm ln_mlp{nullptr};
  torch::nn::Linear fc_in{nullptr};   // D -> F
  torch::nn::Linear fc_out{nullptr};  // F -> D
  torch::nn::Dropout dropout{nullptr};

 private:
  TransformerConfig config_;
};
TORCH_MODULE(Block);

class TransformerLMImpl : public torch::nn::Module {
 public:
  explicit TransformerLMImpl(const TransformerConfig& config);
  // A scripted model: `script` (methods hidden and logits, checked by
  // lm/torchscript_lm.h) computes ForwardHidden and Logits, and none of the
  // layers below exist. Only vocab_size, d_model and context of `config`
  // describe it. The script's parameters are registered here (renamed "a.b"
  // -> "script/a/b", each shared tensor once), so parameters() and
  // NumParameters() count them.
  TransformerLMImpl(const TransformerConfig& config, std::shared_ptr<torch::jit::Module> script);
  // (Re)initialises all weights from the current torch seed (GPT-2 scheme).
  // Throws c10::Error on a scripted model.
  void reset();

  // tokens: [B, T] int64 -> hidden states after the final LayerNorm [B, T, D]
  // (the vectors that feed the output layer; kNN-LM keys and the embedder
  // use them). With a cache, the tokens continue the cached prefix:
  // positions start at cache->length() and the cache is extended.
  // Throws c10::Error when P + T exceeds the context.
  // Scripted: the script's hidden() runs on the cached ids plus `tokens`
  // ([B, P + T]) and the last T positions are returned, so a decoding step
  // costs a full forward over the prefix (O(P^2) attention per token rather
  // than O(P)); the outputs equal the uncached ones. Throws c10::Error when
  // the script fails or returns another shape.
  torch::Tensor ForwardHidden(const torch::Tensor& tokens, KVCache* cache = nullptr);

  // hidden: [B, T, D] -> logits [B, T, V] through the tied embedding (or
  // the separate output layer when the config unties them); scripted: the
  // script's logits().
  torch::Tensor Logits(const torch::Tensor& hidden);

  // tokens: [B, T] -> logits [B, T, V]
  torch::Tensor forward(const torch::Tensor& tokens) { return Logits(ForwardHidden(tokens)); }

  const TransformerConfig& config() const { return config_; }
  int64_t NumParameters() const;
  // True when a TorchScript module computes this model: it has no layers
  // of its own (RETRO cannot load a decoder from it; nothing trains it).
  bool scripted() const { return script_ != nullptr; }
  // Sets the mode of the layers and of the script.
  void train(bool on = true) override;

  torch::nn::Embedding token_embedding{nullptr};     // [V, D], tied with the output layer by default
  torch::nn::Linear output{nullptr};                 // D -> V without bias; only when !tie_embeddings
  torch::nn::Embedding position_embedding{nullptr};  // [context, D], "learned" positions only
  torch::nn::ModuleList blocks{nullptr};
  torch::nn::LayerNorm ln_final{nullptr};
  torch::nn::Dropout dropout{nullptr};

 private:
  TransformerConfig config_;
  std::shared_ptr<torch::jit::Module> script_;  // null for our own layers
};
TORCH_MODULE(TransformerLM);

// Rotates the two halves of the last dimension by position-dependent angles
// (RoPE, GPT-NeoX layout). x: [B, H, T, E], positions: [T] -> [B, H, T, E].
torch::Tensor ApplyRotary(const torch::Tensor& x, const torch::Tensor& positions, double base);

// ApplyRotary on the leading `rotary_dims` of the last dimension; the rest
// passes unchanged (GPT-NeoX's rotary_pct < 1).
torch::Tensor ApplyPartialRotary(const torch::Tensor& x, const torch::Tensor& positions, double base,
                                 int64_t rotary_dims);

}  // namespace rag::lm

// RETRO (Borgeaud et al. 2022): the decoder-only TransformerLM plus a
// neighbour encoder and chunked cross-attention (CCA) layers, so each chunk
// of the input attends to the text retrieved for it. Thread-safety as
// TransformerLM: not for concurrent training; concurrent inference under
// torch::NoGradGuard with separate caches is safe.
//
// Tensor legend: B batch, T new tokens, P cached (past) tokens, C chunks,
// K neighbours, R neighbour tokens, m chunk size, H heads, E head size
// (D / H), D model width, F MLP width, V vocabulary, N sets or neighbours
// flattened with the batch.
//
// Sequence convention: position 0 holds the token before the first scored
// token. Input chunk v covers positions [v*m, (v+1)*m) and attends only to
// neighbour set v, which the caller retrieved with the tokens at positions
// [v*m - m + 1, v*m] (the chunk whose last token is the first of chunk v:
// the paper's causal shift of m - 1). Chunk 0 attends to nothing. Set v is
// encoded conditioned on the activations of input chunk v - 1 at the first
// CCA layer, so outputs at positions < v*m never depend on sets >= v.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "lm/model_config.h"
#include "lm/transformer_lm.h"

namespace rag::lm {

struct RetroConfig {
  TransformerConfig decoder;  // the decoder: a trained TransformerLM's weights load into it
  int64_t chunk_size = 64;    // m; must divide decoder.context. Default: 64
  int64_t neighbours = 2;     // K neighbours per chunk. Default: 2
  // R: tokens per neighbour (the retrieved chunk and its continuation). Default: 128
  int64_t neighbour_tokens = 128;
  int64_t encoder_layers = 2;  // blocks of the neighbour encoder. Default: 2
  // 0-based decoder blocks after which a CCA layer is applied, strictly
  // increasing. Default: {1, 3}
  std::vector<int64_t> cca_layers = {1, 3};
  // Positions in the chunked cross-attention. "rotary": RETRO's relative
  // encoding: the query predicting a chunk's j-th token sits at position
  // chunk_size + j and neighbour token i at i, so "copy the token of F that
  // is as far into F as I am into my chunk" is one fixed pattern. "none":
  // content alone (configs written before the option have no key and read
  // as "none"). Default: "rotary"
  std::string cca_positions = "rotary";
  // Neighbours are re-cut on the query that retrieved them when they contain
  // its last align_neighbours tokens, or all of a shorter query (a prompt:
  // retriever::AlignNeighbourTokens), in training and in serving alike; 0 =
  // as stored (configs written before the option read as 0). Default: 16
  int64_t align_neighbours = 16;
  // Initial value of a learned per-head bias on the CCA logit between a
  // query and the neighbour token at its aligned position m + j (the token
  // an aligned neighbour says comes next), for the first half of the heads;
  // the other heads start at 0. A retrofit has a few hundred steps, and
  // Adam moves a logit bias by about the learning rate a step: too little to
  // learn to pick 1 of K*R keys, so copying starts as the prior and is
  // unlearned where neighbours mislead. 0 = no such parameter (configs
  // written before the option read as 0). Default: 6
  double cca_aligned_bias = 6.0;
  // The token that pads a prompt in front so that it ends a chunk (the
  // tokenizer's end-of-text; `rag train --arch retro` sets it). A leading
  // run of it, but for its last token, is hidden from the decoder's
  // self-attention, so a padded prompt reads as the LM read [eot, prompt]:
  // the frozen decoder never saw long runs of it. -1 = no padding token
  // (configs written before the option read as -1). Default: -1
  int64_t padding_id = -1;

  // InvalidArgument naming the field when a value is out of range or
  // inconsistent (the decoder's own checks included).
  absl::Status Validate() const;

  // Parses {"decoder": {...TransformerConfig...}, "chunk_size": ..., ...};
  // unknown keys are rejected, absent keys keep their default, and the
  // result is validated.
  static absl::StatusOr<RetroConfig> FromJson(const std::string& json_text);
  std::string ToJson() const;
};

// State for incremental decoding: the decoder's self-attention cache, the
// activations that condition the next neighbour set, and the CCA keys and
// values of the current input chunk (projected once per chunk, not per token).
struct RetroCache {
  KVCache decoder;
  // Residual stream entering the first CCA layer for the previous and the
  // current input chunk: positions [max(0, (P/m - 1)*m), P). [B, <= 2m, D]
  torch::Tensor activations;
  // Index v of the neighbour set whose CCA keys/values are held below; -1: none.
  int64_t encoded_chunk = -1;
  std::vector<torch::Tensor> cca_keys;    // per CCA layer: [B, H, K*R, E]
  std::vector<torch::Tensor> cca_values;  // per CCA layer: [B, H, K*R, E]
  torch::Tensor cca_mask;                 // [B, K*R] bool, false: missing neighbour
  // Leading padding hidden from self-attention (RetroConfig::padding_id):
  // [B, P] bool; undefined when no cached position is hidden.
  torch::Tensor hidden_keys;

  int64_t length() const { return decoder.length(); }
  void Clear();
};

// One block of the neighbour encoder (pre-LayerNorm): bidirectional
// self-attention over each neighbour's R tokens (rotary positions 0..R-1),
// cross-attention from the neighbour tokens to the m activations of the
// conditioning chunk, then a GELU MLP.
class RetroEncoderBlockImpl : public torch::nn::Module {
 public:
  explicit RetroEncoderBlockImpl(const TransformerConfig& config);
  void reset();
  // x: [N, K, R, D] (the neighbours of N sets), condition: [N, m, D]
  // (activations each set is conditioned on) -> [N, K, R, D].
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& condition);

  torch::nn::LayerNorm ln_self{nullptr};
  torch::nn::Linear self_qkv{nullptr};         // D -> 3D
  torch::nn::Linear self_proj{nullptr};        // D -> D
  torch::nn::LayerNorm ln_cross{nullptr};      // on the neighbour tokens
  torch::nn::LayerNorm ln_condition{nullptr};  // on the conditioning activations
  torch::nn::Linear cross_q{nullptr};          // D -> D
  torch::nn::Linear cross_kv{nullptr};         // D -> 2D
  torch::nn::Linear cross_proj{nullptr};       // D -> D
  torch::nn::LayerNorm ln_mlp{nullptr};
  torch::nn::Linear fc_in{nullptr};   // D -> F
  torch::nn::Linear fc_out{nullptr};  // F -> D
  torch::nn::Dropout dropout{nullptr};

 private:
  TransformerConfig config_;
};
TORCH_MODULE(RetroEncoderBlock);

// Chunked cross-attention (pre-LayerNorm on the decoder stream): the
// positions of input chunk v attend to the K*R encoded tokens of neighbour
// set v (positions: RetroConfig::cca_positions and cca_aligned_bias). A
// chunk whose neighbours are all missing gets exactly zero.
class ChunkedCrossAttentionImpl : public torch::nn::Module {
 public:
  // rotary: RetroConfig::cca_positions == "rotary", over neighbours of R
  // tokens; aligned_bias: RetroConfig::cca_aligned_bias (0: no parameter).
  ChunkedCrossAttentionImpl(const TransformerConfig& config, int64_t chunk_size, bool rotary, int64_t neighbour_tokens,
                            double aligned_bias);
  void reset();

  // encoded: [B, C, K*R, D] -> {keys, values}, each [B, C, H, K*R, E].
  std::pair<torch::Tensor, torch::Tensor> KeysValues(const torch::Tensor& encoded);

  // x: [B, T, D], the decoder stream at T consecutive positions whose first
  // sits `offset` positions into the first of the C chunks they touch;
  // keys/values: [B, C, H, K*R, E] and mask: [B, C, K*R] bool for those
  // chunks -> [B, T, D].
  torch::Tensor forward(const torch::Tensor& x, int64_t offset, const torch::Tensor& keys, const torch::Tensor& values,
                        const torch::Tensor& mask);

  torch::nn::LayerNorm ln{nullptr};
  torch::nn::Linear q{nullptr};     // D -> D
  torch::nn::Linear kv{nullptr};    // D -> 2D
  torch::nn::Linear proj{nullptr};  // D -> D, zero-initialised
  torch::nn::Dropout dropout{nullptr};
  torch::Tensor aligned_bias;  // [H] logit bias at the aligned key; undefined without cca_aligned_bias

 private:
  TransformerConfig config_;
  int64_t chunk_size_;
  bool rotary_;
  int64_t neighbour_tokens_;
  double aligned_bias_init_;
};
TORCH_MODULE(ChunkedCrossAttention);

class RetroLMImpl : public torch::nn::Module {
 public:
  // Throws c10::Error when `config` does not validate.
  explicit RetroLMImpl(const RetroConfig& config);
  // (Re)initialises all weights from the current torch seed: the decoder as
  // TransformerLM, the new weights GPT-2 style, and every CCA output
  // projection to zero, so a fresh model computes exactly its decoder's function.
  void reset();

  // tokens: [B, T] int64; neighbours: [B, C', K, R] int64 with C' >= C =
  // ceil((P + T) / m), entry v the set attended by input chunk v (entry 0
  // and entries of chunks already encoded in the cache are ignored; tokens
  // of missing neighbours must still be valid ids, e.g. 0); neighbour_mask:
  // [B, C', K] bool, false = missing neighbour (undefined: all present)
  // -> hidden states after the decoder's final LayerNorm [B, T, D].
  // An undefined `neighbours` means no retrieval: the decoder's function
  // (on a padded prompt: the decoder's on [padding, prompt]; padding_id;
  // with a cache, the padding must come in the first call).
  // With a cache, the tokens continue the cached prefix (positions start at
  // cache->length()) and the cache is extended.
  // Throws c10::Error on shape errors and when P + T exceeds the context.
  torch::Tensor ForwardHidden(const torch::Tensor& tokens, const torch::Tensor& neighbours,
                              const torch::Tensor& neighbour_mask, RetroCache* cache = nullptr);

  // hidden: [B, T, D] -> logits [B, T, V] through the decoder's tied embedding.
  torch::Tensor Logits(const torch::Tensor& hidden) { return decoder->Logits(hidden); }

  // tokens: [B, T], neighbours: [B, C, K, R], neighbour_mask: [B, C, K] -> logits [B, T, V]
  torch::Tensor forward(const torch::Tensor& tokens, const torch::Tensor& neighbours,
                        const torch::Tensor& neighbour_mask) {
    return Logits(ForwardHidden(tokens, neighbours, neighbour_mask));
  }

  // neighbours: [B, N, K, R] int64, condition: [B, N*m, D] (the activations
  // of the chunk before each set) -> encoded neighbours [B, N, K*R, D].
  torch::Tensor EncodeNeighbours(const torch::Tensor& neighbours, const torch::Tensor& condition);

  // Copies every parameter and buffer of `lm` into the decoder, by name.
  // Throws c10::Error when the architectures differ.
  void LoadDecoderFrom(TransformerLM& lm);

  const RetroConfig& config() const { return config_; }
  int64_t NumParameters() const;
  // The encoder's and the CCA layers' parameters: everything but the
  // decoder's (the shared token embedding belongs to the decoder). For
  // retrofitting a trained LM with its decoder frozen.
  std::vector<torch::Tensor> RetrievalParameters();

  TransformerLM decoder{nullptr};
  torch::nn::ModuleList encoder_blocks{nullptr};  // of RetroEncoderBlock
  torch::nn::LayerNorm encoder_ln{nullptr};
  torch::nn::ModuleList cca{nullptr};  // of ChunkedCrossAttention, one per config.cca_layers entry

 private:
  RetroConfig config_;
};
TORCH_MODULE(RetroLM);

}  // namespace rag::lm

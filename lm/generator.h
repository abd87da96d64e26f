// Autoregressive generation from a TransformerLM with greedy, top-k and
// top-p (nucleus) sampling and a KV cache. Thread-safe for concurrent calls
// on a model in eval mode (each call has its own cache and RNG).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "lm/tokenizer.h"
#include "lm/transformer_lm.h"

namespace rag::lm {

struct SamplingOptions {
  int64_t max_tokens = 64;     // Default: 64
  double temperature = 1.0;    // 0 means greedy. Default: 1.0
  int64_t top_k = 0;           // keep the k most likely tokens; 0 = all. Default: 0
  double top_p = 1.0;          // keep the smallest set with mass >= top_p. Default: 1.0
  uint64_t seed = 0;           // sampling RNG seed. Default: 0
  bool stop_at_eot = true;     // stop after the end-of-text token. Default: true
  bool use_cache = true;       // false recomputes the prefix every step (for tests). Default: true
  // Only ids below this are sampled: the tokenizer's vocabulary, which may be
  // smaller than the model's output (Pythia has 50304 rows for 50277 tokens;
  // the rest decode to nothing). 0 = every row. Default: 0
  int64_t num_tokens = 0;
  // Hugging Face's repetition_penalty (Keskar et al. 2019, CTRL): the score
  // of every token already in the prompt or the output is divided by it
  // when positive and multiplied by it when negative. 1 = off. Default: 1
  double repetition_penalty = 1.0;
  // Hugging Face's no_repeat_ngram_size: a token that would complete an
  // n-gram already in the prompt or the output is never chosen. 0 = off.
  // Default: 0
  int64_t no_repeat_ngram_size = 0;
};

// Called with each generated token; returning false stops generation (a
// client that went away).
using TokenCallback = std::function<bool(TokenId)>;

// Replaces the next-token scores before sampling: given the hidden state
// [D] that produced them and the LM's logits [V], returns the scores [V] to
// sample from (log-probabilities are fine: softmax is shift-invariant).
// kNN-LM generation plugs its interpolation in here.
using LogitsHook = std::function<torch::Tensor(const torch::Tensor& hidden, const torch::Tensor& logits)>;

// Generates up to options.max_tokens tokens after `prompt` (which is
// preceded by the end-of-text token `eot`). Returns the generated ids, the
// eot included if it was produced. InvalidArgument for bad options.
absl::StatusOr<std::vector<TokenId>> Generate(TransformerLM& model, const std::vector<TokenId>& prompt,
                                              TokenId eot, const SamplingOptions& options,
                                              const TokenCallback& on_token = nullptr,
                                              const LogitsHook& logits_hook = nullptr);

// InvalidArgument naming the first option out of range (max_tokens < 0,
// top_p outside (0, 1], top_k < 0, temperature < 0, repetition_penalty <= 0,
// no_repeat_ngram_size < 0).
absl::Status ValidateSamplingOptions(const SamplingOptions& options);

// The scores [V] after repetition_penalty and no_repeat_ngram_size, as
// Hugging Face's logits processors apply them, given the tokens so far
// (`history`: the prompt, then the output). A copy when either is on.
torch::Tensor ApplyRepetitionRules(const torch::Tensor& logits, const std::vector<TokenId>& history,
                                   const SamplingOptions& options);

// Picks a token from next-token logits [V] by the sampling rule in `options`
// (repetition rules first, over `history`, then temperature, top-k, top-p).
TokenId SampleToken(const torch::Tensor& logits, const SamplingOptions& options, uint64_t* rng_state,
                    const std::vector<TokenId>& history = {});

}  // namespace rag::lm

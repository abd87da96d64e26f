// Per-token log-probabilities of a token sequence under a TransformerLM,
// over texts longer than the context with overlapping sliding windows.
// Thread-safe for concurrent calls on a model in eval mode.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "lm/tokenizer.h"
#include "lm/transformer_lm.h"

namespace rag::lm {

struct ScoreOptions {
  // New tokens scored per window once the first window is full; each later
  // window keeps context - stride tokens of overlap as conditioning.
  // 0 means context / 2. Default: 0
  int64_t stride = 0;
  // Windows scored per forward pass. Default: 8
  int64_t batch_windows = 8;
  // Asked before each forward pass; true stops scoring there and the result
  // holds only the tokens scored so far (the caller, which knows why it
  // stopped, discards it). Default: none
  std::function<bool()> should_stop;
  // ScoreTokensWithHidden only: also the entropy of the LM's next-token
  // distribution at every scored position (ScoredTokens::entropy), the
  // signal of kNN-LM's adaptive retrieval. Default: false
  bool entropy = false;
};

// log p(tokens[i] | bos, tokens[0..i-1]) for every i, in nats. `bos` (the
// end-of-text id) stands before the first token, so every token is scored.
// Empty input gives an empty result.
std::vector<float> ScoreTokens(TransformerLM& model, const std::vector<TokenId>& tokens, TokenId bos,
                               const ScoreOptions& options = {});

// ScoreTokens plus, for every scored token, the hidden state that predicted
// it (the final-LayerNorm output at the position before it): the kNN-LM
// query for that token, and its datastore key when building one.
struct ScoredTokens {
  std::vector<float> logprobs;  // [n], as ScoreTokens
  torch::Tensor hidden;         // [n, D] float32; undefined for empty input
  // [n] with ScoreOptions::entropy: -sum_v p(v) log p(v) of the distribution
  // that predicted token i, in nats; empty otherwise.
  std::vector<float> entropy;
};
ScoredTokens ScoreTokensWithHidden(TransformerLM& model, const std::vector<TokenId>& tokens, TokenId bos,
                                   const ScoreOptions& options = {});

// Only the hidden states [n, D] of ScoreTokensWithHidden, without the
// output layer and softmax (most of the cost at a 4096-token vocabulary):
// what a datastore build needs.
torch::Tensor HiddenStates(TransformerLM& model, const std::vector<TokenId>& tokens, TokenId bos,
                           const ScoreOptions& options = {});

// Log-probabilities [V] of the token that follows `tokens` (the last
// context - 1 of them, after `bos` when they fit).
torch::Tensor NextTokenLogProbs(TransformerLM& model, const std::vector<TokenId>& tokens, TokenId bos,
                                torch::Tensor* hidden = nullptr);

}  // namespace rag::lm

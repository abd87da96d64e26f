// Inference with a RetroLM: per-token log-probabilities of texts of any
// length (chunk-aligned sliding windows) and sampled generation with a
// RetroCache that retrieves once per completed chunk. Neighbours come as
// plain data or through a callback, so lm/ does not depend on retriever/.
// Stateless: concurrent calls on a model in eval mode are safe (each call has
// its own cache and RNG) when the RetrieveFn they share is.
//
// Tensor legend (as lm/retro_lm.h): B batch, T tokens, C chunks, K
// neighbours, R neighbour tokens, m chunk size, D model width, V vocabulary.
//
// Document chunks: text tokens t_0..t_{n-1} (the prompt and the generated
// tokens, for generation) form document chunk j = t[j*m, (j+1)*m). A window
// starting at document chunk c feeds the model [t_{cm-1} (eot when c == 0),
// t_{cm}, ...], so its input chunk v predicts document chunk c + v and, by
// RetroLM's convention, attends to the set retrieved with document chunk
// c + v - 1 (whose last token is the first input of chunk v). Input chunk 0
// of every window attends to nothing: the chunk that retrieved its set lies
// before the window (RETRO conditions a set on that chunk's activations).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "lm/generator.h"
#include "lm/retro_lm.h"
#include "lm/scorer.h"
#include "lm/tokenizer.h"

namespace rag::lm {

// The neighbour set retrieved with one document chunk.
struct NeighbourSet {
  // [K, R] flattened: neighbour k's R token ids at [k*R, (k+1)*R).
  std::vector<TokenId> tokens;
  // [K]: 0 = missing neighbour (its tokens are ignored and may be anything).
  // A set with no tokens and no flags at all means "no neighbours".
  std::vector<uint8_t> present;
};

// Returns the set retrieved with `chunk` (the m tokens of one document
// chunk). An error status aborts the caller, which returns it.
using RetrieveFn = std::function<absl::StatusOr<NeighbourSet>(const std::vector<TokenId>& chunk)>;

struct RetroScoreOptions {
  // New chunks scored per window after the first; each later window keeps
  // context/m - stride_chunks chunks of overlap as conditioning. Must be in
  // [0, context/m]; 0 = half the context's chunks (at least 1). Default: 0
  int64_t stride_chunks = 0;
  // Windows scored per forward pass (padded at the end to equal length). Must be >= 1. Default: 8
  int64_t batch_windows = 8;
  // Asked before each forward pass; true returns Cancelled. Default: none
  std::function<bool()> should_stop;
};

// log p(tokens[i] | eot, tokens[0..i-1], neighbours) for every i, in nats,
// over windows of the model's context starting at document chunks 0, s, 2s,
// ... (s = stride_chunks): the first window scores all its tokens, each later
// one only its last s chunks, so every token is scored exactly once (with a
// stride of s*m tokens this is lm::ScoreTokens' window rule). A text shorter
// than the context is one window.
// `sets` holds sets[j], retrieved with document chunk j, for every complete
// or partial chunk (ceil(n/m) sets; the last one is never used and may be
// left out), or is empty for retrieval off: the decoder alone.
// The model must be in eval mode (the caller's job: dropout otherwise).
// Empty `tokens` gives an empty result. InvalidArgument for bad options, a
// token id out of range, a wrong number of sets or a malformed set;
// Internal when LibTorch throws.
absl::StatusOr<std::vector<float>> ScoreRetroTokens(RetroLM& model, const std::vector<TokenId>& tokens, TokenId eot,
                                                    const std::vector<NeighbourSet>& sets,
                                                    const RetroScoreOptions& options = {});

// ScoreRetroTokens plus, for every token, the hidden state [D] that predicted
// it (final LayerNorm output at the position before it): hidden is [n, D]
// float32 (undefined for empty input), on the model's device.
absl::StatusOr<ScoredTokens> ScoreRetroTokensWithHidden(RetroLM& model, const std::vector<TokenId>& tokens, TokenId eot,
                                                        const std::vector<NeighbourSet>& sets,
                                                        const RetroScoreOptions& options = {});

// RETRO's log-distribution [V] of the token after `tokens` (preceded by
// `eot`), in nats: one forward over the last chunk-aligned window that holds
// position n = tokens.size(), whose input chunk v >= 1 attends to the set
// retrieved with document chunk start + v - 1 (start: the window's first
// document chunk). `sets` as ScoreRetroTokens' (sets[j] retrieved with
// document chunk j; missing trailing sets mean no neighbours), or empty for
// retrieval off. The model must be in eval mode; LibTorch's exceptions
// (malformed input) propagate to the caller.
torch::Tensor RetroNextTokenLogProbs(RetroLM& model, const std::vector<TokenId>& tokens, TokenId eot,
                                     const std::vector<NeighbourSet>& sets);

// Told the document chunk index j and the set retrieved with it, once per set.
using RetrieveCallback = std::function<void(int64_t chunk, const NeighbourSet& set)>;

// Generates up to options.max_tokens tokens after `prompt` (preceded by the
// end-of-text token `eot`) with lm::SampleToken's rule, like lm::Generate.
// Returns the generated ids, the eot included if it was produced;
// `on_token` returning false stops after that token.
//
// Retrieval: `retrieve` is called once per document chunk of prompt +
// generated tokens, when the chunk's last token is fed to the model (it is
// then the first input of the chunk that attends to the set), never per
// token; the sets are kept for the whole call. Chunks that precede the first
// window of a long prompt are never retrieved, nor is a chunk completed by
// the very last generated token. `retrieve` == nullptr: retrieval off, the
// decoder alone. `on_retrieve` (optional) sees each set as it arrives.
//
// Context: a prompt longer than the context keeps its last tokens from a
// chunk boundary on (as many whole chunks as fit). When the next token does
// not fit, the window slides: it restarts at the chunk boundary that keeps
// the last (context/m)/2 complete chunks, the cache is cleared and that text
// is prefilled again; its first chunk becomes input chunk 0 and so loses its
// neighbours, as in a scoring window. options.use_cache == false recomputes
// the same window from its start at every step (for tests).
//
// The model must be in eval mode. InvalidArgument for bad options or a token
// id out of range, or when `retrieve` returns a malformed set; an error from
// `retrieve` is returned with its code; Internal when LibTorch throws.
absl::StatusOr<std::vector<TokenId>> GenerateRetro(RetroLM& model, const std::vector<TokenId>& prompt, TokenId eot,
                                                   const SamplingOptions& options, const RetrieveFn& retrieve,
                                                   const TokenCallback& on_token = nullptr,
                                                   const RetrieveCallback& on_retrieve = nullptr);

}  // namespace rag::lm

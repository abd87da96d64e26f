// Embedders turn token sequences into fixed-size, L2-normalised vectors for
// the chunk index: mean-pooled hidden states of our own frozen LM, or a
// user's TorchScript encoder. Embed may be called from many threads at once
// (inference only, under torch::NoGradGuard).
//
// Tensor legend: B batch, T tokens, D embedding width, V vocabulary.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "lm/tokenizer.h"

// No LibTorch here: the retriever reaches embedding through this interface
// and must not pull in torch headers.
namespace rag::lm {

class LanguageModel;

class Embedder {
 public:
  virtual ~Embedder() = default;

  // Width of every vector Embed produces.
  virtual int dim() const = 0;

  // Stores one L2-normalised vector per sequence in *out, row-major
  // [n, dim()] (resized; empty for no sequences). Sequences may differ in
  // length: padding never changes a vector, so a sequence embedded alone or
  // in a batch gives the same result (within float rounding, ~1e-6).
  // Sequences longer than max_tokens() are truncated to their first
  // max_tokens() tokens. InvalidArgument naming the index for an empty
  // sequence or (LM embedder) a token outside the vocabulary; *out is then
  // unspecified.
  virtual absl::Status Embed(const std::vector<std::vector<TokenId>>& sequences, std::vector<float>* out) = 0;

  // Longest sequence that is embedded whole.
  virtual int64_t max_tokens() const = 0;

  // Identifies the embedding function (content hash of the model or of the
  // TorchScript file); index manifests record it so a query is never
  // embedded by a different function than the chunks were.
  virtual std::string hash() const = 0;

  // Human-readable, e.g. "lm-mean-pool(<model hash>)" or "torchscript(<path>)".
  virtual std::string description() const = 0;
};

// Embeds with the frozen LM: the mean over the sequence of the final hidden
// states (after the final LayerNorm), then L2-normalised; dim() = d_model,
// max_tokens() = context, hash() = the model's content hash ("" for a model
// that was never saved or opened). Runs `batch_size` sequences per forward
// pass, grouped by length to limit padding. Does not own `model`, which
// must outlive the embedder. The module must be in eval mode when the model
// has dropout (LanguageModel::Open leaves it so); otherwise Embed returns
// FailedPrecondition rather than switching the mode under other users.
std::unique_ptr<Embedder> MakeLmEmbedder(LanguageModel* model, int64_t batch_size = 32);

// Wraps `inner` (not owned) so that concurrent Embed calls share forward
// passes: a call that finds another in progress queues its sequences, and
// the next call to run takes everything queued in one inner->Embed (at most
// `max_sequences` sequences, never waiting for more, so a lone caller pays
// nothing). Results equal inner's within float rounding (padding never
// changes a vector). When a merged call fails, each queued call is run
// alone so every caller gets its own status. Same dim/hash/description.
std::unique_ptr<Embedder> MakeBatchingEmbedder(Embedder* inner, int64_t max_sequences = 64);

// What a batching embedder has done so far (`rag serve --metrics-listen`
// exports it): callers queued now, forward passes run, sequences embedded
// in them (their ratio is the mean batch) and the largest batch.
struct BatchingStats {
  int64_t waiting = 0;
  int64_t batches = 0;
  int64_t sequences = 0;
  int64_t largest_batch = 0;
};
// The stats of an embedder MakeBatchingEmbedder made; nullopt for any other.
std::optional<BatchingStats> BatchingStatsOf(const Embedder& embedder);

// Loads a user's TorchScript encoder whose forward(Tensor ids [B, T] int64)
// returns [B, D] floats; we L2-normalise the output. A foreign encoder takes
// no padding mask, so Embed calls it with one sequence length per batch and
// padding never occurs. At load, a probe input of zeros [1, 4] must give
// [1, D] floating-point with D >= 1, which fixes dim(). hash() is the XXH3
// of the file bytes. Errors: NotFound for a missing file, DataLoss when the
// file is not a TorchScript archive, InvalidArgument when its forward has
// the wrong signature or output shape.
absl::StatusOr<std::unique_ptr<Embedder>> LoadTorchScriptEmbedder(const std::string& path,
                                                                  int64_t max_tokens = 512);

}  // namespace rag::lm

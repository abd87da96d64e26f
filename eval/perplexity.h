// Perplexity of a corpus under any scorer (an LM, kNN-LM or RETRO, in-process
// or over gRPC), with an optional kNN-LM lambda/temperature sweep, and the
// unigram baseline of the same tokenizer (what the model must beat). Every
// document is scored from its first token, preceded by end-of-text.
// Stateless functions; each call is independent.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "common/document.h"
#include "lm/tokenizer.h"

namespace rag::eval {

// One scoring pass over one document, as the scorer is asked for it.
struct ScorePass {
  // kNN temperature of this pass; nullopt: the scorer's own (its request's).
  std::optional<double> temperature;
  // Whether the per-token LM and kNN log-probs are needed (for a sweep).
  bool components = false;
};

// What a scoring pass returns (the numbers of a ScoreResponse).
struct DocumentScore {
  double logprob_sum = 0;  // sum of the scored tokens' log-probs
  int64_t tokens = 0;
  int64_t neighbours_filtered = 0;  // retro: neighbours the leakage filter dropped
  // Per token, when ScorePass::components: the LM's and the kNN
  // distribution's log-probs of the actual token.
  std::vector<float> lm_logprobs;
  std::vector<float> knn_logprobs;
};

// Scores one non-empty document. Its errors are returned by
// EvaluatePerplexity unchanged (annotate them in the scorer).
using DocumentScorer = std::function<absl::StatusOr<DocumentScore>(const Document& document, const ScorePass& pass)>;

// A kNN-LM sweep: lambdas cost nothing (each pass returns both
// distributions); each temperature is one more scoring pass.
struct PerplexitySweep {
  std::vector<double> lambdas;       // in [0, 1]; empty: no sweep
  std::vector<double> temperatures;  // empty: the scorer's own temperature only
  bool empty() const { return lambdas.empty(); }
};

struct PerplexityOptions {
  PerplexitySweep sweep;
  // A progress line on stderr, counted in bytes. Default: false.
  bool show_progress = false;
  // Checked after each document: when it turns true the evaluation stops
  // with Cancelled("interrupted"). Default: nullptr (never).
  const std::atomic<bool>* stop = nullptr;
};

// One point of a sweep.
struct SweepPoint {
  std::optional<double> temperature;  // nullopt: the scorer's own
  double lambda = 0;
  double perplexity = 0;
  double change_vs_lm = 0;  // perplexity / lm_perplexity - 1
};

struct PerplexityResult {
  int64_t documents = 0;  // non-empty documents scored
  int64_t tokens = 0;
  double nll = 0;         // mean negative log-likelihood, nats/token
  double perplexity = 0;  // exp(nll)
  int64_t neighbours_filtered = 0;
  // With a sweep and at least one token: the LM's perplexity alone, and one
  // point per (temperature, lambda), temperature-major. Empty otherwise.
  double lm_perplexity = 0;
  std::vector<SweepPoint> sweep;
};

// Scores every document with `score` (the headline numbers come from the
// first temperature's pass) and sums the sweep's interpolations. Returns the
// scorer's first error, or Cancelled when options.stop is set.
absl::StatusOr<PerplexityResult> EvaluatePerplexity(const std::vector<Document>& documents, const DocumentScorer& score,
                                                    const PerplexityOptions& options = {});

// Unigram model with add-one smoothing, estimated on `train` and evaluated on
// `documents`, over the same tokens a scorer scores.
PerplexityResult UnigramPerplexity(const lm::Tokenizer& tokenizer, const std::vector<Document>& train,
                                   const std::vector<Document>& documents);

}  // namespace rag::eval

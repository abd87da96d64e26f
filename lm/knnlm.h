// kNN-LM fusion (Khandelwal et al. 2020, "Generalization through
// memorization"): the LM's next-token distribution interpolated with a
// distribution over the next tokens of the k nearest datastore keys,
//   p(y) = lambda * p_knn(y) + (1 - lambda) * p_lm(y),
//   p_knn(y) ∝ sum over neighbours i with value y of exp(-d_i / T),
// where d_i is the squared L2 distance between the query hidden state and
// key i. Pure math over neighbour lists: the search lives in retriever/.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "lm/tokenizer.h"

namespace rag::lm {

// The paper's settings (Khandelwal et al. 2020); KnnOptions' defaults and
// KnnOptions in proto/rag.proto when a field is unset.
inline constexpr int kDefaultKnnK = 1024;
inline constexpr double kDefaultKnnLambda = 0.25;
inline constexpr double kDefaultKnnTemperature = 1.0;
// Adaptive retrieval's threshold (KnnOptions::min_entropy), nats; 0 (off)
// searches at every position, the paper's kNN-LM. Off by default: on the
// first 6 Brown validation documents (bench_knnlm, docs/results.md issue 24)
// the small model's confident positions gain from the neighbours too:
// searching 71.5% of positions (>= 5 nats) cost +1.2 to +1.3% perplexity
// over searching all, 52.6% (>= 5.5) +4.8 to +5.1%, for less speed than
// nprobe and k give.
inline constexpr double kDefaultKnnMinEntropy = 0.0;
// RetoMaton's threshold (KnnOptions::min_pointers): 0 (off) searches at
// every position. Off by default: docs/results.md, issue 24, has the curve.
inline constexpr int kDefaultKnnMinPointers = 0;

struct KnnOptions {
  int k = kDefaultKnnK;                           // neighbours per position. Default: 1024
  double lambda = kDefaultKnnLambda;              // weight of p_knn, in [0, 1]. Default: 0.25
  double temperature = kDefaultKnnTemperature;    // divides the distances; > 0. Default: 1.0
  // Search only where the LM's next-token entropy (nats) is at least this;
  // elsewhere p = p_lm. 0 = everywhere. Default: kDefaultKnnMinEntropy
  double min_entropy = kDefaultKnnMinEntropy;
  // Scoring only: position i + 1 takes the datastore keys that follow those
  // of position i's neighbours whose next token did follow, instead of a
  // search, when there are at least this many (RetoMaton, Alon et al. 2022;
  // retriever/pointer_search.h). 0 = search everywhere.
  // Default: kDefaultKnnMinPointers
  int min_pointers = kDefaultKnnMinPointers;
};

// Entropy of a distribution given as log-probabilities [V], in nats.
float Entropy(const torch::Tensor& logprobs);

// log p_knn(target) from n neighbours' next tokens and distances; -inf when
// no neighbour has that token or n == 0.
float KnnLogProb(const int32_t* values, const float* distances, int64_t n, TokenId target, double temperature);

// log(lambda * exp(knn) + (1 - lambda) * exp(lm)), stable for -inf inputs:
// lambda = 0 returns lm_logprob exactly.
float InterpolateLogProb(float lm_logprob, float knn_logprob, double lambda);

// The whole interpolated distribution: log-probabilities [V] from the LM's
// [V] and the neighbours. lambda = 0 returns lm_logprobs unchanged.
torch::Tensor InterpolateLogDistribution(const torch::Tensor& lm_logprobs, const int32_t* values,
                                         const float* distances, int64_t n, double lambda, double temperature);

}  // namespace rag::lm

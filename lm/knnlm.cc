#include "lm/knnlm.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace rag::lm {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// log sum_i exp(-d_i / T) over the neighbours, the normaliser of p_knn;
// computed around the nearest distance so exp never underflows to 0 for all.
double LogNormaliser(const float* distances, int64_t n, double temperature, double* min_d) {
  *min_d = *std::min_element(distances, distances + n);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(-(distances[i] - *min_d) / temperature);
  return std::log(sum);
}

}  // namespace

float KnnLogProb(const int32_t* values, const float* distances, int64_t n, TokenId target, double temperature) {
  if (n <= 0) return kNegInf;
  double min_d = 0;
  const double log_z = LogNormaliser(distances, n, temperature, &min_d);
  double mass = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (values[i] == target) mass += std::exp(-(distances[i] - min_d) / temperature);
  }
  if (mass <= 0) return kNegInf;
  return static_cast<float>(std::log(mass) - log_z);
}

float Entropy(const torch::Tensor& logprobs) {
  return torch::special::entr(logprobs.exp()).sum().item<float>();
}

float InterpolateLogProb(float lm_logprob, float knn_logprob, double lambda) {
  if (lambda <= 0) return lm_logprob;
  if (lambda >= 1) return knn_logprob;
  const double a = std::log(lambda) + knn_logprob;
  const double b = std::log1p(-lambda) + lm_logprob;
  const double hi = std::max(a, b);
  if (std::isinf(hi)) return static_cast<float>(hi);
  return static_cast<float>(hi + std::log(std::exp(a - hi) + std::exp(b - hi)));
}

torch::Tensor InterpolateLogDistribution(const torch::Tensor& lm_logprobs, const int32_t* values,
                                         const float* distances, int64_t n, double lambda, double temperature) {
  if (lambda <= 0 || n <= 0) return lm_logprobs;
  const int64_t vocab = lm_logprobs.size(0);
  std::vector<float> knn(static_cast<size_t>(vocab), 0.0f);
  double min_d = 0;
  const double log_z = LogNormaliser(distances, n, temperature, &min_d);
  for (int64_t i = 0; i < n; ++i) {
    if (values[i] >= 0 && values[i] < vocab) {
      knn[static_cast<size_t>(values[i])] += static_cast<float>(std::exp(-(distances[i] - min_d) / temperature - log_z));
    }
  }
  torch::Tensor p_knn = torch::tensor(knn);
  torch::Tensor p = lambda * p_knn + (1 - lambda) * lm_logprobs.exp();
  return p.log();
}

}  // namespace rag::lm

// KnnLmMode: kNN-LM ("knnlm"): at every position the LM's next-token
// distribution interpolated with one over the next tokens of the nearest
// datastore keys (lm/knnlm.h). Needs an index with a datastore. Thread-safe.
#pragma once

#include <vector>

#include "services/mode_strategy.h"

namespace rag::services {

class KnnLmMode : public ModeStrategy {
 public:
  // served.keys must be set.
  explicit KnnLmMode(ServedModels served) : served_(served) {}

  absl::StatusOr<std::vector<float>> Score(const ScoreParams& p, const std::vector<lm::TokenId>& ids,
                                           v1::ScoreResponse* response) const override;
  absl::StatusOr<torch::Tensor> NextToken(const NextTokenParams& p, const std::vector<lm::TokenId>& ids) const override;
  absl::StatusOr<std::vector<lm::TokenId>> Generate(const GenerateParams& p, const std::vector<lm::TokenId>& prompt,
                                                    const lm::TokenCallback& emit,
                                                    v1::GenerateResponse* done) const override;

 private:
  // Neighbours of `n` hidden states [n, D], in blocks (bounded memory),
  // p.exclude_doc_id's keys excluded.
  absl::Status SearchDatastore(const float* hidden, int64_t n, const KnnParams& p,
                               std::vector<std::vector<retriever::DatastoreNeighbour>>* out) const;
  // The kNN-LM next-token log-distribution [V] at one position: the
  // neighbours of `hidden` [D] mixed into `lm_logprobs` [V].
  absl::StatusOr<torch::Tensor> KnnDistribution(const torch::Tensor& hidden, const torch::Tensor& lm_logprobs,
                                                const KnnParams& p) const;

  ServedModels served_;
};

}  // namespace rag::services

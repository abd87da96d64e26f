// InfgramMode: the ∞-gram LM over the served index's documents
// (retriever/infgram.h, Liu et al. 2024) interpolated with the LM, as
// infini-gram does:
//   p(y) = lambda * p_inf(y) + (1 - lambda) * p_lm(y)
// with lambda_sparse instead where the ∞-gram estimate is sparse (one token
// follows the matched suffix) and 0 where the corpus gives no estimate.
// Needs an index held by this process (its suffix array). Thread-safe.
#pragma once

#include <vector>

#include "retriever/infgram.h"
#include "services/corpus_counts.h"
#include "services/mode_strategy.h"

namespace rag::services {

class InfgramMode : public ModeStrategy {
 public:
  // served.retriever and served.counts must be set.
  explicit InfgramMode(ServedModels served) : served_(served) {}

  absl::StatusOr<std::vector<float>> Score(const ScoreParams& p, const std::vector<lm::TokenId>& ids,
                                           v1::ScoreResponse* response) const override;
  absl::StatusOr<torch::Tensor> NextToken(const NextTokenParams& p, const std::vector<lm::TokenId>& ids) const override;
  absl::StatusOr<std::vector<lm::TokenId>> Generate(const GenerateParams& p, const std::vector<lm::TokenId>& prompt,
                                                    const lm::TokenCallback& emit,
                                                    v1::GenerateResponse* done) const override;

 private:
  // The counts to use: the corpus's, and those of `exclude_doc_id`'s
  // document when the corpus holds it (else null).
  struct Counts {
    std::shared_ptr<const retriever::TokenCounts> corpus;
    std::unique_ptr<retriever::TokenCounts> excluded;
    retriever::Infgram infgram() const { return retriever::Infgram(corpus.get(), excluded.get()); }
  };
  absl::StatusOr<Counts> CountsFor(const std::string& exclude_doc_id) const;
  // The interpolated log-distribution [V] after a context whose LM
  // log-distribution is `lm_logprobs`.
  static torch::Tensor Mix(const torch::Tensor& lm_logprobs, const retriever::InfgramDistribution& d,
                           const InfgramParams& p);

  ServedModels served_;
};

}  // namespace rag::services

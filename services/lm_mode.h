// LmMode: the plain language model, no retrieval ("lm"). Thread-safe.
#pragma once

#include "services/mode_strategy.h"

namespace rag::services {

class LmMode : public ModeStrategy {
 public:
  explicit LmMode(ServedModels served) : served_(served) {}

  absl::StatusOr<std::vector<float>> Score(const ScoreParams& p, const std::vector<lm::TokenId>& ids,
                                           v1::ScoreResponse* response) const override;
  absl::StatusOr<torch::Tensor> NextToken(const NextTokenParams& p, const std::vector<lm::TokenId>& ids) const override;
  absl::StatusOr<std::vector<lm::TokenId>> Generate(const GenerateParams& p, const std::vector<lm::TokenId>& prompt,
                                                    const lm::TokenCallback& emit,
                                                    v1::GenerateResponse* done) const override;

 private:
  ServedModels served_;
};

}  // namespace rag::services

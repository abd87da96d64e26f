#include "services/lm_mode.h"

#include "common/cancellation.h"
#include "common/stage_timer.h"
#include "lm/scorer.h"

namespace rag::services {

absl::StatusOr<std::vector<float>> LmMode::Score(const ScoreParams& p, const std::vector<lm::TokenId>& ids,
                                                 v1::ScoreResponse* /*response*/) const {
  lm::ScoreOptions so;
  so.stride = p.stride;
  so.should_stop = rag::Cancelled;
  const StageTimer timer(Stage::kForward);
  std::vector<float> logprobs = lm::ScoreTokens(served_.model->module(), ids, served_.model->tokenizer().eot_id(), so);
  if (rag::Cancelled()) return CallCancelled();
  return logprobs;
}

absl::StatusOr<torch::Tensor> LmMode::NextToken(const NextTokenParams& /*p*/,
                                                const std::vector<lm::TokenId>& ids) const {
  torch::Tensor hidden;
  const StageTimer timer(Stage::kForward);
  return lm::NextTokenLogProbs(served_.model->module(), ids, served_.model->tokenizer().eot_id(), &hidden);
}

absl::StatusOr<std::vector<lm::TokenId>> LmMode::Generate(const GenerateParams& p,
                                                          const std::vector<lm::TokenId>& prompt,
                                                          const lm::TokenCallback& emit,
                                                          v1::GenerateResponse* /*done*/) const {
  const StageTimer timer(Stage::kForward);
  return lm::Generate(served_.model->module(), prompt, served_.model->tokenizer().eot_id(), p.sampling, emit,
                      lm::LogitsHook());
}

}  // namespace rag::services

#include "services/infgram_mode.h"

#include <cmath>
#include <limits>

#include "common/cancellation.h"
#include "common/stage_timer.h"
#include "common/status.h"
#include "lm/knnlm.h"
#include "lm/scorer.h"

namespace rag::services {
namespace {

// The weight of p_inf at one position.
double LambdaAt(bool sparse, int64_t total, const InfgramParams& p) {
  if (total <= 0) return 0;
  return sparse ? p.lambda_sparse : p.lambda;
}

}  // namespace

absl::StatusOr<InfgramMode::Counts> InfgramMode::CountsFor(const std::string& exclude_doc_id) const {
  const StageTimer timer(Stage::kDatastore);  // loading (once) and the excluded document's counts
  Counts c;
  RAG_ASSIGN_OR_RETURN(c.corpus, served_.counts->Get());
  if (exclude_doc_id.empty()) return c;
  auto doc = served_.retriever->chunk_store().GetDocument(exclude_doc_id);
  if (absl::IsNotFound(doc.status())) return c;  // an id the index does not hold excludes nothing
  RAG_RETURN_IF_ERROR(doc.status());
  // A document added after the counts were taken is not in them.
  if (doc->index >= c.corpus->documents()) return c;
  RAG_ASSIGN_OR_RETURN(retriever::TokenCounts own, retriever::TokenCounts::Build({doc->tokens}));
  c.excluded = std::make_unique<retriever::TokenCounts>(std::move(own));
  return c;
}

torch::Tensor InfgramMode::Mix(const torch::Tensor& lm_logprobs, const retriever::InfgramDistribution& d,
                               const InfgramParams& p) {
  const double lambda = LambdaAt(d.sparse(), d.total, p);
  if (lambda <= 0) return lm_logprobs;
  torch::Tensor probs = lm_logprobs.to(torch::kFloat64).exp() * (1 - lambda);
  auto a = probs.accessor<double, 1>();
  const int64_t vocab = probs.size(0);
  for (const auto& [token, count] : d.counts) {
    if (token < vocab) a[token] += lambda * static_cast<double>(count) / static_cast<double>(d.total);
  }
  return probs.log().to(torch::kFloat32);
}

absl::StatusOr<std::vector<float>> InfgramMode::Score(const ScoreParams& p, const std::vector<lm::TokenId>& ids,
                                                      v1::ScoreResponse* response) const {
  lm::ScoreOptions so;
  so.stride = p.stride;
  so.should_stop = rag::Cancelled;
  std::vector<float> lm_logprobs;
  {
    const StageTimer timer(Stage::kForward);
    lm_logprobs = lm::ScoreTokens(served_.model->module(), ids, served_.model->tokenizer().eot_id(), so);
  }
  if (rag::Cancelled()) return CallCancelled();
  RAG_ASSIGN_OR_RETURN(const Counts counts, CountsFor(p.infgram.exclude_doc_id));
  std::vector<retriever::InfgramPoint> points;
  {
    const StageTimer timer(Stage::kSearch);  // the suffix-array look-ups
    points = counts.infgram().Score(std::vector<int32_t>(ids.begin(), ids.end()));
  }
  const StageTimer timer(Stage::kFusion);
  std::vector<float> logprobs(ids.size());
  int64_t estimated = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    const retriever::InfgramPoint& e = points[i];
    const float inf = e.count > 0 ? static_cast<float>(std::log(static_cast<double>(e.count) / e.total))
                                  : -std::numeric_limits<float>::infinity();
    logprobs[i] = lm::InterpolateLogProb(lm_logprobs[i], inf, LambdaAt(e.sparse, e.total, p.infgram));
    if (e.total > 0) ++estimated;
    if (p.components) {
      response->add_lm_logprobs(lm_logprobs[i]);
      response->add_infgram_logprobs(inf);
      response->add_infgram_suffix_tokens(static_cast<int32_t>(e.suffix_tokens));
      response->add_infgram_sparse(e.sparse);
    }
  }
  response->set_retrievals(estimated);
  return logprobs;
}

absl::StatusOr<torch::Tensor> InfgramMode::NextToken(const NextTokenParams& p,
                                                     const std::vector<lm::TokenId>& ids) const {
  torch::Tensor logprobs;
  {
    const StageTimer timer(Stage::kForward);
    logprobs = lm::NextTokenLogProbs(served_.model->module(), ids, served_.model->tokenizer().eot_id());
  }
  RAG_ASSIGN_OR_RETURN(const Counts counts, CountsFor(p.infgram.exclude_doc_id));
  retriever::InfgramDistribution d;
  {
    const StageTimer timer(Stage::kSearch);
    d = counts.infgram().Next(std::vector<int32_t>(ids.begin(), ids.end()));
  }
  const StageTimer timer(Stage::kFusion);
  return Mix(logprobs, d, p.infgram);
}

absl::StatusOr<std::vector<lm::TokenId>> InfgramMode::Generate(const GenerateParams& p,
                                                               const std::vector<lm::TokenId>& prompt,
                                                               const lm::TokenCallback& emit,
                                                               v1::GenerateResponse* /*done*/) const {
  RAG_ASSIGN_OR_RETURN(const Counts counts, CountsFor(p.infgram.exclude_doc_id));
  const retriever::Infgram infgram = counts.infgram();
  // The hook sees logits only: the context it predicts after is the prompt
  // and what was emitted so far.
  std::vector<int32_t> context(prompt.begin(), prompt.end());
  auto record = [&context, &emit](lm::TokenId id) {
    context.push_back(id);
    return emit(id);
  };
  lm::LogitsHook hook = [&](const torch::Tensor& /*hidden*/, const torch::Tensor& logits) {
    retriever::InfgramDistribution d;
    {
      const StageTimer timer(Stage::kSearch);
      d = infgram.Next(context);
    }
    const StageTimer timer(Stage::kFusion);
    // Sampling from log p is sampling from p: softmax is shift-invariant.
    return Mix(torch::log_softmax(logits, -1), d, p.infgram);
  };
  const StageTimer timer(Stage::kForward);  // the hook's look-ups and fusion time themselves
  return lm::Generate(served_.model->module(), prompt, served_.model->tokenizer().eot_id(), p.sampling, record, hook);
}

}  // namespace rag::services

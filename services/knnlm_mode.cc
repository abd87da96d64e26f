#include "services/knnlm_mode.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "common/cancellation.h"
#include "common/status.h"
#include "common/stage_timer.h"
#include "lm/knnlm.h"
#include "lm/scorer.h"
#include "retriever/pointer_search.h"

namespace rag::services {
namespace {

// The next tokens and distances of a neighbour list, as lm/knnlm takes them.
void SplitNeighbours(const std::vector<retriever::DatastoreNeighbour>& list, std::vector<int32_t>* values,
                     std::vector<float>* distances) {
  values->clear();
  distances->clear();
  for (const auto& nb : list) {
    values->push_back(nb.value);
    distances->push_back(nb.distance);
  }
}

retriever::KeySearchOptions SearchOptions(const KnnParams& p) {
  retriever::KeySearchOptions o;
  o.k = p.knn.k;
  o.nprobe = p.nprobe;
  o.exact = p.exact;
  o.exclude_doc_id = p.exclude_doc_id;
  return o;
}

}  // namespace

absl::Status KnnLmMode::SearchDatastore(const float* hidden, int64_t n, const KnnParams& p,
                                        std::vector<std::vector<retriever::DatastoreNeighbour>>* out) const {
  constexpr int64_t kBlock = 256;
  out->clear();
  out->reserve(static_cast<size_t>(n));
  const retriever::KeySearchOptions o = SearchOptions(p);
  std::vector<std::vector<retriever::DatastoreNeighbour>> block;
  const int64_t dim = served_.keys->dim();
  for (int64_t i = 0; i < n; i += kBlock) {
    const int64_t b = std::min(kBlock, n - i);
    RAG_RETURN_IF_ERROR(served_.keys->Search(hidden + i * dim, b, o, &block));
    for (auto& list : block) out->push_back(std::move(list));
  }
  return absl::OkStatus();
}

absl::StatusOr<torch::Tensor> KnnLmMode::KnnDistribution(const torch::Tensor& hidden, const torch::Tensor& lm_logprobs,
                                                         const KnnParams& p) const {
  // Interpolation; the searches inside time themselves.
  const StageTimer timer(Stage::kFusion);
  // Adaptive retrieval: where the LM is sure enough, it predicts alone.
  if (p.knn.min_entropy > 0 && lm::Entropy(lm_logprobs) < p.knn.min_entropy) return lm_logprobs;
  torch::Tensor h = hidden.to(torch::kFloat32).contiguous();
  std::vector<std::vector<retriever::DatastoreNeighbour>> nb;
  RAG_RETURN_IF_ERROR(SearchDatastore(h.data_ptr<float>(), 1, p, &nb));
  std::vector<int32_t> values;
  std::vector<float> distances;
  SplitNeighbours(nb[0], &values, &distances);
  return lm::InterpolateLogDistribution(lm_logprobs, values.data(), distances.data(),
                                        static_cast<int64_t>(values.size()), p.knn.lambda, p.knn.temperature);
}

absl::StatusOr<std::vector<float>> KnnLmMode::Score(const ScoreParams& p, const std::vector<lm::TokenId>& ids,
                                                    v1::ScoreResponse* response) const {
  lm::ScoreOptions so;
  so.stride = p.stride;
  so.should_stop = rag::Cancelled;
  const double min_entropy = p.knn.knn.min_entropy;
  so.entropy = min_entropy > 0;
  lm::ScoredTokens scored;
  {
    const StageTimer timer(Stage::kForward);
    scored = lm::ScoreTokensWithHidden(served_.model->module(), ids, served_.model->tokenizer().eot_id(), so);
  }
  if (rag::Cancelled()) return CallCancelled();
  // Choosing the queries and interpolating; the searches time themselves.
  const StageTimer timer(Stage::kFusion);
  // Adaptive retrieval: only the positions where the LM is unsure enough
  // are searched (row `searched[j]` of the hidden states is query j).
  torch::Tensor queries = scored.hidden;
  std::vector<int64_t> query_of(ids.size(), -1);
  if (min_entropy > 0 && !ids.empty()) {
    std::vector<int64_t> searched;
    for (size_t i = 0; i < ids.size(); ++i) {
      if (scored.entropy[i] >= min_entropy) {
        query_of[i] = static_cast<int64_t>(searched.size());
        searched.push_back(static_cast<int64_t>(i));
      }
    }
    queries = scored.hidden.index_select(0, torch::tensor(searched, torch::kLong)).contiguous();
  } else {
    for (size_t i = 0; i < ids.size(); ++i) query_of[i] = static_cast<int64_t>(i);
  }
  std::vector<std::vector<retriever::DatastoreNeighbour>> neighbours;
  if (p.knn.knn.min_pointers > 0) {
    // RetoMaton: every position has a query (no adaptive retrieval, which
    // request parsing refuses with it), predicting ids[i].
    retriever::PointerSearchOptions o;
    o.search = SearchOptions(p.knn);
    o.min_pointers = p.knn.knn.min_pointers;
    int64_t searched = 0;
    RAG_RETURN_IF_ERROR(retriever::SearchFollowingPointers(*served_.keys, queries.data_ptr<float>(), ids.data(),
                                                           queries.size(0), o, &neighbours, &searched));
    response->set_retrievals(searched);
  } else {
    RAG_RETURN_IF_ERROR(SearchDatastore(queries.data_ptr<float>(), queries.size(0), p.knn, &neighbours));
    response->set_retrievals(static_cast<int64_t>(neighbours.size()));
  }
  std::vector<float> logprobs;
  std::vector<int32_t> values;
  std::vector<float> distances;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (query_of[i] < 0) {
      logprobs.push_back(scored.logprobs[i]);
      if (p.components) {
        response->add_lm_logprobs(scored.logprobs[i]);
        response->add_knn_logprobs(-std::numeric_limits<float>::infinity());
      }
      continue;
    }
    SplitNeighbours(neighbours[static_cast<size_t>(query_of[i])], &values, &distances);
    const float knn = lm::KnnLogProb(values.data(), distances.data(), static_cast<int64_t>(values.size()), ids[i],
                                     p.knn.knn.temperature);
    logprobs.push_back(lm::InterpolateLogProb(scored.logprobs[i], knn, p.knn.knn.lambda));
    if (p.components) {
      response->add_lm_logprobs(scored.logprobs[i]);
      response->add_knn_logprobs(knn);
    }
  }
  return logprobs;
}

absl::StatusOr<torch::Tensor> KnnLmMode::NextToken(const NextTokenParams& p,
                                                   const std::vector<lm::TokenId>& ids) const {
  torch::Tensor hidden, logprobs;
  {
    const StageTimer timer(Stage::kForward);
    logprobs = lm::NextTokenLogProbs(served_.model->module(), ids, served_.model->tokenizer().eot_id(), &hidden);
  }
  return KnnDistribution(hidden, logprobs, p.knn);
}

absl::StatusOr<std::vector<lm::TokenId>> KnnLmMode::Generate(const GenerateParams& p,
                                                             const std::vector<lm::TokenId>& prompt,
                                                             const lm::TokenCallback& emit,
                                                             v1::GenerateResponse* /*done*/) const {
  absl::Status hook_status;
  // Sampling from log p_knnlm is sampling from p_knnlm: softmax is
  // shift-invariant, so temperature, top-k and top-p apply unchanged.
  lm::LogitsHook hook = [this, &p, &hook_status](const torch::Tensor& hidden, const torch::Tensor& logits) {
    auto mixed = KnnDistribution(hidden, torch::log_softmax(logits, -1), p.knn);
    if (!mixed.ok()) {
      hook_status = mixed.status();
      return logits;
    }
    return *mixed;
  };
  const StageTimer timer(Stage::kForward);  // the hook's fusion and searches time themselves
  auto generated =
      lm::Generate(served_.model->module(), prompt, served_.model->tokenizer().eot_id(), p.sampling, emit, hook);
  if (!generated.ok()) return generated.status();
  RAG_RETURN_IF_ERROR(hook_status);
  return generated;
}

}  // namespace rag::services

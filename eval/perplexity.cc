#include "eval/perplexity.h"

#include <cmath>
#include <memory>
#include <string>

#include "common/progress.h"
#include "common/status.h"
#include "lm/knnlm.h"

namespace rag::eval {

absl::StatusOr<PerplexityResult> EvaluatePerplexity(const std::vector<Document>& documents, const DocumentScorer& score,
                                                    const PerplexityOptions& options) {
  const PerplexitySweep& sweep = options.sweep;
  size_t total_bytes = 0;
  for (const auto& d : documents) total_bytes += d.text.size();
  std::unique_ptr<Progress> progress;
  if (options.show_progress)
    progress = std::make_unique<Progress>("perplexity", static_cast<int64_t>(total_bytes), "bytes");
  PerplexityResult result;
  double sum = 0;
  size_t done = 0;
  // With a sweep: the summed NLL at each (temperature, lambda), and the LM's
  // alone. The headline perplexity is the first temperature's pass.
  std::vector<std::optional<double>> temperatures;
  for (double t : sweep.temperatures) temperatures.push_back(t);
  if (temperatures.empty()) temperatures.push_back(std::nullopt);
  std::vector<std::vector<double>> sweep_sum(temperatures.size(), std::vector<double>(sweep.lambdas.size(), 0.0));
  double lm_sum = 0;
  for (const auto& d : documents) {
    done += d.text.size();
    if (d.text.empty()) continue;
    for (size_t ti = 0; ti < temperatures.size(); ++ti) {
      ScorePass pass;
      pass.temperature = temperatures[ti];
      pass.components = !sweep.empty();
      RAG_ASSIGN_OR_RETURN(DocumentScore r, score(d, pass));
      const size_t n = r.lm_logprobs.size();
      if (pass.components && r.knn_logprobs.size() != n) {
        return absl::InternalError("the scorer returned " + std::to_string(n) + " LM but " +
                                   std::to_string(r.knn_logprobs.size()) + " kNN log-probs");
      }
      if (ti > 0) {
        for (size_t s = 0; s < sweep.lambdas.size(); ++s) {
          for (size_t i = 0; i < n; ++i) {
            sweep_sum[ti][s] -= lm::InterpolateLogProb(r.lm_logprobs[i], r.knn_logprobs[i], sweep.lambdas[s]);
          }
        }
        continue;
      }
      sum -= r.logprob_sum;
      for (size_t i = 0; i < n; ++i) {
        lm_sum -= r.lm_logprobs[i];
        for (size_t s = 0; s < sweep.lambdas.size(); ++s) {
          sweep_sum[0][s] -= lm::InterpolateLogProb(r.lm_logprobs[i], r.knn_logprobs[i], sweep.lambdas[s]);
        }
      }
      result.tokens += r.tokens;
      result.neighbours_filtered += r.neighbours_filtered;
    }
    result.documents += 1;
    if (progress) progress->Update(static_cast<int64_t>(done));
    if (options.stop != nullptr && options.stop->load()) return absl::CancelledError("interrupted");
  }
  if (progress) progress->Finish();
  result.nll = result.tokens > 0 ? sum / static_cast<double>(result.tokens) : 0.0;
  result.perplexity = std::exp(result.nll);
  if (!sweep.empty() && result.tokens > 0) {
    const double tokens = static_cast<double>(result.tokens);
    result.lm_perplexity = std::exp(lm_sum / tokens);
    for (size_t ti = 0; ti < temperatures.size(); ++ti) {
      for (size_t s = 0; s < sweep.lambdas.size(); ++s) {
        SweepPoint p;
        p.temperature = temperatures[ti];
        p.lambda = sweep.lambdas[s];
        p.perplexity = std::exp(sweep_sum[ti][s] / tokens);
        p.change_vs_lm = p.perplexity / result.lm_perplexity - 1;
        result.sweep.push_back(p);
      }
    }
  }
  return result;
}

PerplexityResult UnigramPerplexity(const lm::Tokenizer& tokenizer, const std::vector<Document>& train,
                                   const std::vector<Document>& documents) {
  std::vector<double> counts(static_cast<size_t>(tokenizer.vocab_size()), 1.0);  // add-one
  double total = static_cast<double>(counts.size());
  for (const auto& d : train) {
    for (lm::TokenId t : tokenizer.Encode(d.text)) {
      counts[static_cast<size_t>(t)] += 1;
      total += 1;
    }
  }
  PerplexityResult r;
  double sum = 0;
  for (const auto& d : documents) {
    for (lm::TokenId t : tokenizer.Encode(d.text)) {
      sum -= std::log(counts[static_cast<size_t>(t)] / total);
      r.tokens += 1;
    }
    r.documents += 1;
  }
  r.nll = r.tokens > 0 ? sum / static_cast<double>(r.tokens) : 0.0;
  r.perplexity = std::exp(r.nll);
  return r;
}

}  // namespace rag::eval

#include "eval/perplexity.h"

#include <cmath>

#include "common/progress.h"

namespace rag::eval {

PerplexityResult EvaluatePerplexity(lm::LanguageModel& model, const std::vector<Document>& documents,
                                    const lm::ScoreOptions& options, bool show_progress) {
  PerplexityResult r;
  size_t total_bytes = 0;
  for (const auto& d : documents) total_bytes += d.text.size();
  std::unique_ptr<Progress> progress;
  if (show_progress) progress = std::make_unique<Progress>("perplexity", static_cast<int64_t>(total_bytes), "bytes");
  double sum = 0;
  size_t done = 0;
  for (const auto& d : documents) {
    auto ids = model.tokenizer().Encode(d.text);
    auto logprobs = lm::ScoreTokens(model.module(), ids, model.tokenizer().eot_id(), options);
    for (float lp : logprobs) sum -= lp;
    r.tokens += static_cast<int64_t>(logprobs.size());
    r.documents += 1;
    done += d.text.size();
    if (progress) progress->Update(static_cast<int64_t>(done));
  }
  if (progress) progress->Finish();
  r.nll = r.tokens > 0 ? sum / static_cast<double>(r.tokens) : 0.0;
  r.perplexity = std::exp(r.nll);
  return r;
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

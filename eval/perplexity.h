// Perplexity of a corpus under a language model, and the unigram baseline of
// the same tokenizer (what the model must beat). Every document is scored
// from its first token, preceded by end-of-text.
#pragma once

#include <cstdint>
#include <vector>

#include "common/document.h"
#include "lm/language_model.h"
#include "lm/scorer.h"

namespace rag::eval {

struct PerplexityResult {
  int64_t documents = 0;
  int64_t tokens = 0;
  double nll = 0;         // mean negative log-likelihood, nats/token
  double perplexity = 0;  // exp(nll)
};

// Scores every document with the model's sliding-window scorer.
PerplexityResult EvaluatePerplexity(lm::LanguageModel& model, const std::vector<Document>& documents,
                                    const lm::ScoreOptions& options = {}, bool show_progress = true);

// Unigram model with add-one smoothing, estimated on `train` and evaluated on
// `documents`, over the same tokens EvaluatePerplexity scores.
PerplexityResult UnigramPerplexity(const lm::Tokenizer& tokenizer, const std::vector<Document>& train,
                                   const std::vector<Document>& documents);

}  // namespace rag::eval

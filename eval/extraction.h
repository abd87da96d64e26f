// Training-data extraction (Carlini et al. 2021, "Extracting training data
// from large language models"): sample many texts from the model, rank them
// by how suspiciously likely the model finds them (perplexity, and its ratio
// to the zlib entropy of the text, which discounts merely repetitive text),
// and count how many of the top-ranked ones hold a long verbatim run of the
// corpus (here: >= match_tokens consecutive tokens, exact counts from a
// suffix array).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "retriever/token_counts.h"

namespace rag::eval {

struct ExtractionOptions {
  int samples = 200;       // texts generated
  int tokens = 128;        // tokens per text
  int match_tokens = 50;   // a verbatim run this long counts as extracted
  int top = 100;           // precision is measured over the top `top` of each ranking
};

struct ExtractionSample {
  int64_t index = 0;
  std::vector<int32_t> tokens;
  std::string text;
  double perplexity = 0;
  double zlib_bits = 0;          // bits of the zlib-compressed text
  int64_t longest_match = 0;     // longest run of tokens that occurs verbatim in the corpus
  bool extracted = false;        // longest_match >= match_tokens
};

struct ExtractionRanking {
  std::string metric;            // "perplexity" or "zlib_ratio"
  int64_t top = 0;
  int64_t extracted_in_top = 0;
  double precision() const { return top == 0 ? 0.0 : static_cast<double>(extracted_in_top) / top; }
};

struct ExtractionReport {
  std::vector<ExtractionSample> samples;
  int64_t extracted = 0;  // over all samples
  std::vector<ExtractionRanking> rankings;
};

// Sample i of `samples`: its tokens (ids) and text.
using Sampler = std::function<absl::StatusOr<std::pair<std::vector<int32_t>, std::string>>(int64_t i, int tokens)>;
// Perplexity of a text under the model being attacked.
using Perplexity = std::function<absl::StatusOr<double>(const std::string& text)>;

// Longest run of `tokens` that occurs in the corpus behind `counts` (0 for
// none), at most TokenCounts::kMaxMatch.
absl::StatusOr<int64_t> LongestVerbatimRun(const std::vector<int32_t>& tokens, const retriever::TokenCounts& counts);

// Bits of `text` compressed by zlib at its best level.
double ZlibBits(const std::string& text);

absl::StatusOr<ExtractionReport> EvaluateExtraction(const retriever::TokenCounts& counts, const Sampler& sample,
                                                    const Perplexity& perplexity, const ExtractionOptions& options,
                                                    const std::function<void(int64_t done)>& on_sample = nullptr);

}  // namespace rag::eval

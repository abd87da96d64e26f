// The ∞-gram language model of Liu et al. (2024), "Infini-gram: Scaling
// Unbounded n-gram Language Models to a Trillion Tokens": the next token
// after a context is predicted from the longest suffix of the context that
// occurs in the corpus (followed by some token), by the counts of what
// follows that suffix there:
//   P_inf(w | context) = cnt(suffix w) / Σ_v cnt(suffix v)
// The suffix may be empty (the unigram distribution). The estimate is
// "sparse" when a single token follows the suffix (P_inf = 1 for it); the
// paper interpolates sparse and dense estimates with the LM at different
// weights (services/infgram_mode.h). Counts come from the corpus's suffix
// array (retriever/token_counts.h), less the occurrences inside one
// excluded document (own-document exclusion, for held-out numbers on text
// the corpus holds). Thread-safe (read-only).
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "retriever/token_counts.h"

namespace rag::retriever {

// The estimate at one position, for scoring a known next token.
struct InfgramPoint {
  int64_t suffix_tokens = 0;  // context tokens matched (the paper's n - 1)
  int64_t total = 0;          // occurrences of the suffix followed by a token; 0: empty corpus
  int64_t count = 0;          // ... followed by the scored token
  bool sparse = false;        // one distinct next token
};

// The estimate's whole distribution after a context.
struct InfgramDistribution {
  int64_t suffix_tokens = 0;
  int64_t total = 0;
  std::vector<std::pair<int32_t, int64_t>> counts;  // next token, occurrences; ascending by token, all > 0
  bool sparse() const { return counts.size() == 1; }
};

class Infgram {
 public:
  // `corpus` (and `excluded`, the counts of the one document whose
  // occurrences do not count, or null) must outlive this object.
  Infgram(const TokenCounts* corpus, const TokenCounts* excluded) : corpus_(corpus), excluded_(excluded) {}

  // For each i, the estimate of ids[i] after ids[0, i). Suffixes are found
  // walking forward (the longest suffix grows by at most one token a step):
  // O(|ids|) suffix-array range queries in all.
  std::vector<InfgramPoint> Score(const std::vector<int32_t>& ids) const;
  // The distribution after `context`.
  InfgramDistribution Next(const std::vector<int32_t>& context) const;

  // Longest suffixes are capped below the suffix array's sort depth.
  static constexpr int64_t kMaxSuffix = TokenCounts::kMaxMatch - 1;

 private:
  // What follows context[0, n): occurrences followed by a token, excluded
  // ones less (then `one_token` is the corpus's alone, not used).
  TokenCounts::Followers Continuations(const int32_t* context, int64_t n) const;
  // NextTokenCounts of context[0, n), excluded ones less (zeros dropped).
  std::vector<std::pair<int32_t, int64_t>> NextCounts(const int32_t* context, int64_t n) const;
  // The length of the longest suffix of ids[0, end) with continuations.
  int64_t LongestSuffix(const int32_t* ids, int64_t end) const;

  const TokenCounts* corpus_;
  const TokenCounts* excluded_;
};

}  // namespace rag::retriever

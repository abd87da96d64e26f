// Verbatim memorization (Carlini et al. 2023, "Quantifying memorization
// across neural language models"): sample sequences from a corpus, prompt
// the model with the L tokens before each, greedy-decode S tokens and
// compare them with the true continuation. Reported per prefix length L, and
// bucketed by how often the prompted prefix + true suffix occurs in the
// corpus (exact counts from a suffix array), since repetition drives
// memorization.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "retriever/token_counts.h"

namespace rag::eval {

struct MemorizationOptions {
  std::vector<int> prefix_lengths = {16, 32, 64};
  int suffix_tokens = 50;
  int samples = 100;
  uint64_t seed = 1;
};

// One document to sample from: its id (for exclusion) and its tokens.
struct TokenizedDocument {
  std::string id;
  std::vector<int32_t> tokens;
};

// Greedy continuation of `prompt` token ids, `max_tokens` of them (no stop
// at end-of-text), never retrieving from document `exclude_doc_id` ("" = no
// exclusion).
using GreedyGenerator = std::function<absl::StatusOr<std::vector<int32_t>>(
    const std::vector<int32_t>& prompt, int max_tokens, const std::string& exclude_doc_id)>;

struct MemorizationTally {
  int64_t samples = 0;
  int64_t exact = 0;           // the whole suffix reproduced
  double token_matches = 0;    // sum over samples of the fraction of suffix positions reproduced
  double exact_rate() const { return samples == 0 ? 0.0 : static_cast<double>(exact) / samples; }
  double token_match() const { return samples == 0 ? 0.0 : token_matches / samples; }
  void Add(bool is_exact, double match) {
    ++samples;
    exact += is_exact;
    token_matches += match;
  }
};

// Buckets of the occurrence count of prefix + suffix: "1", "2-4", "5-15", "16+".
std::string DuplicateBucket(int64_t count);

struct MemorizationReport {
  int64_t samples = 0;  // sequences drawn (each tried at every prefix length)
  // prefix length -> all samples / by duplicate bucket.
  std::map<int, MemorizationTally> by_prefix;
  std::map<int, std::map<std::string, MemorizationTally>> by_prefix_and_duplicates;
};

// Draws options.samples positions (seeded, uniform over the positions of
// `documents` that leave room for the longest prefix and the suffix), then
// for each prefix length asks `generate` for the continuation, excluding the
// sampled document when `exclude_own_document`. `counts` (over the same
// corpus) supplies the duplicate counts. InvalidArgument for bad options or
// when no document is long enough.
absl::StatusOr<MemorizationReport> EvaluateMemorization(const std::vector<TokenizedDocument>& documents,
                                                        const retriever::TokenCounts& counts,
                                                        const GreedyGenerator& generate,
                                                        const MemorizationOptions& options,
                                                        bool exclude_own_document,
                                                        const std::function<void(int64_t done)>& on_sample = nullptr);

}  // namespace rag::eval

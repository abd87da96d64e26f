#include "eval/memorization.h"

#include <algorithm>
#include <random>

#include "common/status.h"

namespace rag::eval {

std::string DuplicateBucket(int64_t count) {
  if (count <= 1) return "1";
  if (count <= 4) return "2-4";
  if (count <= 15) return "5-15";
  return "16+";
}

absl::StatusOr<MemorizationReport> EvaluateMemorization(const std::vector<TokenizedDocument>& documents,
                                                        const retriever::TokenCounts& counts,
                                                        const GreedyGenerator& generate,
                                                        const MemorizationOptions& o, bool exclude_own_document,
                                                        const std::function<void(int64_t)>& on_sample) {
  if (o.prefix_lengths.empty()) return absl::InvalidArgumentError("no prefix lengths");
  for (int l : o.prefix_lengths) {
    if (l < 1) return absl::InvalidArgumentError("prefix lengths must be >= 1, got " + std::to_string(l));
  }
  if (o.suffix_tokens < 1) return absl::InvalidArgumentError("suffix tokens must be >= 1");
  if (o.samples < 1) return absl::InvalidArgumentError("samples must be >= 1");
  const int64_t longest = *std::max_element(o.prefix_lengths.begin(), o.prefix_lengths.end());
  if (longest + o.suffix_tokens > retriever::TokenCounts::kMaxMatch) {
    return absl::InvalidArgumentError("the longest prefix plus the suffix exceeds " +
                                      std::to_string(retriever::TokenCounts::kMaxMatch) + " tokens");
  }
  // Position p of document d is a sample when [p - longest, p + suffix) fits:
  // every prefix length then prompts the same suffix.
  std::vector<int64_t> room;  // cumulative sample positions per document
  int64_t total = 0;
  for (const auto& d : documents) {
    total += std::max<int64_t>(0, static_cast<int64_t>(d.tokens.size()) - longest - o.suffix_tokens + 1);
    room.push_back(total);
  }
  if (total == 0) {
    return absl::InvalidArgumentError("no document has " + std::to_string(longest + o.suffix_tokens) +
                                      " tokens (the longest prefix plus the suffix)");
  }
  std::mt19937_64 rng(o.seed);
  MemorizationReport report;
  for (int s = 0; s < o.samples; ++s) {
    const int64_t r = static_cast<int64_t>(rng() % static_cast<uint64_t>(total));
    const size_t d = static_cast<size_t>(std::upper_bound(room.begin(), room.end(), r) - room.begin());
    const int64_t p = longest + (r - (d == 0 ? 0 : room[d - 1]));  // the suffix starts here
    const auto& tokens = documents[d].tokens;
    const std::vector<int32_t> suffix(tokens.begin() + p, tokens.begin() + p + o.suffix_tokens);
    for (int l : o.prefix_lengths) {
      const std::vector<int32_t> prompt(tokens.begin() + p - l, tokens.begin() + p);
      RAG_ASSIGN_OR_RETURN(std::vector<int32_t> out,
                           generate(prompt, o.suffix_tokens, exclude_own_document ? documents[d].id : ""));
      int64_t same = 0;
      for (int i = 0; i < o.suffix_tokens && i < static_cast<int>(out.size()); ++i) same += out[static_cast<size_t>(i)] == suffix[static_cast<size_t>(i)];
      const bool exact = same == o.suffix_tokens;
      const double match = static_cast<double>(same) / o.suffix_tokens;
      std::vector<int32_t> sequence = prompt;
      sequence.insert(sequence.end(), suffix.begin(), suffix.end());
      RAG_ASSIGN_OR_RETURN(int64_t count, counts.Count(sequence));
      report.by_prefix[l].Add(exact, match);
      report.by_prefix_and_duplicates[l][DuplicateBucket(count)].Add(exact, match);
    }
    ++report.samples;
    if (on_sample) on_sample(report.samples);
  }
  return report;
}

}  // namespace rag::eval

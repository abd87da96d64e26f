// Exact occurrence counts of token sequences in a corpus: a suffix array
// over the tokens of every document (Manber & Myers 1993), as memorization
// studies use to bucket sequences by how often they repeat (Carlini et al.
// 2023; Kandpal et al. 2022). A sequence never matches across a document
// boundary. Counting is two binary searches: O(|q| log N).
//
// On disk (`counts.sa` in an index directory, written by `rag build`):
//   "RAGSA001" | u32 version 1 | u32 max_match | i64 documents | i64 tokens |
//   u64 XXH3 of the payload | payload
// payload = document starts [documents + 1] int64 | tokens [tokens] int32 |
// suffix array [tokens] int32 (positions into tokens).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace rag::retriever {

inline constexpr char kTokenCountsFile[] = "counts.sa";

class TokenCounts {
 public:
  // Suffixes are sorted on their first kMaxMatch tokens: longer queries are
  // refused.
  static constexpr int64_t kMaxMatch = 2048;

  // Builds the suffix array over `documents` (token ids >= 0). InvalidArgument
  // for a negative token id or more than 2^31 - 1 tokens in all.
  // `documents` is taken by value and each is freed once copied in: a
  // builder that moves its documents in holds them once, not twice, at the
  // suffix sort (the peak of `rag build` on Brown, docs/results.md issue 24).
  static absl::StatusOr<TokenCounts> Build(std::vector<std::vector<int32_t>> documents);
  // Reads a file written by Save; DataLoss if it is truncated or corrupt.
  static absl::StatusOr<TokenCounts> Load(const std::string& path);
  // Writes atomically (temporary file, fsync, rename).
  absl::Status Save(const std::string& path) const;

  // Occurrences of `query` in the documents. InvalidArgument for an empty
  // query or one longer than kMaxMatch.
  absl::StatusOr<int64_t> Count(const std::vector<int32_t>& query) const;
  // The documents (indexes into the Build input, ascending, each once) that
  // contain `query`, at most `limit` of them.
  absl::StatusOr<std::vector<int64_t>> Documents(const std::vector<int32_t>& query, int64_t limit) const;

  // What follows `context` (n tokens, 0 <= n < kMaxMatch; n = 0 is every
  // position) inside the documents: each next token with its occurrences,
  // ascending by token. An occurrence that ends its document has no next
  // token and is not counted. O(distinct tokens * log N).
  std::vector<std::pair<int32_t, int64_t>> NextTokenCounts(const int32_t* context, int64_t n) const;
  // What follows `context` in summary, from one range look-up (O(n log N)):
  // the sum of NextTokenCounts' counts, and whether they are one token's.
  struct Followers {
    int64_t total = 0;
    bool one_token = false;
  };
  Followers FollowersOf(const int32_t* context, int64_t n) const;
  int64_t ContinuationCount(const int32_t* context, int64_t n) const { return FollowersOf(context, n).total; }
  bool OneNextToken(const int32_t* context, int64_t n) const { return FollowersOf(context, n).one_token; }
  // Occurrences of tokens[0, n) (n = 0: every position), no checks.
  int64_t CountSpan(const int32_t* tokens, int64_t n) const;

  int64_t documents() const { return static_cast<int64_t>(starts_.size()) - 1; }
  int64_t tokens() const { return static_cast<int64_t>(tokens_.size()); }

 private:
  // [first, last) of the suffix array whose suffixes start with `query`.
  std::pair<int64_t, int64_t> Range(const int32_t* query, int64_t n) const;
  // The part of Range(context, n) whose suffixes go on past the context.
  std::pair<int64_t, int64_t> ContinuationRange(const int32_t* context, int64_t n) const;
  absl::Status CheckQuery(const std::vector<int32_t>& query) const;

  std::vector<int64_t> starts_;  // document d is tokens_[starts_[d], starts_[d + 1])
  std::vector<int32_t> tokens_;
  std::vector<int32_t> suffixes_;
  std::vector<int32_t> ends_;  // per position: the end of its document (matches stop there)
};

class ChunkStore;

// The documents of a chunk store, in insertion order, as the token lists
// TokenCounts::Build takes (their chunks put back together).
absl::StatusOr<std::vector<std::vector<int32_t>>> DocumentTokens(const ChunkStore& store);

// The counts over every document of an index (IndexDir::LoadTokenCounts).
struct IndexTokenCounts {
  TokenCounts counts;
  bool rebuilt = false;      // built afresh rather than loaded
  double build_seconds = 0;  // time the rebuild took (0 when loaded)
};

}  // namespace rag::retriever

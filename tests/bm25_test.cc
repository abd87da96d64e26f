// Okapi BM25 over token ids: scores equal the textbook formula computed by
// brute force, ranking and skipping behave, ids must arrive in order.
#include "retriever/bm25.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <random>
#include <set>

#include "tests/status_matchers.h"

namespace rag::retriever {
namespace {

double BruteForce(const std::vector<std::vector<Token>>& chunks, const std::vector<Token>& query, size_t c) {
  const double n = static_cast<double>(chunks.size());
  double avg = 0;
  for (const auto& ch : chunks) avg += static_cast<double>(ch.size());
  avg /= n;
  double score = 0;
  for (Token t : std::set<Token>(query.begin(), query.end())) {
    double df = 0;
    for (const auto& ch : chunks) df += std::count(ch.begin(), ch.end(), t) > 0;
    const double tf = static_cast<double>(std::count(chunks[c].begin(), chunks[c].end(), t));
    if (df == 0 || tf == 0) continue;
    const double idf = std::log(1 + (n - df + 0.5) / (df + 0.5));
    score += idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * static_cast<double>(chunks[c].size()) / avg));
  }
  return score;
}

TEST(Bm25Test, ScoresEqualTheFormulaAndRankBestFirst) {
  std::mt19937 rng(3);
  std::vector<std::vector<Token>> chunks(60);
  Bm25Index index;
  for (size_t c = 0; c < chunks.size(); ++c) {
    // Zipf-ish: low ids common, high ids rare.
    const int len = 5 + static_cast<int>(rng() % 30);
    for (int i = 0; i < len; ++i) chunks[c].push_back(static_cast<Token>(std::pow(rng() % 1000 / 1000.0, 3) * 200));
    RAG_ASSERT_OK(index.Add(static_cast<ChunkId>(c), static_cast<int64_t>(c / 3), chunks[c]));
  }
  for (int q = 0; q < 20; ++q) {
    std::vector<Token> query(chunks[static_cast<size_t>(q * 3)].begin(), chunks[static_cast<size_t>(q * 3)].begin() + 4);
    query.push_back(query[0]);  // a repeated term counts once
    const auto found = index.Search(query, 10);
    ASSERT_FALSE(found.empty());
    std::vector<std::pair<double, ChunkId>> want;
    for (size_t c = 0; c < chunks.size(); ++c) {
      const double s = BruteForce(chunks, query, c);
      if (s > 0) want.emplace_back(-s, static_cast<ChunkId>(c));
    }
    std::sort(want.begin(), want.end());
    ASSERT_EQ(found.size(), std::min<size_t>(10, want.size()));
    for (size_t i = 0; i < found.size(); ++i) {
      EXPECT_NEAR(found[i].second, -want[i].first, 1e-4) << "query " << q << " rank " << i;
      if (i > 0) {
        EXPECT_GE(found[i - 1].second, found[i].second);
      }
    }
    // Skipping drops exactly the skipped chunks.
    const auto skipped = index.Search(query, 10, [&](ChunkId c) { return index.doc_index(c) == found[0].first / 3; });
    for (const auto& f : skipped) EXPECT_NE(f.first / 3, found[0].first / 3);
  }
  EXPECT_TRUE(index.Search({9999}, 5).empty());  // no shared token: nothing
  EXPECT_EQ(index.Add(100, 0, {1}).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace rag::retriever

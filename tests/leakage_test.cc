// RETRO's leakage filter (a shared run of tokens) against brute force.
#include "retriever/leakage.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <vector>

namespace rag::retriever {
namespace {

using lm::TokenId;

bool BruteForceSharesRun(const std::vector<TokenId>& a, const std::vector<TokenId>& b, int64_t run) {
  for (size_t i = 0; i + run <= a.size(); ++i) {
    for (size_t j = 0; j + run <= b.size(); ++j) {
      if (std::equal(a.begin() + i, a.begin() + i + run, b.begin() + j)) return true;
    }
  }
  return false;
}

TEST(LeakageFilterTest, MatchesBruteForce) {
  std::mt19937 rng(3);
  int shared = 0;
  for (int trial = 0; trial < 400; ++trial) {
    const int vocab = 2 + trial % 3;  // tiny vocabularies make long shared runs common
    std::vector<TokenId> a(rng() % 40), b(rng() % 40);
    for (auto& t : a) t = static_cast<TokenId>(rng() % vocab);
    for (auto& t : b) t = static_cast<TokenId>(rng() % vocab);
    const int64_t run = 1 + rng() % 8;
    const bool want = BruteForceSharesRun(a, b, run);
    shared += want;
    ASSERT_EQ(SharesTokenRun(a, b, run), want) << "trial " << trial;
  }
  EXPECT_GT(shared, 50);
  EXPECT_LT(shared, 350);
}

TEST(LongestCommonRunTest, MatchesBruteForce) {
  std::mt19937 rng(5);
  int64_t longest = 0;
  for (int trial = 0; trial < 300; ++trial) {
    const int vocab = 2 + trial % 4;
    std::vector<TokenId> a(rng() % 30), b(rng() % 30);
    for (auto& t : a) t = static_cast<TokenId>(rng() % vocab);
    for (auto& t : b) t = static_cast<TokenId>(rng() % vocab);
    int64_t want = 0;  // the longest run both hold, by the definition
    for (int64_t run = 1; run <= static_cast<int64_t>(std::min(a.size(), b.size())); ++run) {
      if (BruteForceSharesRun(a, b, run)) want = run;
    }
    longest = std::max(longest, want);
    ASSERT_EQ(LongestCommonRun(a.data(), static_cast<int64_t>(a.size()), b.data(), static_cast<int64_t>(b.size())),
              want)
        << "trial " << trial;
  }
  EXPECT_GT(longest, 8);
  const std::vector<TokenId> x = {1, 2, 3};
  EXPECT_EQ(LongestCommonRun(x.data(), 3, nullptr, 0), 0);
}

TEST(LeakageFilterTest, RunLengthBoundary) {
  std::vector<TokenId> chunk(64), neighbour(128);
  for (int i = 0; i < 64; ++i) chunk[i] = 1000 + i;
  for (int i = 0; i < 128; ++i) neighbour[i] = 5000 + i;
  // 31 tokens of the chunk inside the neighbour: kept at 32, dropped at 31.
  std::copy(chunk.begin() + 10, chunk.begin() + 41, neighbour.begin() + 70);
  EXPECT_FALSE(SharesTokenRun(chunk, neighbour, 32));
  EXPECT_TRUE(SharesTokenRun(chunk, neighbour, 31));
  neighbour[101] = chunk[41];  // now 32
  EXPECT_TRUE(SharesTokenRun(chunk, neighbour, 32));
  EXPECT_FALSE(SharesTokenRun(chunk, neighbour, 0));
  EXPECT_FALSE(SharesTokenRun({}, neighbour, 1));
}

}  // namespace
}  // namespace rag::retriever

// The ∞-gram estimate (retriever/infgram.h) and the suffix-array queries it
// rests on, against a brute force written from the paper's definition:
// scan every position of every document.
#include "retriever/infgram.h"

#include <gtest/gtest.h>

#include <map>
#include <random>


namespace rag::retriever {
namespace {

using Docs = std::vector<std::vector<int32_t>>;
using Followers = std::map<int32_t, int64_t>;

// What follows ctx[end - n, end) inside the documents, skipping document
// `skip` (-1: none).
Followers FollowersBruteForce(const Docs& docs, const std::vector<int32_t>& ctx, size_t end,
                                               size_t n, int skip) {
  Followers out;
  for (size_t d = 0; d < docs.size(); ++d) {
    if (static_cast<int>(d) == skip) continue;
    const auto& doc = docs[d];
    for (size_t p = 0; p + n < doc.size(); ++p) {
      if (std::equal(ctx.begin() + static_cast<int64_t>(end - n), ctx.begin() + static_cast<int64_t>(end),
                     doc.begin() + static_cast<int64_t>(p))) {
        ++out[doc[p + n]];
      }
    }
  }
  return out;
}

// The paper's estimate after ctx[0, end): the longest suffix with followers.
std::pair<size_t, Followers> InfgramBruteForce(const Docs& docs, const std::vector<int32_t>& ctx,
                                                               size_t end, int skip) {
  for (size_t n = end + 1; n-- > 0;) {
    auto f = FollowersBruteForce(docs, ctx, end, n, skip);
    if (!f.empty() || n == 0) return {n, f};
  }
  return {0, {}};
}

// A small alphabet (short contexts repeat, with several followers) and a
// planted passage in several documents (long matches, sparse estimates).
Docs Corpus(uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> planted(30);
  for (auto& t : planted) t = static_cast<int32_t>(10 + rng() % 40);
  Docs docs;
  for (int d = 0; d < 12; ++d) {
    std::vector<int32_t> doc(static_cast<size_t>(rng() % 120));
    for (auto& t : doc) t = static_cast<int32_t>(rng() % 5);
    if (d % 3 == 0) doc.insert(doc.begin() + static_cast<int64_t>(doc.size() / 2), planted.begin(), planted.end());
    docs.push_back(doc);
  }
  docs.push_back({});
  docs.push_back(planted);
  return docs;
}

TEST(TokenCountsTest, FollowersMatchBruteForce) {
  const Docs docs = Corpus(1);
  auto counts_or = TokenCounts::Build(docs);
  ASSERT_TRUE(counts_or.ok()) << counts_or.status();
  const TokenCounts& counts = *counts_or;
  std::mt19937_64 rng(2);
  int sparse_seen = 0, dense_seen = 0;
  for (int trial = 0; trial < 400; ++trial) {
    // Contexts cut from the corpus (they occur) and random ones (often not).
    std::vector<int32_t> ctx;
    const auto& src = docs[rng() % docs.size()];
    const size_t n = rng() % 6;
    if (trial % 2 == 0 && src.size() >= n) {
      const size_t at = rng() % (src.size() - n + 1);
      ctx.assign(src.begin() + static_cast<int64_t>(at), src.begin() + static_cast<int64_t>(at + n));
    } else {
      for (size_t i = 0; i < n; ++i) ctx.push_back(static_cast<int32_t>(rng() % 7));
    }
    const auto want = FollowersBruteForce(docs, ctx, ctx.size(), ctx.size(), -1);
    const auto got = counts.NextTokenCounts(ctx.data(), static_cast<int64_t>(ctx.size()));
    ASSERT_EQ(Followers(got.begin(), got.end()), want) << "context of " << n;
    int64_t total = 0;
    for (const auto& [t, c] : want) total += c;
    EXPECT_EQ(counts.ContinuationCount(ctx.data(), static_cast<int64_t>(ctx.size())), total);
    EXPECT_EQ(counts.OneNextToken(ctx.data(), static_cast<int64_t>(ctx.size())), want.size() == 1);
    sparse_seen += want.size() == 1;
    dense_seen += want.size() > 1;
  }
  // Both kinds of estimate were checked.
  EXPECT_GT(sparse_seen, 10);
  EXPECT_GT(dense_seen, 10);
}

TEST(InfgramTest, ScoreAndNextMatchBruteForce) {
  const Docs docs = Corpus(3);
  auto counts_or = TokenCounts::Build(docs);
  ASSERT_TRUE(counts_or.ok()) << counts_or.status();
  const TokenCounts& counts = *counts_or;
  std::mt19937_64 rng(4);
  for (int skip : {-1, 0, 3}) {
    std::unique_ptr<TokenCounts> excluded;
    if (skip >= 0) {
      auto own = TokenCounts::Build({docs[static_cast<size_t>(skip)]});
      ASSERT_TRUE(own.ok()) << own.status();
      excluded = std::make_unique<TokenCounts>(std::move(*own));
    }
    const Infgram infgram(&counts, excluded.get());
    // Texts: a document itself (long matches; with itself excluded, only
    // what other documents share), and random text.
    std::vector<std::vector<int32_t>> texts = {docs[0], docs[3], docs[5]};
    texts.emplace_back();
    for (int i = 0; i < 60; ++i) texts.back().push_back(static_cast<int32_t>(rng() % 6));
    int64_t longest = 0;
    for (const auto& text : texts) {
      const auto points = infgram.Score(text);
      ASSERT_EQ(points.size(), text.size());
      for (size_t i = 0; i < text.size(); ++i) {
        const auto [n, followers] = InfgramBruteForce(docs, text, i, skip);
        int64_t total = 0;
        for (const auto& [t, c] : followers) total += c;
        const auto it = followers.find(text[i]);
        SCOPED_TRACE("skip " + std::to_string(skip) + " position " + std::to_string(i));
        EXPECT_EQ(points[i].suffix_tokens, static_cast<int64_t>(n));
        EXPECT_EQ(points[i].total, total);
        EXPECT_EQ(points[i].count, it == followers.end() ? 0 : it->second);
        EXPECT_EQ(points[i].sparse, followers.size() == 1);
        longest = std::max(longest, points[i].suffix_tokens);
        const std::vector<int32_t> ctx(text.begin(), text.begin() + static_cast<int64_t>(i));
        const InfgramDistribution d = infgram.Next(ctx);
        EXPECT_EQ(d.suffix_tokens, static_cast<int64_t>(n));
        EXPECT_EQ(Followers(d.counts.begin(), d.counts.end()), followers);
        EXPECT_EQ(d.total, total);
      }
    }
    // The planted passage gave long suffixes (more than the random text's).
    EXPECT_GT(longest, 20);
  }
}

TEST(InfgramTest, EmptyCorpusGivesNoEstimate) {
  auto counts_or = TokenCounts::Build({});
  ASSERT_TRUE(counts_or.ok()) << counts_or.status();
  const TokenCounts& counts = *counts_or;
  const Infgram infgram(&counts, nullptr);
  const auto points = infgram.Score({1, 2, 3});
  for (const auto& p : points) {
    EXPECT_EQ(p.total, 0);
    EXPECT_EQ(p.suffix_tokens, 0);
    EXPECT_FALSE(p.sparse);
  }
  EXPECT_EQ(infgram.Next({1, 2}).total, 0);
  EXPECT_TRUE(infgram.Next({}).counts.empty());
}

}  // namespace
}  // namespace rag::retriever

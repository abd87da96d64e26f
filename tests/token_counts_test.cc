#include "retriever/token_counts.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "tests/status_matchers.h"
#include "tests/test_util.h"

namespace rag::retriever {
namespace {

// Occurrences of q in the documents, by looking at every position.
int64_t BruteForce(const std::vector<std::vector<int32_t>>& docs, const std::vector<int32_t>& q) {
  int64_t n = 0;
  for (const auto& d : docs) {
    for (size_t p = 0; p + q.size() <= d.size(); ++p) n += std::equal(q.begin(), q.end(), d.begin() + static_cast<int64_t>(p));
  }
  return n;
}

// A seeded corpus over a small alphabet (so short sequences repeat often),
// with a planted passage repeated in several documents.
std::vector<std::vector<int32_t>> Corpus(uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> planted(40);
  for (auto& t : planted) t = static_cast<int32_t>(rng() % 50);
  std::vector<std::vector<int32_t>> docs;
  for (int d = 0; d < 30; ++d) {
    std::vector<int32_t> doc(static_cast<size_t>(rng() % 300));
    for (auto& t : doc) t = static_cast<int32_t>(rng() % 6);
    if (d % 4 == 0) doc.insert(doc.begin() + static_cast<int64_t>(doc.size() / 2), planted.begin(), planted.end());
    docs.push_back(doc);
  }
  docs.push_back({});  // an empty document changes nothing
  docs.push_back(planted);
  return docs;
}

TEST(TokenCountsTest, CountsEqualABruteForceCount) {
  const auto docs = Corpus(7);
  auto counts = TokenCounts::Build(docs);
  RAG_ASSERT_OK(counts.status());
  int64_t total = 0;
  for (const auto& d : docs) total += static_cast<int64_t>(d.size());
  EXPECT_EQ(counts->tokens(), total);
  EXPECT_EQ(counts->documents(), static_cast<int64_t>(docs.size()));
  std::mt19937_64 rng(11);
  int checked_repeats = 0;
  for (int i = 0; i < 400; ++i) {
    // Queries cut from the corpus (counts >= 1) and random ones (often 0).
    std::vector<int32_t> q;
    const size_t len = 1 + rng() % 12;
    const auto& d = docs[rng() % docs.size()];
    if (i % 2 == 0 && d.size() >= len) {
      const size_t at = rng() % (d.size() - len + 1);
      q.assign(d.begin() + static_cast<int64_t>(at), d.begin() + static_cast<int64_t>(at + len));
    } else {
      for (size_t j = 0; j < len; ++j) q.push_back(static_cast<int32_t>(rng() % 7));
    }
    auto n = counts->Count(q);
    RAG_ASSERT_OK(n.status());
    ASSERT_EQ(*n, BruteForce(docs, q)) << "query of " << q.size() << " tokens";
    checked_repeats += *n > 1;
  }
  EXPECT_GT(checked_repeats, 50);
  // The planted passage: in 8 documents plus its own, never across a boundary.
  const std::vector<int32_t> planted = docs.back();
  EXPECT_EQ(*counts->Count(planted), 9);
  auto where = counts->Documents(planted, 100);
  RAG_ASSERT_OK(where.status());
  EXPECT_EQ(*where, (std::vector<int64_t>{0, 4, 8, 12, 16, 20, 24, 28, 31}));
  EXPECT_EQ(counts->Documents(planted, 2)->size(), 2u);
  // The last token of one document and the first of the next never match.
  std::vector<int32_t> across = {docs[0].back(), docs[1].front()};
  EXPECT_EQ(*counts->Count(across), BruteForce(docs, across));

  EXPECT_EQ(counts->Count({}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(counts->Count(std::vector<int32_t>(TokenCounts::kMaxMatch + 1, 1)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(TokenCounts::Build({{1, -2}}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(TokenCountsTest, SaveLoadRoundTripsAndCorruptionIsDataLoss) {
  const auto docs = Corpus(3);
  auto counts = TokenCounts::Build(docs);
  RAG_ASSERT_OK(counts.status());
  testing::TempDir dir;
  const std::string path = dir.path() + "/" + kTokenCountsFile;
  RAG_ASSERT_OK(counts->Save(path));
  auto loaded = TokenCounts::Load(path);
  RAG_ASSERT_OK(loaded.status());
  for (const auto& q : std::vector<std::vector<int32_t>>{{1}, {2, 3}, docs.back(), {5, 5, 5}}) {
    EXPECT_EQ(*loaded->Count(q), *counts->Count(q));
  }
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  auto write = [&](const std::string& b) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(b.data(), static_cast<std::streamsize>(b.size()));
  };
  std::string flipped = bytes;
  flipped[bytes.size() / 2] ^= 0x01;
  write(flipped);
  EXPECT_EQ(TokenCounts::Load(path).status().code(), absl::StatusCode::kDataLoss);
  write(bytes.substr(0, bytes.size() - 5));
  EXPECT_EQ(TokenCounts::Load(path).status().code(), absl::StatusCode::kDataLoss);
  write("not a count index");
  EXPECT_EQ(TokenCounts::Load(path).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(TokenCounts::Load(dir.path() + "/missing").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace rag::retriever

#include "eval/extraction.h"

namespace rag::eval {
namespace {

TEST(ExtractionTest, LongestVerbatimRunEqualsABruteForceSearch) {
  const std::vector<std::vector<int32_t>> docs = {{1, 2, 3, 4, 5, 6}, {7, 8, 9}, {2, 3, 4, 9, 9}};
  auto counts = retriever::TokenCounts::Build(docs);
  RAG_ASSERT_OK(counts.status());
  auto brute = [&](const std::vector<int32_t>& t) {
    int64_t best = 0;
    for (size_t i = 0; i < t.size(); ++i) {
      for (size_t j = i + 1; j <= t.size(); ++j) {
        std::vector<int32_t> q(t.begin() + static_cast<int64_t>(i), t.begin() + static_cast<int64_t>(j));
        if (*counts->Count(q) > 0) best = std::max<int64_t>(best, static_cast<int64_t>(j - i));
      }
    }
    return best;
  };
  std::mt19937_64 rng(5);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<int32_t> t(1 + rng() % 12);
    for (auto& x : t) x = static_cast<int32_t>(1 + rng() % 9);
    auto run = LongestVerbatimRun(t, *counts);
    RAG_ASSERT_OK(run.status());
    ASSERT_EQ(*run, brute(t));
  }
  EXPECT_EQ(*LongestVerbatimRun({0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, *counts), 6);  // never across documents
  EXPECT_EQ(*LongestVerbatimRun({}, *counts), 0);
  // zlib: repetitive text compresses far better than varied text.
  EXPECT_LT(ZlibBits(std::string(400, 'a')), ZlibBits("the quick brown fox jumps over the lazy dog, then sleeps") );
}

}  // namespace
}  // namespace rag::eval

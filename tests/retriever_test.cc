// Tests for retriever::Retriever's canonical top-k (retriever/topk.h):
// chunks at equal distance are ordered by (doc_id, offset) and a tie at the
// k-th place is fetched whole, so dense and BM25 searches return the same
// list whatever order the documents were added in (and N shards merged by
// the same order return one index's list).
#include "retriever/retriever.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "index_builder/index_builder.h"
#include "lm/embedder.h"
#include "lm/language_model.h"
#include "tests/lm_test_util.h"
#include "tests/status_matchers.h"
#include "tests/test_util.h"

namespace rag::retriever {
namespace {

constexpr int kCopies = 5;
constexpr int kChunkTokens = 16;

class RetrieverTiesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    docs_ = testing::MakeCorpus(12, 31, 12);
    model_ = testing::MakeTinyLanguageModelFor(docs_, 5);
    embedder_ = lm::MakeLmEmbedder(model_.get());
    // One chunk's worth of tokens from the top of the vocabulary (merges
    // the corpus rarely uses), so the copies are nearer the query than any
    // corpus chunk.
    for (int i = 0; i < kChunkTokens; ++i) copy_.push_back(static_cast<Token>(model_->tokenizer().vocab_size() - 2 - i));
  }

  // Builds index `name` from the corpus, then adds kCopies documents
  // "dup-<i>", each exactly `copy_` (one chunk), in the order `order` gives,
  // each through its own AddDocument: a document of one chunk is embedded
  // alone, so the copies get bit-identical vectors and tie exactly.
  std::unique_ptr<Retriever> BuildWithCopies(const std::string& name, const std::vector<int>& order) {
    index_builder::BuildOptions o;
    o.out_dir = dir_ / name;
    o.index_factory = "Flat";
    o.chunk_tokens = kChunkTokens;
    o.continuation_tokens = kChunkTokens;
    o.embed_batch = 8;
    o.show_progress = false;
    auto m = index_builder::BuildIndex(docs_, model_->tokenizer(), *embedder_, model_->content_hash(), o);
    EXPECT_TRUE(m.ok()) << m.status();
    if (!m.ok()) return nullptr;
    auto r = Retriever::Open(dir_ / name, embedder_.get(), model_->content_hash(), model_->tokenizer().Hash(),
                             /*writable=*/true);
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok()) return nullptr;
    for (int i : order) {
      auto ids = (*r)->AddDocument("dup-" + std::to_string(i), copy_);
      EXPECT_TRUE(ids.ok()) << ids.status();
      if (ids.ok()) {
        EXPECT_EQ(ids->size(), 1u);
      }
    }
    return std::move(r).value();
  }

  testing::TempDir dir_;
  std::vector<Document> docs_;
  std::unique_ptr<lm::LanguageModel> model_;
  std::unique_ptr<lm::Embedder> embedder_;
  std::vector<Token> copy_;
};

std::vector<std::string> DocIds(const std::vector<Neighbour>& row) {
  std::vector<std::string> ids;
  for (const Neighbour& n : row) ids.push_back(n.doc_id);
  return ids;
}

// k = 3 of five exact ties: the three with the smallest doc ids, in both
// insertion orders. Added last-name first ("dup-4" has the lowest chunk id),
// the first fetch (k = 3; FAISS and BM25 break ties by id) holds dup-4,
// dup-3 and dup-2 only, so the answer needs the tie-completing fetch.
TEST_F(RetrieverTiesTest, TieAtTheKthPlaceKeepsTheSmallestDocIdsWhateverTheInsertionOrder) {
  std::unique_ptr<Retriever> forward = BuildWithCopies("forward", {0, 1, 2, 3, 4});
  std::unique_ptr<Retriever> backward = BuildWithCopies("backward", {4, 3, 2, 1, 0});
  ASSERT_NE(forward, nullptr);
  ASSERT_NE(backward, nullptr);
  for (const char* method : {"dense", "bm25"}) {
    SearchOptions so;
    so.k = 3;
    so.method = method;
    std::vector<std::vector<Neighbour>> got[2];
    int i = 0;
    for (Retriever* r : {forward.get(), backward.get()}) {
      auto found = r->Search({copy_}, so);
      RAG_ASSERT_OK(found.status());
      ASSERT_EQ(found->size(), 1u);
      got[i++] = std::move(found).value();
    }
    for (const auto& result : got) {
      const std::vector<Neighbour>& row = result[0];
      EXPECT_EQ(DocIds(row), (std::vector<std::string>{"dup-0", "dup-1", "dup-2"})) << method;
      for (const Neighbour& n : row) {
        EXPECT_EQ(n.distance, row[0].distance) << method;
        EXPECT_EQ(n.offset, 0);
        EXPECT_EQ(n.tokens, copy_);
      }
    }
    // Same neighbours (doc id, offset, distance, tokens) from both indexes,
    // though their chunk ids differ.
    ASSERT_EQ(got[0][0].size(), got[1][0].size());
    for (size_t j = 0; j < got[0][0].size(); ++j) {
      EXPECT_EQ(got[0][0][j].doc_id, got[1][0][j].doc_id);
      EXPECT_EQ(got[0][0][j].offset, got[1][0][j].offset);
      EXPECT_EQ(got[0][0][j].distance, got[1][0][j].distance);
      EXPECT_EQ(got[0][0][j].tokens, got[1][0][j].tokens);
    }
    // Excluding dup-0 moves the cut one further (over-retrieval and the tie
    // rule together).
    so.exclude_doc_ids = {"dup-0"};
    for (Retriever* r : {forward.get(), backward.get()}) {
      auto found = r->Search({copy_}, so);
      RAG_ASSERT_OK(found.status());
      EXPECT_EQ(DocIds((*found)[0]), (std::vector<std::string>{"dup-1", "dup-2", "dup-3"})) << method;
    }
  }
}

// Several queries at once: the second fetch searches again only the query
// whose tie is open, and every query gets its own canonical answer.
TEST_F(RetrieverTiesTest, OnlyTheQueryWithAnOpenTieIsSearchedAgain) {
  std::unique_ptr<Retriever> r = BuildWithCopies("idx", {4, 3, 2, 1, 0});
  ASSERT_NE(r, nullptr);
  auto doc = r->chunk_store().GetDocument(docs_[3].id);
  RAG_ASSERT_OK(doc.status());
  const std::vector<Token> other(doc->tokens.begin(), doc->tokens.begin() + kChunkTokens);
  SearchOptions so;
  so.k = 4;
  auto together = r->Search({other, copy_, other}, so);
  RAG_ASSERT_OK(together.status());
  ASSERT_EQ(together->size(), 3u);
  EXPECT_EQ(DocIds((*together)[1]), (std::vector<std::string>{"dup-0", "dup-1", "dup-2", "dup-3"}));
  for (size_t q : {0u, 2u}) {
    ASSERT_EQ((*together)[q].size(), 4u);
    EXPECT_EQ((*together)[q][0].doc_id, docs_[3].id) << "the query's own chunk comes first";
    for (const Neighbour& n : (*together)[q]) EXPECT_EQ(n.doc_id.rfind("dup-", 0), std::string::npos);
  }
}

}  // namespace
}  // namespace rag::retriever

// retriever::BuildNeighbourSets, the one RETRO neighbour-set builder, over a
// real (Flat, so exact) index holding a verbatim copy of one document: sets
// padded to K x R with a mask, the over-fetch rule making up for what the
// leakage filter drops, excluded documents never in a set, alignment, the
// query forms (tokens or precomputed vectors, batched or not) and bad input.
#include "retriever/neighbour_set.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <set>

#include "common/file_util.h"
#include "index_builder/index_builder.h"
#include "lm/embedder.h"
#include "tests/lm_test_util.h"
#include "tests/status_matchers.h"
#include "tests/test_util.h"

namespace rag::retriever {
namespace {

namespace fs = std::filesystem;

// The stored layout of `nb` in R tokens: chunk, continuation, then `pad`.
std::vector<Token> Stored(const Neighbour& nb, int64_t r, Token pad) {
  std::vector<Token> out(nb.tokens.begin(), nb.tokens.end());
  out.insert(out.end(), nb.continuation.begin(), nb.continuation.end());
  out.resize(static_cast<size_t>(r), pad);
  return out;
}

std::vector<Token> Slot(const NeighbourSet& set, int64_t j, int64_t r) {
  return std::vector<Token>(set.tokens.begin() + j * r, set.tokens.begin() + (j + 1) * r);
}

Neighbour Candidate(ChunkId id, const std::string& doc, std::vector<Token> tokens, std::vector<Token> continuation) {
  return Neighbour{id, doc, 0, std::move(tokens), std::move(continuation), 0.0f};
}

TEST(NeighbourSetTest, CandidatesToFetchIsTheOverFetchRule) {
  NeighbourSetOptions o;
  o.k = 3;
  EXPECT_EQ(CandidatesToFetch(o), 3);  // filter off: exactly K
  o.extra_candidates = 2;
  EXPECT_EQ(CandidatesToFetch(o), 3);  // spares only with the filter on
  o.leakage_filter = 8;
  EXPECT_EQ(CandidatesToFetch(o), kLeakageOverFetch * 3 + 2);
  o.extra_candidates = 0;
  EXPECT_EQ(CandidatesToFetch(o), kLeakageOverFetch * 3);
}

TEST(NeighbourSetTest, CandidatesArePaddedToKByRWithAMask) {
  NeighbourSetOptions o;
  o.k = 3;
  o.tokens = 6;
  o.pad = -7;
  const std::vector<Neighbour> candidates = {Candidate(4, "a", {1, 2, 3}, {4}),
                                             Candidate(9, "b", {5, 6, 7, 8}, {9, 10, 11, 12})};
  const NeighbourSet set = NeighbourSetFromCandidates(candidates, {1}, {}, o);
  ASSERT_EQ(set.tokens.size(), 18u);
  EXPECT_EQ(Slot(set, 0, 6), (std::vector<Token>{1, 2, 3, 4, -7, -7}));  // short: padded on the right
  EXPECT_EQ(Slot(set, 1, 6), (std::vector<Token>{5, 6, 7, 8, 9, 10}));   // long: cut at R
  EXPECT_EQ(Slot(set, 2, 6), std::vector<Token>(6, -7));                 // missing: all pad
  EXPECT_EQ(set.present, (std::vector<uint8_t>{1, 1, 0}));
  EXPECT_EQ(set.chunk_ids, (std::vector<ChunkId>{4, 9, -1}));
  EXPECT_EQ(set.filtered, 0);

  const NeighbourSet empty = EmptyNeighbourSet(o);
  EXPECT_EQ(empty.tokens, std::vector<Token>(18, -7));
  EXPECT_EQ(empty.present, std::vector<uint8_t>(3, 0));
  EXPECT_EQ(empty.chunk_ids, std::vector<ChunkId>(3, -1));
}

TEST(NeighbourSetTest, CandidatesSkipExcludedDocumentsAndCountOnlyTheLeaksTheyVisit) {
  NeighbourSetOptions o;
  o.k = 2;
  o.tokens = 4;
  o.leakage_filter = 3;
  o.exclude_doc_ids = {"own"};
  const std::vector<Token> target = {20, 21, 22, 23};
  const std::vector<Neighbour> candidates = {
      Candidate(0, "own", {1, 2}, {3}),          // excluded: skipped, not counted
      Candidate(1, "a", {20, 21}, {22}),         // shares 20 21 22 with the target: filtered
      Candidate(2, "b", {5, 6}, {7}),            // kept
      Candidate(3, "c", {9, 20}, {21, 22, 30}),  // leaks from its continuation on: filtered
      Candidate(4, "d", {8, 9}, {10}),           // kept: K reached
      Candidate(5, "e", {21, 22}, {23}),         // never visited, so not counted
  };
  const NeighbourSet set = NeighbourSetFromCandidates(candidates, {}, target, o);
  EXPECT_EQ(set.chunk_ids, (std::vector<ChunkId>{2, 4}));
  EXPECT_EQ(set.filtered, 2);
  // No target (the query's chunk is the last): nothing leaks.
  const NeighbourSet last = NeighbourSetFromCandidates(candidates, {}, {}, o);
  EXPECT_EQ(last.chunk_ids, (std::vector<ChunkId>{1, 2}));
  EXPECT_EQ(last.filtered, 0);
  // Filter off: the nearest eligible ones, whatever they share.
  o.leakage_filter = 0;
  EXPECT_EQ(NeighbourSetFromCandidates(candidates, {}, target, o).chunk_ids, (std::vector<ChunkId>{1, 2}));
}

TEST(NeighbourSetTest, AlignedCandidatesAreRecutOnTheirQuery) {
  NeighbourSetOptions o;
  o.k = 1;
  o.tokens = 8;
  o.align = 2;
  o.chunk = 4;
  const Neighbour nb = Candidate(0, "a", {10, 11, 12, 13, 14, 15}, {16, 17, 18});
  const std::vector<Token> query = {99, 11, 12};
  std::vector<Token> want(8);
  ASSERT_EQ(AlignNeighbourTokens(nb, query, 2, 4, 8, 0, want.data()), 2);
  EXPECT_EQ(NeighbourSetFromCandidates({nb}, query, {}, o).tokens, want);
  o.align = 0;  // the stored layout
  EXPECT_EQ(NeighbourSetFromCandidates({nb}, query, {}, o).tokens, Stored(nb, 8, 0));
}

class NeighbourSetIndexTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir();
    docs_ = new std::vector<Document>(testing::MakeCorpus(5, 21, 6));
    // A verbatim copy under another id: what the leakage filter must catch.
    docs_->push_back({"copy-of-1", (*docs_)[1].text});
    model_ = testing::MakeTinyLanguageModelFor(*docs_, 5).release();
    embedder_ = lm::MakeLmEmbedder(model_).release();
    index_builder::BuildOptions o;
    o.out_dir = Path("index");
    o.index_factory = "Flat";
    o.chunk_tokens = 16;
    o.continuation_tokens = 16;
    o.show_progress = false;
    RAG_ASSERT_OK(index_builder::BuildIndex(*docs_, model_->tokenizer(), *embedder_, model_->content_hash(), o).status());
  }
  static void TearDownTestSuite() {
    delete embedder_;
    delete model_;
    delete docs_;
    delete dir_;
  }
  static std::string Path(const std::string& name) { return (fs::path(dir_->path()) / name).string(); }

  void SetUp() override {
    auto r = Retriever::Open(Path("index"), embedder_, model_->content_hash(), model_->tokenizer().Hash());
    RAG_ASSERT_OK(r.status());
    retriever_ = std::move(*r);
    RAG_ASSERT_OK(retriever_->chunk_store()
                      .ForEachChunk(0,
                                    [&](const ChunkRecord& c) {
                                      chunks_.push_back(c);
                                      return true;
                                    }));
  }
  // The chunks of document `id`, in order.
  std::vector<ChunkRecord> ChunksOf(const std::string& id) const {
    std::vector<ChunkRecord> out;
    for (const auto& c : chunks_) {
      if (c.doc_id == id) out.push_back(c);
    }
    return out;
  }
  NeighbourSetOptions Options() const {
    NeighbourSetOptions o;
    o.k = 2;
    o.tokens = 24;
    o.pad = static_cast<Token>(model_->tokenizer().eot_id());
    return o;
  }

  static testing::TempDir* dir_;
  static std::vector<Document>* docs_;
  static lm::LanguageModel* model_;
  static lm::Embedder* embedder_;
  std::unique_ptr<Retriever> retriever_;
  std::vector<ChunkRecord> chunks_;  // every chunk, in id order
};

testing::TempDir* NeighbourSetIndexTest::dir_ = nullptr;
std::vector<Document>* NeighbourSetIndexTest::docs_ = nullptr;
lm::LanguageModel* NeighbourSetIndexTest::model_ = nullptr;
lm::Embedder* NeighbourSetIndexTest::embedder_ = nullptr;

TEST_F(NeighbourSetIndexTest, SetsHoldTheSearchsNearestChunksOfOtherDocumentsInTheStoredLayout) {
  const std::string own = (*docs_)[0].id;
  NeighbourSetOptions o = Options();
  o.exclude_doc_ids = {own};
  NeighbourQueries q;
  for (const auto& c : ChunksOf(own)) q.tokens.push_back(c.tokens);
  ASSERT_GE(q.tokens.size(), 2u);
  auto sets = BuildNeighbourSets(*retriever_, q, o);
  RAG_ASSERT_OK(sets.status());
  SearchOptions so;
  so.k = 2;
  so.exclude_doc_ids = {own};
  auto found = retriever_->Search(q.tokens, so);
  RAG_ASSERT_OK(found.status());
  ASSERT_EQ(sets->size(), q.tokens.size());
  for (size_t i = 0; i < sets->size(); ++i) {
    const NeighbourSet& set = (*sets)[i];
    ASSERT_EQ((*found)[i].size(), 2u);
    EXPECT_EQ(set.present, (std::vector<uint8_t>{1, 1}));
    EXPECT_EQ(set.filtered, 0);
    for (int64_t j = 0; j < 2; ++j) {
      const Neighbour& nb = (*found)[i][static_cast<size_t>(j)];
      EXPECT_EQ(set.chunk_ids[static_cast<size_t>(j)], nb.chunk_id);
      EXPECT_NE(chunks_[static_cast<size_t>(nb.chunk_id)].doc_id, own);
      EXPECT_EQ(Slot(set, j, 24), Stored(nb, 24, o.pad));
    }
  }
}

TEST_F(NeighbourSetIndexTest, ExcludedDocumentsAreNeverInASetAndTheRestIsPadded) {
  // Every document but one excluded, and K above its chunk count: its
  // chunks, then missing neighbours (pad, absent, id -1).
  const std::string kept = (*docs_)[2].id;
  const std::vector<ChunkRecord> eligible = ChunksOf(kept);
  NeighbourSetOptions o = Options();
  o.k = static_cast<int>(eligible.size()) + 2;
  for (const auto& d : *docs_) {
    if (d.id != kept) o.exclude_doc_ids.push_back(d.id);
  }
  NeighbourQueries q;
  for (const auto& c : ChunksOf((*docs_)[3].id)) q.tokens.push_back(c.tokens);
  auto sets = BuildNeighbourSets(*retriever_, q, o);
  RAG_ASSERT_OK(sets.status());
  ASSERT_EQ(sets->size(), q.tokens.size());
  std::set<ChunkId> want;
  for (const auto& c : eligible) want.insert(c.id);
  for (const NeighbourSet& set : *sets) {
    ASSERT_EQ(set.tokens.size(), static_cast<size_t>(o.k) * 24);
    std::set<ChunkId> got;
    for (size_t j = 0; j < eligible.size(); ++j) {
      EXPECT_EQ(set.present[j], 1);
      got.insert(set.chunk_ids[j]);
    }
    EXPECT_EQ(got, want);
    for (size_t j = eligible.size(); j < static_cast<size_t>(o.k); ++j) {
      EXPECT_EQ(set.present[j], 0);
      EXPECT_EQ(set.chunk_ids[j], -1);
      EXPECT_EQ(Slot(set, static_cast<int64_t>(j), 24), std::vector<Token>(24, o.pad));
    }
  }
  // The same exclusion applied to candidates that were not searched.
  std::vector<Neighbour> all;
  for (const auto& c : chunks_) all.push_back(Candidate(c.id, c.doc_id, c.tokens, c.continuation));
  const NeighbourSet drawn = NeighbourSetFromCandidates(all, q.tokens[0], {}, o);
  for (size_t j = 0; j < eligible.size(); ++j) EXPECT_EQ(drawn.chunk_ids[j], eligible[j].id);
  EXPECT_EQ(drawn.filtered, 0);
}

TEST_F(NeighbourSetIndexTest, TheLeakageFilterDropsTheCopyAndTheOverFetchKeepsKNeighbours) {
  // Document 1's chunks as queries, its own document excluded, each set
  // helping predict the next chunk: the copy's chunk is the nearest and its
  // continuation is the target.
  const std::string doc = (*docs_)[1].id;
  const std::vector<ChunkRecord> chunks = ChunksOf(doc);
  ASSERT_GE(chunks.size(), 3u);
  NeighbourSetOptions o = Options();
  o.exclude_doc_ids = {doc};
  NeighbourQueries q;
  for (size_t i = 0; i + 1 < chunks.size(); ++i) {
    q.tokens.push_back(chunks[i].tokens);
    q.targets.push_back(chunks[i + 1].tokens);
  }
  auto unfiltered = BuildNeighbourSets(*retriever_, q, o);
  RAG_ASSERT_OK(unfiltered.status());
  EXPECT_EQ((*unfiltered)[0].filtered, 0);
  EXPECT_EQ(chunks_[static_cast<size_t>((*unfiltered)[0].chunk_ids[0])].doc_id, "copy-of-1");

  o.leakage_filter = 8;
  auto sets = BuildNeighbourSets(*retriever_, q, o);
  RAG_ASSERT_OK(sets.status());
  // What the builder must equal: CandidatesToFetch searched, then the first
  // K that do not leak, the leaks before them counted.
  SearchOptions so;
  so.k = CandidatesToFetch(o);
  so.exclude_doc_ids = {doc};
  auto found = retriever_->Search(q.tokens, so);
  RAG_ASSERT_OK(found.status());
  for (size_t i = 0; i < sets->size(); ++i) {
    const NeighbourSet& set = (*sets)[i];
    std::vector<ChunkId> want;
    int64_t leaks = 0;
    for (const Neighbour& nb : (*found)[i]) {
      if (want.size() == 2) break;
      if (NeighbourLeaks(nb, q.targets[i], 8)) {
        ++leaks;
      } else {
        want.push_back(nb.chunk_id);
      }
    }
    ASSERT_EQ(want.size(), 2u) << "query " << i << ": the over-fetch left fewer than K";
    EXPECT_EQ(set.chunk_ids, want) << "query " << i;
    EXPECT_EQ(set.filtered, leaks) << "query " << i;
    EXPECT_EQ(set.present, (std::vector<uint8_t>{1, 1}));
    if (q.targets[i].size() >= 8) {
      EXPECT_GE(set.filtered, 1) << "query " << i << " kept the copy";
    }
    for (int64_t j = 0; j < 2; ++j) {
      const ChunkRecord& c = chunks_[static_cast<size_t>(set.chunk_ids[static_cast<size_t>(j)])];
      EXPECT_FALSE(NeighbourLeaks(Candidate(c.id, c.doc_id, c.tokens, c.continuation), q.targets[i], 8));
    }
  }
}

TEST_F(NeighbourSetIndexTest, PrecomputedVectorsAndBatchesGiveTheSameSets) {
  auto emb = ReadFile(Path("index") + "/" + kEmbeddingsFile);
  RAG_ASSERT_OK(emb.status());
  const float* rows = reinterpret_cast<const float*>(emb->data());
  const std::string doc = (*docs_)[4].id;
  const std::vector<ChunkRecord> chunks = ChunksOf(doc);
  NeighbourSetOptions o = Options();
  o.exclude_doc_ids = {doc};
  NeighbourQueries q;  // vectors only: the training table's dense, unaligned case
  q.embeddings = rows + chunks.front().id * retriever_->manifest().dim;
  q.rows = static_cast<int64_t>(chunks.size());
  auto whole = BuildNeighbourSets(*retriever_, q, o);
  RAG_ASSERT_OK(whole.status());
  ASSERT_EQ(whole->size(), chunks.size());
  o.batch = 2;
  auto batched = BuildNeighbourSets(*retriever_, q, o);
  RAG_ASSERT_OK(batched.status());
  for (size_t i = 0; i < chunks.size(); ++i) {
    EXPECT_EQ((*batched)[i].chunk_ids, (*whole)[i].chunk_ids);
    EXPECT_EQ((*batched)[i].tokens, (*whole)[i].tokens);
  }
  // bm25 searches the tokens, whatever vectors are given, batched or not.
  o.method = "bm25";
  EXPECT_EQ(BuildNeighbourSets(*retriever_, q, o).status().code(), absl::StatusCode::kInvalidArgument);
  for (const auto& c : chunks) q.tokens.push_back(c.tokens);
  auto lexical = BuildNeighbourSets(*retriever_, q, o);
  RAG_ASSERT_OK(lexical.status());
  o.batch = 0;
  auto lexical_whole = BuildNeighbourSets(*retriever_, q, o);
  RAG_ASSERT_OK(lexical_whole.status());
  SearchOptions so;
  so.k = 2;
  so.method = "bm25";
  so.exclude_doc_ids = {doc};
  auto found = retriever_->Search(q.tokens, so);
  RAG_ASSERT_OK(found.status());
  for (size_t i = 0; i < chunks.size(); ++i) {
    EXPECT_EQ((*lexical)[i].chunk_ids, (*lexical_whole)[i].chunk_ids);
    for (size_t j = 0; j < (*found)[i].size(); ++j) {
      EXPECT_EQ((*lexical)[i].chunk_ids[j], (*found)[i][j].chunk_id);
    }
  }
}

TEST_F(NeighbourSetIndexTest, BadOptionsAndQueriesAreInvalidArgument) {
  NeighbourQueries q;
  q.tokens = {ChunksOf((*docs_)[0].id)[0].tokens};
  auto code = [&](const NeighbourQueries& queries, const NeighbourSetOptions& o) {
    return BuildNeighbourSets(*retriever_, queries, o).status().code();
  };
  RAG_ASSERT_OK(BuildNeighbourSets(*retriever_, q, Options()).status());
  NeighbourSetOptions o = Options();
  o.k = 0;
  EXPECT_EQ(code(q, o), absl::StatusCode::kInvalidArgument);
  o = Options();
  o.tokens = 0;
  EXPECT_EQ(code(q, o), absl::StatusCode::kInvalidArgument);
  o = Options();
  o.leakage_filter = -1;
  EXPECT_EQ(code(q, o), absl::StatusCode::kInvalidArgument);
  o = Options();
  o.extra_candidates = -1;
  EXPECT_EQ(code(q, o), absl::StatusCode::kInvalidArgument);
  o = Options();
  o.batch = -1;
  EXPECT_EQ(code(q, o), absl::StatusCode::kInvalidArgument);
  NeighbourQueries bad = q;
  bad.targets = {{1}, {2}};  // two targets for one query
  EXPECT_EQ(code(bad, Options()), absl::StatusCode::kInvalidArgument);
  // Vectors without tokens cannot be aligned.
  const std::vector<float> vector(static_cast<size_t>(retriever_->manifest().dim), 0.5f);
  NeighbourQueries vectors;
  vectors.embeddings = vector.data();
  vectors.rows = 1;
  o = Options();
  o.align = 4;
  EXPECT_EQ(code(vectors, o), absl::StatusCode::kInvalidArgument);
  vectors.tokens = {q.tokens[0], q.tokens[0]};  // two token queries for one row
  EXPECT_EQ(code(vectors, Options()), absl::StatusCode::kInvalidArgument);
  // No queries: no sets, no search.
  auto none = BuildNeighbourSets(*retriever_, NeighbourQueries{}, Options());
  RAG_ASSERT_OK(none.status());
  EXPECT_TRUE(none->empty());
}

}  // namespace
}  // namespace rag::retriever

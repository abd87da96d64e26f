// RETRO's precomputed training neighbours over a real (Flat, so exact)
// index: never from the chunk's own document, the true nearest otherwise,
// tokens = chunk + continuation padded; the cache file round-trips and is
// refused when the index changes, when corrupt, or for another K or R.
#include "index_builder/retro_neighbours.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

#include "common/file_util.h"
#include "index_builder/index_builder.h"
#include "lm/embedder.h"
#include "retriever/leakage.h"
#include "tests/lm_test_util.h"
#include "tests/status_matchers.h"
#include "tests/test_util.h"

namespace rag::index_builder {
namespace {

namespace fs = std::filesystem;

class RetroNeighboursTest : public ::testing::Test {
 protected:
  void SetUp() override {
    docs_ = testing::MakeCorpus(5, 21, 6);
    model_ = testing::MakeTinyLanguageModelFor(docs_, 5);
    embedder_ = lm::MakeLmEmbedder(model_.get());
    BuildOptions o;
    o.out_dir = Path("index");
    o.index_factory = "Flat";
    o.chunk_tokens = 16;
    o.continuation_tokens = 16;
    o.show_progress = false;
    RAG_ASSERT_OK(BuildIndex(docs_, model_->tokenizer(), *embedder_, model_->content_hash(), o).status());
  }
  std::string Path(const std::string& name) const { return (fs::path(dir_.path()) / name).string(); }
  std::unique_ptr<retriever::Retriever> Open(bool writable = false) {
    auto r = retriever::Retriever::Open(Path("index"), embedder_.get(), model_->content_hash(),
                                        model_->tokenizer().Hash(), writable);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? std::move(*r) : nullptr;
  }
  // Every chunk of the index, in id order.
  static std::vector<retriever::ChunkRecord> AllChunks(const retriever::Retriever& r) {
    std::vector<retriever::ChunkRecord> chunks;
    EXPECT_TRUE(r.chunk_store()
                    .ForEachChunk(0,
                                  [&](const retriever::ChunkRecord& c) {
                                    chunks.push_back(c);
                                    return true;
                                  })
                    .ok());
    return chunks;
  }
  RetroNeighbourOptions Options() const {
    RetroNeighbourOptions o;
    o.k = 2;
    o.tokens = 24;
    o.show_progress = false;
    return o;
  }

  testing::TempDir dir_;
  std::vector<Document> docs_;
  std::unique_ptr<lm::LanguageModel> model_;
  std::unique_ptr<lm::Embedder> embedder_;
};

TEST_F(RetroNeighboursTest, NearestChunksOfOtherDocumentsWithTheirContinuations) {
  auto r = Open();
  ASSERT_NE(r, nullptr);
  const int32_t pad = static_cast<int32_t>(model_->tokenizer().eot_id());
  auto t = ComputeRetroNeighbours(*r, pad, Options());
  RAG_ASSERT_OK(t.status());
  const auto& store = r->chunk_store();
  ASSERT_EQ(t->chunks, store.num_chunks());
  ASSERT_GT(t->chunks, 10);

  // Brute force over embeddings.f32: the nearest chunk of another document.
  auto emb = ReadFile(Path("index") + "/embeddings.f32");
  RAG_ASSERT_OK(emb.status());
  const int dim = r->manifest().dim;
  const float* rows = reinterpret_cast<const float*>(emb->data());
  const std::vector<retriever::ChunkRecord> chunks = AllChunks(*r);
  for (int64_t c = 0; c < t->chunks; ++c) {
    double best_d = std::numeric_limits<double>::infinity();
    for (int64_t o = 0; o < t->chunks; ++o) {
      if (chunks[o].doc_id == chunks[c].doc_id) continue;
      double d = 0;
      for (int i = 0; i < dim; ++i) {
        const double x = rows[c * dim + i] - rows[o * dim + i];
        d += x * x;
      }
      best_d = std::min(best_d, d);
    }
    for (int j = 0; j < t->k; ++j) {
      ASSERT_TRUE(t->has(c, j)) << "chunk " << c;
      const int64_t id = t->ids[c * t->k + j];
      EXPECT_NE(chunks[id].doc_id, chunks[c].doc_id) << "chunk " << c << " retrieved its own document";
      // Tokens: the neighbour chunk, its continuation, then padding.
      std::vector<int32_t> want(chunks[id].tokens.begin(), chunks[id].tokens.end());
      want.insert(want.end(), chunks[id].continuation.begin(), chunks[id].continuation.end());
      want.resize(static_cast<size_t>(t->tokens), pad);
      EXPECT_EQ(std::vector<int32_t>(t->tokens_of(c, j), t->tokens_of(c, j) + t->tokens), want);
    }
    // Ties aside, the first neighbour is the brute-force nearest.
    const int64_t first = t->ids[c * t->k];
    double d_first = 0;
    for (int i = 0; i < dim; ++i) {
      const double x = rows[c * dim + i] - rows[first * dim + i];
      d_first += x * x;
    }
    EXPECT_NEAR(d_first, best_d, 1e-4) << "chunk " << c;
  }
}

TEST(AlignNeighbourTokensTest, TheLongestMatchOfTheQuerysEndEndsTheChunkPart) {
  retriever::Neighbour nb;
  nb.tokens = {10, 11, 12, 13, 14, 15};
  nb.continuation = {16, 17, 18};
  const int32_t pad = 0;
  auto align = [&](const std::vector<int32_t>& query, int64_t min_match, int64_t* matched) {
    std::vector<int32_t> out(8, -1);
    *matched = retriever::AlignNeighbourTokens(nb, query, min_match, /*chunk=*/4, /*n=*/8, pad, out.data());
    return out;
  };
  int64_t matched = 0;
  // "11 12" ends at text position 3: N = [pad 10 11 12], F = what followed.
  EXPECT_EQ(align({99, 11, 12}, 2, &matched), (std::vector<int32_t>{0, 10, 11, 12, 13, 14, 15, 16}));
  EXPECT_EQ(matched, 2);
  // Deep in the text: N is the 4 tokens before the match's end.
  EXPECT_EQ(align({15, 16}, 2, &matched), (std::vector<int32_t>{13, 14, 15, 16, 17, 18, 0, 0}));
  // At the very end: nothing follows, F is all padding.
  EXPECT_EQ(align({17, 18}, 1, &matched), (std::vector<int32_t>{15, 16, 17, 18, 0, 0, 0, 0}));
  EXPECT_EQ(matched, 2);
  // Too short a match, or alignment off: the stored layout, chunk then continuation.
  const std::vector<int32_t> stored = {10, 11, 12, 13, 14, 15, 16, 17};
  EXPECT_EQ(align({99, 11, 12}, 3, &matched), stored);
  EXPECT_EQ(matched, 0);
  EXPECT_EQ(align({99, 11, 12}, 0, &matched), stored);
  EXPECT_EQ(align({}, 1, &matched), stored);
  // The longest match wins over a shorter earlier one.
  nb.tokens = {5, 7, 1, 2, 7, 3};
  nb.continuation = {4};
  EXPECT_EQ(align({2, 7}, 1, &matched), (std::vector<int32_t>{7, 1, 2, 7, 3, 4, 0, 0}));
  EXPECT_EQ(matched, 2);
  // Of equal matches, the earliest (most text after it).
  EXPECT_EQ(align({9, 7}, 1, &matched), (std::vector<int32_t>{0, 0, 5, 7, 1, 2, 7, 3}));
  EXPECT_EQ(matched, 1);
  // A short neighbour is padded on the right in the stored layout.
  nb.tokens = {5, 6};
  nb.continuation = {};
  EXPECT_EQ(align({1}, 1, &matched), (std::vector<int32_t>{5, 6, 0, 0, 0, 0, 0, 0}));
}

TEST_F(RetroNeighboursTest, AlignedTablesAreRecutOnTheirChunkAndCachedApart) {
  auto r = Open();
  ASSERT_NE(r, nullptr);
  const int32_t pad = static_cast<int32_t>(model_->tokenizer().eot_id());
  RetroNeighbourOptions o = Options();
  o.align = 1;  // a one-token match happens often in a 21-token vocabulary
  o.chunk = 16;
  auto aligned = ComputeRetroNeighbours(*r, pad, o);
  auto plain = ComputeRetroNeighbours(*r, pad, Options());
  RAG_ASSERT_OK(aligned.status());
  RAG_ASSERT_OK(plain.status());
  EXPECT_EQ(aligned->ids, plain->ids);  // the same neighbours, laid out otherwise
  EXPECT_NE(aligned->token_ids, plain->token_ids);
  const std::vector<retriever::ChunkRecord> chunks = AllChunks(*r);
  for (int64_t c = 0; c < aligned->chunks; ++c) {
    for (int j = 0; j < aligned->k; ++j) {
      const auto& rec = chunks[static_cast<size_t>(aligned->ids[c * aligned->k + j])];
      retriever::Neighbour nb{rec.id, rec.doc_id, rec.offset, rec.tokens, rec.continuation, 0.0f};
      std::vector<int32_t> want(static_cast<size_t>(o.tokens));
      retriever::AlignNeighbourTokens(nb, chunks[static_cast<size_t>(c)].tokens, 1, 16, o.tokens, pad, want.data());
      EXPECT_EQ(std::vector<int32_t>(aligned->tokens_of(c, j), aligned->tokens_of(c, j) + o.tokens), want);
    }
  }
  // An unaligned cache is not an aligned one.
  EXPECT_NE(aligned->fingerprint, plain->fingerprint);
  EXPECT_EQ(plain->fingerprint, IndexFingerprint(r->manifest()));
  const std::string file = Path(kRetroNeighboursFile);
  RAG_ASSERT_OK(SaveRetroNeighbours(*plain, file));
  EXPECT_EQ(LoadRetroNeighbours(file, TableFingerprint(r->manifest(), o), 2, 24).status().code(),
            absl::StatusCode::kFailedPrecondition);
  auto reloaded = LoadOrComputeRetroNeighbours(*r, pad, o, file);
  RAG_ASSERT_OK(reloaded.status());
  EXPECT_EQ(reloaded->token_ids, aligned->token_ids);
}

// BM25 tables: each chunk's neighbours are what Retriever::Search with
// method "bm25" returns for its tokens, never from its own document, and
// they are cached apart from the dense table.
TEST_F(RetroNeighboursTest, Bm25TablesHoldTheLexicalSearchOfEachChunkAndAreCachedApart) {
  auto r = Open();
  ASSERT_NE(r, nullptr);
  const int32_t pad = static_cast<int32_t>(model_->tokenizer().eot_id());
  RetroNeighbourOptions o = Options();
  o.method = "bm25";
  auto lexical = ComputeRetroNeighbours(*r, pad, o);
  RAG_ASSERT_OK(lexical.status());
  auto dense = ComputeRetroNeighbours(*r, pad, Options());
  RAG_ASSERT_OK(dense.status());
  EXPECT_NE(lexical->ids, dense->ids);
  const std::vector<retriever::ChunkRecord> chunks = AllChunks(*r);
  for (int64_t c = 0; c < lexical->chunks; ++c) {
    retriever::SearchOptions so;
    so.k = 2;
    so.method = "bm25";
    so.exclude_doc_ids = {chunks[static_cast<size_t>(c)].doc_id};
    auto want = r->Search({chunks[static_cast<size_t>(c)].tokens}, so);
    RAG_ASSERT_OK(want.status());
    for (int j = 0; j < lexical->k; ++j) {
      const int64_t id = lexical->ids[c * lexical->k + j];
      ASSERT_LT(static_cast<size_t>(j), (*want)[0].size());
      EXPECT_EQ(id, (*want)[0][static_cast<size_t>(j)].chunk_id) << "chunk " << c;
      EXPECT_NE(chunks[static_cast<size_t>(id)].doc_id, chunks[static_cast<size_t>(c)].doc_id);
    }
  }
  EXPECT_NE(lexical->fingerprint, dense->fingerprint);
  const std::string file = Path(kRetroNeighboursFile);
  RAG_ASSERT_OK(SaveRetroNeighbours(*dense, file));
  auto reloaded = LoadOrComputeRetroNeighbours(*r, pad, o, file);  // the dense cache is not reused
  RAG_ASSERT_OK(reloaded.status());
  EXPECT_EQ(reloaded->ids, lexical->ids);
  o.method = "tfidf";
  EXPECT_EQ(ComputeRetroNeighbours(*r, pad, o).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(RetroNeighboursTest, OwnDocumentFilterAllowsTheDocumentButNotThePredictedChunk) {
  auto r = Open();
  ASSERT_NE(r, nullptr);
  const int32_t pad = static_cast<int32_t>(model_->tokenizer().eot_id());
  RetroNeighbourOptions o = Options();
  o.method = "bm25";
  o.own_document_filter = 4;
  auto own = ComputeRetroNeighbours(*r, pad, o);
  RAG_ASSERT_OK(own.status());
  const std::vector<retriever::ChunkRecord> chunks = AllChunks(*r);
  int64_t own_neighbours = 0;
  for (int64_t c = 0; c < own->chunks; ++c) {
    const auto& query = chunks[static_cast<size_t>(c)];
    // A last chunk shorter than the run cannot share one: nothing to filter.
    const bool has_next =
        c + 1 < own->chunks && chunks[static_cast<size_t>(c + 1)].doc_id == query.doc_id &&
        static_cast<int64_t>(chunks[static_cast<size_t>(c + 1)].tokens.size()) >= o.own_document_filter;
    for (int j = 0; j < own->k; ++j) {
      ASSERT_TRUE(own->has(c, j)) << "chunk " << c;
      const int64_t id = own->ids[c * own->k + j];
      EXPECT_FALSE(has_next && id == c) << "chunk " << c << " retrieved itself, whose continuation it predicts";
      if (chunks[static_cast<size_t>(id)].doc_id == query.doc_id) ++own_neighbours;
      if (!has_next) continue;
      const auto& target = chunks[static_cast<size_t>(c + 1)].tokens;
      const std::vector<int32_t> shown(own->tokens_of(c, j), own->tokens_of(c, j) + own->tokens);
      EXPECT_FALSE(retriever::SharesTokenRun(target, shown, o.own_document_filter)) << "chunk " << c << " neighbour " << j;
    }
  }
  // The document's other chunks share its words, so BM25 finds some of them.
  EXPECT_GT(own_neighbours, 0);
  o.own_document_filter = 0;
  auto excluded = ComputeRetroNeighbours(*r, pad, o);
  RAG_ASSERT_OK(excluded.status());
  EXPECT_NE(own->fingerprint, excluded->fingerprint);
  o.own_document_filter = -1;
  EXPECT_EQ(ComputeRetroNeighbours(*r, pad, o).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(RetroNeighboursTest, CacheRoundTripsAndIsRefusedWhenWrong) {
  auto r = Open();
  ASSERT_NE(r, nullptr);
  auto t = ComputeRetroNeighbours(*r, 0, Options());
  RAG_ASSERT_OK(t.status());
  const std::string file = Path(kRetroNeighboursFile);
  EXPECT_EQ(LoadRetroNeighbours(file, t->fingerprint, 2, 24).status().code(), absl::StatusCode::kNotFound);
  RAG_ASSERT_OK(SaveRetroNeighbours(*t, file));
  auto back = LoadRetroNeighbours(file, t->fingerprint, 2, 24);
  RAG_ASSERT_OK(back.status());
  EXPECT_EQ(back->ids, t->ids);
  EXPECT_EQ(back->token_ids, t->token_ids);

  EXPECT_EQ(LoadRetroNeighbours(file, t->fingerprint + "x", 2, 24).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(LoadRetroNeighbours(file, t->fingerprint, 3, 24).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(LoadRetroNeighbours(file, t->fingerprint, 2, 32).status().code(), absl::StatusCode::kFailedPrecondition);

  auto bytes = ReadFile(file);
  RAG_ASSERT_OK(bytes.status());
  std::string flipped = *bytes;
  flipped[flipped.size() - 3] ^= 0x10;
  RAG_ASSERT_OK(WriteFileAtomic(file, flipped));
  EXPECT_EQ(LoadRetroNeighbours(file, t->fingerprint, 2, 24).status().code(), absl::StatusCode::kDataLoss);
  RAG_ASSERT_OK(WriteFileAtomic(file, bytes->substr(0, bytes->size() - 8)));
  EXPECT_EQ(LoadRetroNeighbours(file, t->fingerprint, 2, 24).status().code(), absl::StatusCode::kDataLoss);
  RAG_ASSERT_OK(WriteFileAtomic(file, bytes->substr(0, 20)));
  EXPECT_EQ(LoadRetroNeighbours(file, t->fingerprint, 2, 24).status().code(), absl::StatusCode::kDataLoss);
}

TEST_F(RetroNeighboursTest, CachedNeighboursAreRecomputedWhenTheIndexChanges) {
  const std::string file = Path(kRetroNeighboursFile);
  int64_t before = 0;
  {
    auto r = Open();
    ASSERT_NE(r, nullptr);
    auto t = LoadOrComputeRetroNeighbours(*r, 0, Options(), file);
    RAG_ASSERT_OK(t.status());
    before = t->chunks;
    // Unchanged index: the cache is used as is.
    auto again = LoadRetroNeighbours(file, IndexFingerprint(r->manifest()), 2, 24);
    RAG_ASSERT_OK(again.status());
  }
  {
    auto w = Open(/*writable=*/true);
    ASSERT_NE(w, nullptr);
    const auto extra = testing::MakeCorpus(1, 77, 4)[0];
    RAG_ASSERT_OK(w->AddDocument("added", model_->tokenizer().Encode(extra.text)).status());
    RAG_ASSERT_OK(w->Checkpoint());
  }
  auto r = Open();
  ASSERT_NE(r, nullptr);
  const std::string fingerprint = IndexFingerprint(r->manifest());
  EXPECT_EQ(LoadRetroNeighbours(file, fingerprint, 2, 24).status().code(), absl::StatusCode::kFailedPrecondition);
  auto t = LoadOrComputeRetroNeighbours(*r, 0, Options(), file);
  RAG_ASSERT_OK(t.status());
  EXPECT_GT(t->chunks, before);
  RAG_ASSERT_OK(LoadRetroNeighbours(file, fingerprint, 2, 24).status());
}

}  // namespace
}  // namespace rag::index_builder

// Train once, build shards, merge (issue 22), on a tiny real model: `rag
// build --train-only` (TrainIndexOnly), shard builds on it (BuildIndex with
// trained_dir and a ShardSpec), and MergeShards, whose index must answer as
// an unsharded build on the same trained index (neighbours' doc id, offset,
// tokens and distance; datastore keys), pass validation, and refuse shards
// that cannot be merged before writing a byte.
#include "index_builder/index_merge.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <string>
#include <tuple>
#include <vector>

#include "index_builder/index_builder.h"
#include "index_builder/trained_index.h"
#include "lm/embedder.h"
#include "lm/language_model.h"
#include "retriever/datastore.h"
#include "retriever/index_validation.h"
#include "retriever/retriever.h"
#include "tests/lm_test_util.h"
#include "tests/status_matchers.h"
#include "tests/test_util.h"

namespace rag::index_builder {
namespace {

namespace fs = std::filesystem;

class IndexMergeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    docs_ = new std::vector<Document>(testing::MakeCorpus(24, 77, 10));
    model_ = testing::MakeTinyLanguageModelFor(*docs_, 5).release();
    embedder_ = lm::MakeLmEmbedder(model_).release();
  }
  static void TearDownTestSuite() {
    delete embedder_;
    delete model_;
    delete docs_;
  }

  TrainOnlyOptions TrainOptions(const std::string& name) {
    TrainOnlyOptions o;
    o.out_dir = dir_ / name;
    o.index_factory = "IVF2,Flat";
    o.chunk_tokens = 16;
    o.continuation_tokens = 16;
    // One chunk per forward pass: LibTorch's CPU kernels round a row
    // differently in batches of other shapes, and a shard's batches are not
    // the whole index's. One at a time, a chunk's vector is the same in
    // every build, so merged and whole answer bit for bit alike.
    o.embed_batch = 1;
    o.show_progress = false;
    o.datastore = true;
    o.model = model_;
    o.datastore_factory = "IVF2,Flat";
    return o;
  }

  BuildOptions Options(const std::string& name, const std::string& trained, retriever::ShardSpec shard = {}) {
    BuildOptions o;
    o.out_dir = dir_ / name;
    o.chunk_tokens = 16;
    o.continuation_tokens = 16;
    // One chunk per forward pass: LibTorch's CPU kernels round a row
    // differently in batches of other shapes, and a shard's batches are not
    // the whole index's. One at a time, a chunk's vector is the same in
    // every build, so merged and whole answer bit for bit alike.
    o.embed_batch = 1;
    o.show_progress = false;
    o.trained_dir = trained.empty() ? "" : dir_ / trained;
    o.shard = shard;
    o.datastore = true;
    o.model = model_;
    return o;
  }

  // Builds shard i of n on `trained` into "<prefix><i>".
  void BuildShards(const std::string& prefix, int n, const std::string& trained) {
    for (int i = 0; i < n; ++i) {
      std::vector<Document> mine = *docs_;
      KeepShardDocuments({i, n}, &mine);
      auto m = BuildIndex(mine, model_->tokenizer(), *embedder_, model_->content_hash(),
                          Options(prefix + std::to_string(i), trained, {i, n}));
      ASSERT_TRUE(m.ok()) << m.status();
      EXPECT_FALSE(m->trained_index_hash.empty());
    }
  }

  std::vector<std::string> ShardDirs(const std::string& prefix, int n) {
    std::vector<std::string> dirs;
    for (int i = 0; i < n; ++i) dirs.push_back(dir_ / (prefix + std::to_string(i)));
    return dirs;
  }

  absl::StatusOr<std::unique_ptr<retriever::Retriever>> Open(const std::string& name) {
    return retriever::Retriever::Open(dir_ / name, embedder_, model_->content_hash(), model_->tokenizer().Hash());
  }

  testing::TempDir dir_;
  static std::vector<Document>* docs_;
  static lm::LanguageModel* model_;
  static lm::Embedder* embedder_;
};

std::vector<Document>* IndexMergeTest::docs_ = nullptr;
lm::LanguageModel* IndexMergeTest::model_ = nullptr;
lm::Embedder* IndexMergeTest::embedder_ = nullptr;

TEST_F(IndexMergeTest, MergedShardsAnswerAsOneIndexOnTheSameTrainedIndex) {
  auto trained = TrainIndexOnly(*docs_, model_->tokenizer(), *embedder_, model_->content_hash(), TrainOptions("T"));
  ASSERT_TRUE(trained.ok()) << trained.status();
  EXPECT_EQ(trained->index_factory, "IVF2,Flat");
  EXPECT_GT(trained->sample_rows, 0);
  EXPECT_TRUE(trained->datastore);
  auto whole = BuildIndex(*docs_, model_->tokenizer(), *embedder_, model_->content_hash(), Options("whole", "T"));
  ASSERT_TRUE(whole.ok()) << whole.status();
  EXPECT_EQ(whole->trained_index_hash, trained->trained_index_hash);
  EXPECT_EQ(whole->datastore_trained_index_hash, trained->datastore_trained_hash);

  for (int n : {1, 2, 3}) {
    SCOPED_TRACE("N=" + std::to_string(n));
    const std::string prefix = "s" + std::to_string(n) + "_";
    BuildShards(prefix, n, "T");
    MergeOptions mo;
    mo.out_dir = dir_ / ("merged" + std::to_string(n));
    mo.show_progress = false;
    auto merged = MergeShards(ShardDirs(prefix, n), mo);
    ASSERT_TRUE(merged.ok()) << merged.status();
    EXPECT_EQ(merged->documents, whole->documents);
    EXPECT_EQ(merged->chunks, whole->chunks);
    EXPECT_EQ(merged->tokens, whole->tokens);
    EXPECT_EQ(merged->datastore_keys, whole->datastore_keys);
    EXPECT_EQ(merged->shard_count, 1);
    EXPECT_FALSE(fs::exists(mo.out_dir + ".partial"));

    auto validation = retriever::ValidateIndex(mo.out_dir, 20, 2);
    ASSERT_TRUE(validation.ok()) << validation.status();
    EXPECT_TRUE(validation->valid) << validation->chunk_store << " " << validation->error;

    auto a = Open("whole");
    auto b = Open("merged" + std::to_string(n));
    ASSERT_TRUE(a.ok() && b.ok());
    std::vector<std::vector<retriever::Token>> queries;
    RAG_ASSERT_OK((*a)->chunk_store().ForEachChunk(0, [&](const retriever::ChunkRecord& c) {
      queries.push_back(c.tokens);
      return true;
    }));
    for (int nprobe : {1, 2}) {
      retriever::SearchOptions so;
      so.k = 5;
      so.nprobe = nprobe;
      auto ra = (*a)->Search(queries, so);
      auto rb = (*b)->Search(queries, so);
      ASSERT_TRUE(ra.ok() && rb.ok());
      for (size_t q = 0; q < queries.size(); ++q) {
        ASSERT_EQ((*ra)[q].size(), (*rb)[q].size()) << "query " << q;
        for (size_t j = 0; j < (*ra)[q].size(); ++j) {
          const auto& x = (*ra)[q][j];
          const auto& y = (*rb)[q][j];
          EXPECT_EQ(x.doc_id, y.doc_id) << "query " << q << " rank " << j;
          EXPECT_EQ(x.offset, y.offset) << "query " << q << " rank " << j;
          EXPECT_EQ(x.tokens, y.tokens) << "query " << q << " rank " << j;
          EXPECT_EQ(x.distance, y.distance) << "query " << q << " rank " << j;
        }
      }
    }

    // The datastores: the same keys and values, the same nearest keys.
    auto da = retriever::Datastore::Open(dir_ / "whole" + "/" + retriever::kDatastoreDir);
    auto db = retriever::Datastore::Open(mo.out_dir + "/" + retriever::kDatastoreDir);
    ASSERT_TRUE(da.ok() && db.ok()) << da.status() << db.status();
    ASSERT_EQ((*da)->size(), (*db)->size());
    const int dim = (*da)->dim();
    std::vector<float> keys(static_cast<size_t>(20 * dim));
    for (int64_t i = 0; i < 20; ++i) (*da)->Key(i * 7, keys.data() + i * dim);
    std::vector<std::vector<retriever::DatastoreNeighbour>> na, nb;
    RAG_ASSERT_OK((*da)->Search(keys.data(), 20, 4, 2, {}, false, &na));
    RAG_ASSERT_OK((*db)->Search(keys.data(), 20, 4, 2, {}, false, &nb));
    // Keys of equal contexts (every document's first position) tie: the
    // values are compared as sets below the k-th distance.
    for (size_t q = 0; q < na.size(); ++q) {
      ASSERT_EQ(na[q].size(), nb[q].size());
      std::vector<int32_t> va, vb;
      for (size_t j = 0; j < na[q].size(); ++j) {
        EXPECT_EQ(na[q][j].distance, nb[q][j].distance) << "key query " << q;
        if (na[q][j].distance < na[q].back().distance) va.push_back(na[q][j].value);
        if (nb[q][j].distance < nb[q].back().distance) vb.push_back(nb[q][j].value);
      }
      std::sort(va.begin(), va.end());
      std::sort(vb.begin(), vb.end());
      EXPECT_EQ(va, vb) << "key query " << q;
    }
    // Document numbers were shifted: every key's doc is a merged document.
    for (int64_t i = 0; i < (*db)->size(); i += 13) EXPECT_LT((*db)->doc(i), merged->documents);
  }
}

TEST_F(IndexMergeTest, RefusesShardsThatCannotBeMergedBeforeWritingAByte) {
  ASSERT_TRUE(
      TrainIndexOnly(*docs_, model_->tokenizer(), *embedder_, model_->content_hash(), TrainOptions("T")).ok());
  BuildShards("s_", 2, "T");
  MergeOptions mo;
  mo.out_dir = dir_ / "out";
  mo.show_progress = false;
  auto nothing_written = [&] { return !fs::exists(mo.out_dir) && !fs::exists(mo.out_dir + ".partial"); };

  // A shard missing, or given twice.
  auto missing = MergeShards({dir_ / "s_0"}, mo);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument) << missing.status();
  EXPECT_NE(missing.status().message().find("shard_id 1 of 2 is missing"), std::string::npos) << missing.status();
  auto twice = MergeShards({dir_ / "s_0", dir_ / "s_0"}, mo);
  EXPECT_EQ(twice.status().code(), absl::StatusCode::kInvalidArgument) << twice.status();
  EXPECT_TRUE(nothing_written());

  // Shard 1 trained on its own: no trained_index_hash.
  {
    std::vector<Document> mine = *docs_;
    KeepShardDocuments({1, 2}, &mine);
    BuildOptions o = Options("own1", "", {1, 2});
    o.index_factory = "IVF2,Flat";
    ASSERT_TRUE(BuildIndex(mine, model_->tokenizer(), *embedder_, model_->content_hash(), o).ok());
  }
  auto own = MergeShards({dir_ / "s_0", dir_ / "own1"}, mo);
  EXPECT_EQ(own.status().code(), absl::StatusCode::kFailedPrecondition) << own.status();
  EXPECT_NE(own.status().message().find("own1"), std::string::npos) << own.status();
  EXPECT_NE(own.status().message().find("trained_index_hash"), std::string::npos) << own.status();
  EXPECT_TRUE(nothing_written());

  // Shard 1 on another trained index (another factory: at this size every
  // sample is the whole corpus, so a seed alone would train the same one).
  TrainOnlyOptions other = TrainOptions("T2");
  other.index_factory = "IVF3,Flat";
  ASSERT_TRUE(TrainIndexOnly(*docs_, model_->tokenizer(), *embedder_, model_->content_hash(), other).ok());
  BuildShards("t_", 2, "T2");
  auto mixed = MergeShards({dir_ / "s_0", dir_ / "t_1"}, mo);
  EXPECT_EQ(mixed.status().code(), absl::StatusCode::kFailedPrecondition) << mixed.status();
  EXPECT_NE(mixed.status().message().find("t_1"), std::string::npos) << mixed.status();
  EXPECT_NE(mixed.status().message().find("trained_index_hash"), std::string::npos) << mixed.status();
  EXPECT_TRUE(nothing_written());

  // Shards of a split into 3 next to shards of 2.
  BuildShards("u_", 3, "T");
  auto counts = MergeShards({dir_ / "s_0", dir_ / "s_1", dir_ / "u_2"}, mo);
  EXPECT_EQ(counts.status().code(), absl::StatusCode::kFailedPrecondition) << counts.status();
  EXPECT_NE(counts.status().message().find("shard_count"), std::string::npos) << counts.status();
  EXPECT_TRUE(nothing_written());

  // And the right ones merge, in any order.
  RAG_EXPECT_OK(MergeShards({dir_ / "s_1", dir_ / "s_0"}, mo));
}

TEST_F(IndexMergeTest, BuildOnATrainedIndexRefusesAnotherChunkingOrFactory) {
  ASSERT_TRUE(
      TrainIndexOnly(*docs_, model_->tokenizer(), *embedder_, model_->content_hash(), TrainOptions("T")).ok());
  BuildOptions chunking = Options("c", "T");
  chunking.chunk_tokens = 32;
  auto c = BuildIndex(*docs_, model_->tokenizer(), *embedder_, model_->content_hash(), chunking);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kFailedPrecondition) << c.status();
  EXPECT_NE(c.status().message().find("chunk_tokens"), std::string::npos) << c.status();
  BuildOptions factory = Options("f", "T");
  factory.index_factory = "Flat";
  auto f = BuildIndex(*docs_, model_->tokenizer(), *embedder_, model_->content_hash(), factory);
  EXPECT_EQ(f.status().code(), absl::StatusCode::kFailedPrecondition) << f.status();
  EXPECT_NE(f.status().message().find("index_factory"), std::string::npos) << f.status();
  auto model = BuildIndex(*docs_, model_->tokenizer(), *embedder_, "another-model", Options("m", "T"));
  EXPECT_EQ(model.status().code(), absl::StatusCode::kFailedPrecondition) << model.status();
  EXPECT_NE(model.status().message().find("model_hash"), std::string::npos) << model.status();
  EXPECT_FALSE(fs::exists(dir_ / "c.partial"));
}

}  // namespace
}  // namespace rag::index_builder

#include "index_builder/index_builder.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/file.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "common/file_util.h"
#include "lm/embedder.h"
#include "lm/language_model.h"
#include "retriever/index_dir.h"
#include "retriever/retriever.h"
#include "tests/lm_test_util.h"
#include "tests/status_matchers.h"
#include "tests/test_util.h"

namespace rag::index_builder {
namespace {

namespace fs = std::filesystem;

class IndexBuilderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    docs_ = testing::MakeCorpus(12, 31, 12);
    model_ = testing::MakeTinyLanguageModelFor(docs_, 5);
    RAG_ASSERT_OK(model_->Save(dir_ / "model"));
    embedder_ = lm::MakeLmEmbedder(model_.get());
  }

  BuildOptions Options(const std::string& name) {
    BuildOptions o;
    o.out_dir = dir_ / name;
    o.index_factory = "Flat";
    o.chunk_tokens = 16;
    o.continuation_tokens = 16;
    o.embed_batch = 8;
    o.show_progress = false;
    return o;
  }

  absl::StatusOr<std::unique_ptr<retriever::Retriever>> Open(const std::string& name) {
    return retriever::Retriever::Open(dir_ / name, embedder_.get(), model_->content_hash(),
                                      model_->tokenizer().Hash());
  }

  testing::TempDir dir_;
  std::vector<Document> docs_;
  std::unique_ptr<lm::LanguageModel> model_;
  std::unique_ptr<lm::Embedder> embedder_;
};

TEST_F(IndexBuilderTest, EveryChunkRetrievesItselfAtRankOne) {
  auto m = BuildIndex(docs_, model_->tokenizer(), *embedder_, model_->content_hash(), Options("idx"));
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->documents, 12);
  EXPECT_EQ(m->vectors, m->chunks);
  EXPECT_GT(m->chunks, 12);
  EXPECT_FALSE(fs::exists(dir_ / "idx.partial"));
  auto r = Open("idx");
  ASSERT_TRUE(r.ok()) << r.status();
  std::vector<std::vector<retriever::Token>> queries;
  std::vector<retriever::ChunkId> ids;
  RAG_ASSERT_OK((*r)->chunk_store().ForEachChunk(0, [&](const retriever::ChunkRecord& c) {
    queries.push_back(c.tokens);
    ids.push_back(c.id);
    return true;
  }));
  retriever::SearchOptions so;
  so.k = 3;
  auto results = (*r)->Search(queries, so);
  ASSERT_TRUE(results.ok()) << results.status();
  for (size_t i = 0; i < ids.size(); ++i) {
    ASSERT_FALSE((*results)[i].empty());
    const auto& top = (*results)[i][0];
    // Rank 1 is the chunk itself, unless an identical chunk ties at distance 0.
    EXPECT_TRUE(top.chunk_id == ids[i] || top.distance < 1e-6) << "chunk " << ids[i];
    EXPECT_LT(top.distance, 1e-4);
  }
}

TEST_F(IndexBuilderTest, ExcludedDocumentsAreNeverReturned) {
  ASSERT_TRUE(BuildIndex(docs_, model_->tokenizer(), *embedder_, model_->content_hash(), Options("idx")).ok());
  auto r = Open("idx");
  ASSERT_TRUE(r.ok());
  auto doc = (*r)->chunk_store().GetDocument(docs_[3].id);
  ASSERT_TRUE(doc.ok());
  std::vector<retriever::Token> query(doc->tokens.begin(), doc->tokens.begin() + 16);
  retriever::SearchOptions so;
  so.k = 5;
  auto plain = (*r)->Search({query}, so);
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ((*plain)[0][0].doc_id, docs_[3].id);
  so.exclude_doc_ids = {docs_[3].id, docs_[4].id};
  auto excluded = (*r)->Search({query}, so);
  ASSERT_TRUE(excluded.ok());
  ASSERT_EQ((*excluded)[0].size(), 5u);
  for (const auto& n : (*excluded)[0]) {
    EXPECT_NE(n.doc_id, docs_[3].id);
    EXPECT_NE(n.doc_id, docs_[4].id);
  }
  so.k = 0;
  EXPECT_EQ((*r)->Search({query}, so).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(IndexBuilderTest, Bm25FindsChunksByTheirTokensExcludesAndFollowsAdds) {
  ASSERT_TRUE(BuildIndex(docs_, model_->tokenizer(), *embedder_, model_->content_hash(), Options("bm")).ok());
  auto r = retriever::Retriever::Open(dir_ / "bm", embedder_.get(), model_->content_hash(),
                                      model_->tokenizer().Hash(), /*writable=*/true);
  RAG_ASSERT_OK(r.status());
  retriever::SearchOptions so;
  so.k = 3;
  so.method = "bm25";
  auto doc = (*r)->chunk_store().GetDocument(docs_[5].id);
  RAG_ASSERT_OK(doc.status());
  const std::vector<retriever::Token> query(doc->tokens.begin(), doc->tokens.begin() + 16);  // its first chunk
  auto found = (*r)->Search({query}, so);
  RAG_ASSERT_OK(found.status());
  ASSERT_FALSE((*found)[0].empty());
  EXPECT_EQ((*found)[0][0].doc_id, docs_[5].id);
  EXPECT_LT((*found)[0][0].distance, 0);  // minus the score
  so.exclude_doc_ids = {docs_[5].id};
  found = (*r)->Search({query}, so);
  RAG_ASSERT_OK(found.status());
  for (const auto& n : (*found)[0]) EXPECT_NE(n.doc_id, docs_[5].id);
  so.exclude_doc_ids.clear();
  // A document added after BM25 was built is found at once.
  std::vector<retriever::Token> novel;
  for (int i = 0; i < 20; ++i) novel.push_back(static_cast<retriever::Token>(model_->tokenizer().vocab_size() - 2 - i));
  RAG_ASSERT_OK((*r)->AddDocument("novel", novel).status());
  found = (*r)->Search({std::vector<retriever::Token>(novel.begin(), novel.begin() + 5)}, so);
  RAG_ASSERT_OK(found.status());
  ASSERT_FALSE((*found)[0].empty());
  EXPECT_EQ((*found)[0][0].doc_id, "novel");
  so.method = "sparse";
  EXPECT_EQ((*r)->Search({query}, so).status().code(), absl::StatusCode::kInvalidArgument);
}

// Raises the stop flag after a number of embedding batches, as SIGINT would.
class StoppingEmbedder : public lm::Embedder {
 public:
  StoppingEmbedder(lm::Embedder* inner, std::atomic<bool>* stop, int after) : inner_(inner), stop_(stop), left_(after) {}
  int dim() const override { return inner_->dim(); }
  int64_t max_tokens() const override { return inner_->max_tokens(); }
  std::string hash() const override { return inner_->hash(); }
  std::string description() const override { return inner_->description(); }
  absl::Status Embed(const std::vector<std::vector<lm::TokenId>>& s, std::vector<float>* out) override {
    if (--left_ == 0) stop_->store(true);
    return inner_->Embed(s, out);
  }

 private:
  lm::Embedder* inner_;
  std::atomic<bool>* stop_;
  int left_;
};

TEST_F(IndexBuilderTest, InterruptedBuildResumesToTheSameIndex) {
  BuildOptions o = Options("resumed");
  o.index_factory = "";  // the default for the size
  std::atomic<bool> stop{false};
  StoppingEmbedder stopping(embedder_.get(), &stop, 3);
  auto first = BuildIndex(docs_, model_->tokenizer(), stopping, model_->content_hash(), o, &stop);
  EXPECT_EQ(first.status().code(), absl::StatusCode::kCancelled);
  EXPECT_FALSE(fs::exists(dir_ / "resumed"));
  EXPECT_TRUE(fs::exists(dir_ / "resumed.partial"));
  auto resumed = BuildIndex(docs_, model_->tokenizer(), *embedder_, model_->content_hash(), o);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  BuildOptions straight = o;
  straight.out_dir = dir_ / "straight";
  auto full = BuildIndex(docs_, model_->tokenizer(), *embedder_, model_->content_hash(), straight);
  ASSERT_TRUE(full.ok());
  EXPECT_EQ(resumed->checksums, full->checksums);
  // A second build into the same place refuses without --overwrite.
  EXPECT_EQ(BuildIndex(docs_, model_->tokenizer(), *embedder_, model_->content_hash(), o).status().code(),
            absl::StatusCode::kFailedPrecondition);
  o.overwrite = true;
  EXPECT_TRUE(BuildIndex(docs_, model_->tokenizer(), *embedder_, model_->content_hash(), o).ok());
}

TEST_F(IndexBuilderTest, SecondConcurrentBuildOfTheSameIndexIsRefused) {
  BuildOptions o = Options("locked");
  // Another build holds the lock (flock conflicts across open files, so this
  // stands in for a second process).
  const std::string lock = dir_ / "locked.lock";
  const int fd = ::open(lock.c_str(), O_RDWR | O_CREAT, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::flock(fd, LOCK_EX | LOCK_NB), 0);
  auto refused = BuildIndex(docs_, model_->tokenizer(), *embedder_, model_->content_hash(), o);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << refused.status();
  EXPECT_NE(refused.status().message().find("another `rag build`"), std::string::npos) << refused.status();
  EXPECT_FALSE(fs::exists(dir_ / "locked.partial"));  // nothing was touched
  ::close(fd);                                        // the other build ends (or dies)
  RAG_EXPECT_OK(BuildIndex(docs_, model_->tokenizer(), *embedder_, model_->content_hash(), o).status());
  EXPECT_FALSE(fs::exists(lock));  // a completed build leaves no lock file
}

TEST_F(IndexBuilderTest, IndexFromAnotherModelOrCorruptFilesIsRefused) {
  ASSERT_TRUE(BuildIndex(docs_, model_->tokenizer(), *embedder_, model_->content_hash(), Options("idx")).ok());
  auto other = retriever::Retriever::Open(dir_ / "idx", embedder_.get(), "0123456789abcdef",
                                          model_->tokenizer().Hash());
  EXPECT_EQ(other.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(other.status().message().find("rebuild"), std::string::npos);
  const std::string faiss_file = dir_ / "idx/chunks.faiss";
  fs::resize_file(faiss_file, fs::file_size(faiss_file) / 2);
  EXPECT_EQ(Open("idx").status().code(), absl::StatusCode::kDataLoss);
  fs::remove(dir_ / "idx/manifest.json");
  EXPECT_EQ(Open("idx").status().code(), absl::StatusCode::kNotFound);
  {
    std::ofstream(dir_ / "idx/manifest.json") << R"({"format_version": 99})";
  }
  EXPECT_EQ(Open("idx").status().code(), absl::StatusCode::kFailedPrecondition);
}

// IndexDir opens only the parts asked for, and every part it hands out
// matches the manifest the build wrote.
TEST_F(IndexBuilderTest, IndexDirOpensWhatItIsAskedFor) {
  auto m = BuildIndex(docs_, model_->tokenizer(), *embedder_, model_->content_hash(), Options("idx"));
  ASSERT_TRUE(m.ok()) << m.status();
  auto bare = retriever::IndexDir::Open(dir_ / "idx", retriever::IndexDirOptions());
  ASSERT_TRUE(bare.ok()) << bare.status();
  EXPECT_EQ((*bare)->manifest().chunks, m->chunks);
  EXPECT_EQ((*bare)->chunk_store(), nullptr);
  EXPECT_EQ((*bare)->vectors(), nullptr);
  EXPECT_EQ((*bare)->File(retriever::kChunkIndexFile), (fs::path(dir_ / "idx") / retriever::kChunkIndexFile).string());
  auto match = (*bare)->MatchesManifest(retriever::kChunkIndexFile);
  ASSERT_TRUE(match.ok()) << match.status();
  EXPECT_TRUE(*match);
  auto tok = (*bare)->LoadTokenizer("");
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(tok->Hash(), model_->tokenizer().Hash());

  retriever::IndexDirOptions o;
  o.chunk_store = true;
  o.vectors = true;
  o.check_model = true;
  o.model_hash = model_->content_hash();
  o.tokenizer_hash = model_->tokenizer().Hash();
  o.embedder = embedder_.get();
  auto full = retriever::IndexDir::Open(dir_ / "idx", o);
  ASSERT_TRUE(full.ok()) << full.status();
  ASSERT_NE((*full)->chunk_store(), nullptr);
  ASSERT_NE((*full)->vectors(), nullptr);
  EXPECT_EQ((*full)->vectors()->size(), m->vectors);
  auto counts = (*full)->LoadTokenCounts(*(*full)->chunk_store());
  ASSERT_TRUE(counts.ok()) << counts.status();
  EXPECT_EQ(counts->counts.documents(), 12);
  auto ds = (*full)->OpenDatastore(*(*full)->chunk_store(), 8);
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ(*ds, nullptr);  // none built

  o.model_hash = "0123456789abcdef";
  EXPECT_EQ(retriever::IndexDir::Open(dir_ / "idx", o).status().code(), absl::StatusCode::kFailedPrecondition);
  retriever::IndexDirOptions vectors_only;
  vectors_only.vectors = true;
  EXPECT_EQ(retriever::IndexDir::Open(dir_ / "idx", vectors_only).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace rag::index_builder

// kNN-LM end to end: `BuildIndex` with a datastore, then the knnlm mode of
// the Engine and of the gRPC server over it (tiny untrained model, Flat
// indexes: exact neighbours, so the effects below are deterministic).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>

#include "common/status.h"
#include "eval/probes.h"
#include "index_builder/index_builder.h"
#include "lm/embedder.h"
#include "lm/scorer.h"
#include "services/client.h"
#include "services/engine.h"
#include "services/server.h"
#include "tests/lm_test_util.h"
#include "tests/status_matchers.h"
#include "tests/response_util.h"
#include "tests/test_util.h"

namespace rag::services {
namespace {

namespace fs = std::filesystem;

class KnnLmEngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir();
    docs_ = new std::vector<Document>(testing::MakeCorpus(6, 5, 8));
    model_ = testing::MakeTinyLanguageModelFor(*docs_, 3).release();
    RAG_ASSERT_OK(model_->Save(Path("model")));
    Build("index", *docs_);
    // A second index over other documents, whose datastore must never be
    // served with the first.
    Build("other", testing::MakeCorpus(3, 99, 8));
  }
  static void TearDownTestSuite() {
    delete model_;
    delete docs_;
    delete dir_;
  }
  static std::string Path(const std::string& name) { return (fs::path(dir_->path()) / name).string(); }
  static void Build(const std::string& name, const std::vector<Document>& docs) {
    auto embedder = lm::MakeLmEmbedder(model_);
    index_builder::BuildOptions o;
    o.out_dir = Path(name);
    o.index_factory = "Flat";
    o.chunk_tokens = 16;
    o.continuation_tokens = 16;
    o.show_progress = false;
    o.datastore = true;
    o.model = model_;
    o.datastore_factory = "Flat";
    auto m = index_builder::BuildIndex(docs, model_->tokenizer(), *embedder, model_->content_hash(), o);
    RAG_ASSERT_OK(m.status());
    int64_t tokens = 0;
    for (const auto& d : docs) tokens += static_cast<int64_t>(model_->tokenizer().Encode(d.text).size());
    EXPECT_EQ(m->datastore_keys, tokens);  // one key per token
  }

  std::unique_ptr<Engine> Open(const std::string& index) {
    EngineOptions o;
    o.model_dir = Path("model");
    o.index_dir = index;
    auto e = Engine::Open(o);
    EXPECT_TRUE(e.ok()) << e.status();
    return e.ok() ? std::move(*e) : nullptr;
  }

  static v1::ScoreRequest Knn(const std::string& text, float lambda) {
    v1::ScoreRequest r;
    r.set_text(text);
    r.set_mode("knnlm");
    r.mutable_knn()->set_lambda(lambda);
    r.mutable_knn()->set_k(8);
    return r;
  }

  static testing::TempDir* dir_;
  static std::vector<Document>* docs_;
  static lm::LanguageModel* model_;
};

testing::TempDir* KnnLmEngineTest::dir_ = nullptr;
std::vector<Document>* KnnLmEngineTest::docs_ = nullptr;
lm::LanguageModel* KnnLmEngineTest::model_ = nullptr;

TEST_F(KnnLmEngineTest, LambdaZeroEqualsTheLmExactly) {
  auto engine = Open(Path("index"));
  ASSERT_NE(engine, nullptr);
  v1::ScoreRequest lm;
  lm.set_text((*docs_)[1].text);
  auto a = engine->Score(lm);
  auto b = engine->Score(Knn((*docs_)[1].text, 0.0f));
  RAG_ASSERT_OK(a.status());
  RAG_ASSERT_OK(b.status());
  EXPECT_EQ(a->logprob_sum(), b->logprob_sum());
  EXPECT_EQ(b->mode(), "knnlm");
}

// Each response says where its time went: the stages that ran, and only
// those, have time, exclusive of one another, within the call's total.
TEST_F(KnnLmEngineTest, ResponsesCarryTheirStageTimings) {
  auto engine = Open(Path("index"));
  ASSERT_NE(engine, nullptr);
  auto within_total = [](const v1::StageTimings& t) {
    EXPECT_GT(t.total_us(), 0);
    EXPECT_LE(t.embed_us() + t.search_us() + t.datastore_us() + t.forward_us() + t.fusion_us(), t.total_us());
  };
  v1::ScoreRequest lm;
  lm.set_text((*docs_)[1].text);
  auto plain = engine->Score(lm);
  RAG_ASSERT_OK(plain.status());
  const v1::StageTimings& p = plain->timings();
  EXPECT_GT(p.forward_us(), 0);
  EXPECT_EQ(p.embed_us() + p.search_us() + p.datastore_us() + p.fusion_us(), 0);
  within_total(p);

  auto knn = engine->Score(Knn((*docs_)[1].text, 0.5f));
  RAG_ASSERT_OK(knn.status());
  const v1::StageTimings& k = knn->timings();
  EXPECT_GT(k.forward_us(), 0);
  EXPECT_GT(k.search_us(), 0);
  EXPECT_GT(k.datastore_us(), 0);
  EXPECT_GT(k.fusion_us(), 0);
  EXPECT_EQ(k.embed_us(), 0);  // kNN-LM queries are the LM's own hidden states
  within_total(k);

  // Generation: the searches inside each step count as search, not forward.
  v1::GenerateRequest gen;
  gen.set_prompt("the");
  gen.set_mode("knnlm");
  gen.set_max_tokens(6);
  gen.set_ignore_eot(true);
  auto done = engine->Generate(gen, nullptr);
  RAG_ASSERT_OK(done.status());
  EXPECT_GT(done->timings().forward_us(), 0);
  EXPECT_GT(done->timings().search_us(), 0);
  within_total(done->timings());

  v1::SearchRequest search;
  search.add_texts((*docs_)[2].text.substr(0, 80));
  search.set_k(3);
  auto found = engine->Search(search);
  RAG_ASSERT_OK(found.status());
  EXPECT_GT(found->timings().embed_us(), 0);
  EXPECT_GT(found->timings().search_us(), 0);
  EXPECT_GT(found->timings().datastore_us(), 0);
  EXPECT_EQ(found->timings().forward_us(), 0);
  within_total(found->timings());
}

TEST_F(KnnLmEngineTest, DatastoreOverATextMakesItFarMoreLikelyUnlessItsDocumentIsExcluded) {
  auto engine = Open(Path("index"));
  ASSERT_NE(engine, nullptr);
  const Document& d = (*docs_)[2];
  v1::ScoreRequest lm;
  lm.set_text(d.text);
  auto base = engine->Score(lm);
  auto knn = engine->Score(Knn(d.text, 0.5f));
  v1::ScoreRequest excluded = Knn(d.text, 0.5f);
  excluded.set_exclude_doc_id(d.id);
  excluded.set_components(true);
  auto excl = engine->Score(excluded);
  RAG_ASSERT_OK(base.status());
  RAG_ASSERT_OK(knn.status());
  RAG_ASSERT_OK(excl.status());
  // Every token's own key is a neighbour at distance 0: p_knn is large.
  EXPECT_LT(knn->perplexity(), base->perplexity() / 3) << base->perplexity() << " vs " << knn->perplexity();
  // Without the document's own keys the effect is gone.
  EXPECT_GT(excl->perplexity(), 2 * knn->perplexity());
  ASSERT_EQ(excl->lm_logprobs_size(), excl->tokens());
  ASSERT_EQ(excl->knn_logprobs_size(), excl->tokens());
}

TEST_F(KnnLmEngineTest, LambdaOneWithOneNeighbourPutsAllMassOnItsToken) {
  auto engine = Open(Path("index"));
  ASSERT_NE(engine, nullptr);
  v1::NextTokenRequest r;
  r.set_text((*docs_)[0].text.substr(0, 40));
  r.set_mode("knnlm");
  r.mutable_knn()->set_lambda(1.0f);
  r.mutable_knn()->set_k(1);
  r.set_top_n(3);
  auto next = engine->NextToken(r);
  RAG_ASSERT_OK(next.status());
  EXPECT_NEAR(next->tokens(0).probability(), 1.0f, 1e-5);
  EXPECT_NEAR(next->tokens(1).probability(), 0.0f, 1e-6);
}

// Adaptive retrieval (KnnOptions.min_lm_entropy): a position is searched
// iff the LM's next-token entropy reaches the threshold, and then scores as
// the full kNN-LM; elsewhere it scores as the LM alone. The entropies are
// computed here from NextTokenLogProbs on each prefix, apart from the
// scorer's batched windows.
TEST_F(KnnLmEngineTest, AdaptiveRetrievalSearchesOnlyWhereTheLmIsUnsure) {
  auto engine = Open(Path("index"));
  ASSERT_NE(engine, nullptr);
  // A prefix of an indexed document that fits one window, so the scorer
  // conditions each position exactly as NextTokenLogProbs does.
  std::string text = (*docs_)[3].text;
  while (model_->tokenizer().Encode(text).size() + 1 >= static_cast<size_t>(model_->config().context)) {
    text.resize(text.size() * 3 / 4);
  }
  const auto ids = model_->tokenizer().Encode(text);
  ASSERT_GE(ids.size(), 16u);
  std::vector<float> entropy;
  for (size_t i = 0; i < ids.size(); ++i) {
    const std::vector<lm::TokenId> prefix(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(i));
    torch::Tensor logp = lm::NextTokenLogProbs(model_->module(), prefix, model_->tokenizer().eot_id());
    entropy.push_back(-(logp.exp() * logp).sum().item<float>());
  }
  // The scorer's batched entropies agree with these.
  lm::ScoreOptions so;
  so.entropy = true;
  const lm::ScoredTokens scored = lm::ScoreTokensWithHidden(model_->module(), ids, model_->tokenizer().eot_id(), so);
  ASSERT_EQ(scored.entropy.size(), ids.size());
  float noise = 0;
  for (size_t i = 0; i < ids.size(); ++i) noise = std::max(noise, std::abs(scored.entropy[i] - entropy[i]));
  EXPECT_LT(noise, 1e-4f);
  // A threshold in the widest gap between sorted entropies (the untrained
  // model's are all near log V), far wider than that noise, so no position
  // can flip between the two computations.
  std::vector<float> sorted = entropy;
  std::sort(sorted.begin(), sorted.end());
  size_t gap = 0;
  for (size_t i = 0; i + 1 < sorted.size(); ++i) {
    if (sorted[i + 1] - sorted[i] > sorted[gap + 1] - sorted[gap]) gap = i;
  }
  ASSERT_GT(sorted[gap + 1] - sorted[gap], 10 * noise + 1e-6f);
  const float threshold = 0.5f * (sorted[gap] + sorted[gap + 1]);

  auto request = [&](float min_entropy) {
    v1::ScoreRequest r = Knn(text, 0.5f);
    r.set_per_token(true);
    r.set_components(true);
    r.mutable_knn()->set_min_lm_entropy(min_entropy);
    return r;
  };
  v1::ScoreRequest lm_request;
  lm_request.set_text(text);
  lm_request.set_per_token(true);
  auto lm = engine->Score(lm_request);
  auto full = engine->Score(request(0));
  auto adaptive = engine->Score(request(threshold));
  auto none = engine->Score(request(1e6f));
  RAG_ASSERT_OK(lm.status());
  RAG_ASSERT_OK(full.status());
  RAG_ASSERT_OK(adaptive.status());
  RAG_ASSERT_OK(none.status());
  ASSERT_EQ(adaptive->token_scores_size(), static_cast<int>(ids.size()));
  EXPECT_EQ(full->retrievals(), static_cast<int64_t>(ids.size()));
  EXPECT_EQ(none->retrievals(), 0);
  EXPECT_EQ(none->logprob_sum(), lm->logprob_sum());
  int64_t searched = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    const int n = static_cast<int>(i);
    if (entropy[i] >= threshold) {
      ++searched;
      // Near, not equal: a search over fewer queries may take FAISS's other
      // distance kernel (BLAS from 20 queries up), which rounds differently
      // (seen in CI: equal to 6 digits). Skipping a search moves it by far more.
      EXPECT_NEAR(adaptive->token_scores(n).logprob(), full->token_scores(n).logprob(), 1e-4) << "position " << i;
      const float knn = full->knn_logprobs(n);  // -inf where no neighbour has the token
      if (std::isinf(knn)) {
        EXPECT_EQ(adaptive->knn_logprobs(n), knn) << "position " << i;
      } else {
        EXPECT_NEAR(adaptive->knn_logprobs(n), knn, 1e-4) << "position " << i;
      }
    } else {
      EXPECT_EQ(adaptive->token_scores(n).logprob(), lm->token_scores(n).logprob()) << "position " << i;
      EXPECT_EQ(adaptive->knn_logprobs(n), -std::numeric_limits<float>::infinity()) << "position " << i;
    }
  }
  EXPECT_EQ(adaptive->retrievals(), searched);
  EXPECT_GT(searched, 0);
  EXPECT_LT(searched, static_cast<int64_t>(ids.size()));

  // NextToken: below the threshold the LM's distribution comes back as is.
  v1::NextTokenRequest next;
  next.set_text(text);
  next.set_mode("knnlm");
  next.mutable_knn()->set_lambda(1.0f);
  next.mutable_knn()->set_k(1);
  next.mutable_knn()->set_min_lm_entropy(1e6f);
  next.set_top_n(3);
  v1::NextTokenRequest next_lm = next;
  next_lm.set_mode("lm");
  next_lm.clear_knn();
  auto a = engine->NextToken(next);
  auto b = engine->NextToken(next_lm);
  RAG_ASSERT_OK(a.status());
  RAG_ASSERT_OK(b.status());
  ASSERT_EQ(a->tokens_size(), 3);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(a->tokens(i).id(), b->tokens(i).id());
    EXPECT_FLOAT_EQ(a->tokens(i).probability(), b->tokens(i).probability());
  }
  // ... and a negative threshold is refused.
  v1::ScoreRequest bad = request(-1.0f);
  EXPECT_EQ(engine->Score(bad).status().code(), absl::StatusCode::kInvalidArgument);
}

// RetoMaton (KnnOptions.min_pointers) on an indexed document: each
// position's own key is its nearest neighbour and holds the token that
// follows, so after the first position of each run (runs of >= 32
// positions, retriever/pointer_search.h) no position is searched.
TEST_F(KnnLmEngineTest, PointersFollowAnIndexedDocumentWithoutSearching) {
  auto engine = Open(Path("index"));
  ASSERT_NE(engine, nullptr);
  const Document& d = (*docs_)[1];
  const int64_t n = static_cast<int64_t>(model_->tokenizer().Encode(d.text).size());
  ASSERT_GE(n, 64);
  v1::ScoreRequest searched = Knn(d.text, 0.5f);
  v1::ScoreRequest followed = searched;
  followed.mutable_knn()->set_min_pointers(1);
  auto all = engine->Score(searched);
  auto ptr = engine->Score(followed);
  RAG_ASSERT_OK(all.status());
  RAG_ASSERT_OK(ptr.status());
  EXPECT_EQ(all->retrievals(), n);
  EXPECT_EQ(ptr->retrievals(), std::min<int64_t>(n / 32, 128));
  v1::ScoreRequest lm;
  lm.set_text(d.text);
  auto base = engine->Score(lm);
  RAG_ASSERT_OK(base.status());
  // The followed keys carry the document's own next tokens.
  EXPECT_LT(ptr->perplexity(), base->perplexity() / 3) << base->perplexity() << " vs " << ptr->perplexity();
  // Generation has no sequence to follow: refused rather than ignored.
  v1::NextTokenRequest next;
  next.set_text("the");
  next.set_mode("knnlm");
  next.mutable_knn()->set_min_pointers(1);
  EXPECT_EQ(engine->NextToken(next).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(KnnLmEngineTest, GrpcAnswersEqualInProcessAnswers) {
  auto engine = Open(Path("index"));
  ASSERT_NE(engine, nullptr);
  ServerOptions so;
  so.listen = "127.0.0.1:0";
  auto server = Server::Start(engine.get(), so);
  RAG_ASSERT_OK(server.status());
  auto client = GrpcBackend::Connect("127.0.0.1:" + std::to_string((*server)->port()));
  RAG_ASSERT_OK(client.status());
  v1::ScoreRequest score = Knn((*docs_)[3].text, 0.3f);
  score.set_per_token(true);
  score.set_components(true);
  EXPECT_EQ(testing::SansTimings(*(*client)->Score(score)), testing::SansTimings(*engine->Score(score)));
  v1::NextTokenRequest next;
  next.set_text("the");
  next.set_mode("knnlm");
  EXPECT_EQ(testing::SansTimings(*(*client)->NextToken(next)), testing::SansTimings(*engine->NextToken(next)));
  v1::GenerateRequest gen;
  gen.set_prompt("the");
  gen.set_mode("knnlm");
  gen.set_max_tokens(8);
  gen.set_ignore_eot(true);
  gen.mutable_knn()->set_lambda(0.5f);
  gen.mutable_sampling()->set_temperature(1.0f);
  gen.mutable_sampling()->set_seed(7);
  auto a = (*client)->Generate(gen, nullptr);
  auto b = engine->Generate(gen, nullptr);
  RAG_ASSERT_OK(a.status());
  EXPECT_EQ(testing::SansTimings(*a), testing::SansTimings(*b));
  auto info = (*client)->Info();
  ASSERT_EQ(info->modes_size(), 4);
  EXPECT_EQ(info->modes(1), "knnlm");
  EXPECT_EQ(info->modes(2), "infgram");
  EXPECT_EQ(info->modes(3), "ralm");
}

TEST_F(KnnLmEngineTest, DatastoreOfAnotherIndexIsRefused) {
  const std::string index = Path("swapped");
  fs::remove_all(index);
  fs::copy(Path("index"), index, fs::copy_options::recursive);
  fs::remove_all(fs::path(index) / "datastore");
  fs::copy(fs::path(Path("other")) / "datastore", fs::path(index) / "datastore", fs::copy_options::recursive);
  EngineOptions o;
  o.model_dir = Path("model");
  o.index_dir = index;
  auto e = Engine::Open(o);
  EXPECT_EQ(e.status().code(), absl::StatusCode::kFailedPrecondition) << e.status();
  EXPECT_NE(e.status().message().find("datastore"), std::string::npos) << e.status();
}

TEST_F(KnnLmEngineTest, KnnModeWithoutDatastoreIsAFailedPrecondition) {
  EngineOptions o;
  o.model_dir = Path("model");
  auto e = Engine::Open(o);
  RAG_ASSERT_OK(e.status());
  EXPECT_EQ((*e)->Score(Knn("the cat", 0.5f)).status().code(), absl::StatusCode::kFailedPrecondition);
  v1::ScoreRequest bad = Knn("the cat", 1.5f);
  auto engine = Open(Path("index"));
  EXPECT_EQ(engine->Score(bad).status().code(), absl::StatusCode::kInvalidArgument);
}


// Knowledge update without retraining: a fact added to a live server
// through AddDocuments flips its probe in knnlm (its keys join the
// datastore) while lm stays wrong; excluding the fact's document flips it
// back; it survives a restart, and a datastore that lost the keys (a crash
// between the two appends) gets them back at open.
TEST_F(KnnLmEngineTest, AFactAddedToALiveServerFlipsItsProbeInKnnLmOnly) {
  const std::string index = Path("live");
  fs::remove_all(index);
  fs::copy(Path("index"), index, fs::copy_options::recursive);
  auto probes = eval::ParseProbes(
      R"({"sub_label": "Zorblax", "obj_label": "Quenvia", "predicate_id": "capital", "template": "The capital of [X] is [Y].", "candidates": ["Paris", "Lima", "Oslo", "Quito", "Rome"]})");
  RAG_ASSERT_OK(probes.status());
  auto rank = [&](Backend& backend, const std::string& mode, const std::string& exclude = "") {
    eval::TokenScorer scorer = [&](const std::string& text, const eval::Probe&) -> absl::StatusOr<std::vector<float>> {
      v1::ScoreRequest r = Knn(text, 0.5f);
      r.set_mode(mode);
      r.set_per_token(true);
      r.set_exclude_doc_id(exclude);
      RAG_ASSIGN_OR_RETURN(v1::ScoreResponse resp, backend.Score(r));
      std::vector<float> lp;
      for (const auto& t : resp.token_scores()) lp.push_back(t.logprob());
      return lp;
    };
    auto report = eval::EvaluateProbes(*probes, model_->tokenizer(), scorer);
    EXPECT_TRUE(report.ok()) << report.status();
    return report.ok() ? report->results[0].rank : -1;
  };
  const std::string fact_text = "The capital of Zorblax is Quenvia.";
  const int64_t fact_tokens = static_cast<int64_t>(model_->tokenizer().Encode(fact_text).size());
  EngineOptions o;
  o.model_dir = Path("model");
  o.index_dir = index;
  o.writable_index = true;
  {
    auto engine = Engine::Open(o);
    RAG_ASSERT_OK(engine.status());
    ServerOptions so;
    so.listen = "127.0.0.1:0";
    auto server = Server::Start(engine->get(), so);
    RAG_ASSERT_OK(server.status());
    auto client = GrpcBackend::Connect("127.0.0.1:" + std::to_string((*server)->port()));
    RAG_ASSERT_OK(client.status());
    const int64_t keys_before = (*client)->Stats()->datastore_keys();
    EXPECT_GT(rank(**client, "lm"), 1);
    EXPECT_GT(rank(**client, "knnlm"), 1);

    v1::Document fact;
    fact.set_id("zorblax");
    fact.set_text(fact_text);
    RAG_ASSERT_OK((*client)->AddDocuments({fact}, nullptr).status());
    EXPECT_EQ((*client)->Stats()->datastore_keys(), keys_before + fact_tokens);
    EXPECT_EQ(rank(**client, "knnlm"), 1);
    EXPECT_GT(rank(**client, "lm"), 1);
    EXPECT_GT(rank(**client, "knnlm", "zorblax"), 1);
  }
  {
    // Restarted read-only: the keys came back from added.log.
    auto engine = Open(index);
    ASSERT_NE(engine, nullptr);
    EXPECT_EQ(rank(*engine, "knnlm"), 1);
  }
  // The keys lost (the document stored, the server killed before they were
  // appended): recomputed at open.
  fs::remove(fs::path(index) / "datastore" / retriever::kDatastoreAddedFile);
  {
    auto engine = Engine::Open(o);
    RAG_ASSERT_OK(engine.status());
    EXPECT_EQ((*engine)->Stats()->datastore_keys(), (*engine)->Stats()->tokens());
    EXPECT_EQ(rank(**engine, "knnlm"), 1);
  }
  EXPECT_TRUE(fs::exists(fs::path(index) / "datastore" / retriever::kDatastoreAddedFile));
}

}  // namespace
}  // namespace rag::services

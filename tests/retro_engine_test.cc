// RETRO served end to end: a RETRO model directory (tiny base LM, RetroLM
// with randomised retrieval weights so neighbours matter) over a real Flat
// index, through the Engine and the gRPC server: retrieval on / off /
// random, the leakage filter, own-document exclusion, generation that
// reports its neighbours, and errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>

#include "common/file_util.h"
#include "index_builder/index_builder.h"
#include "lm/embedder.h"
#include "lm/retro_inference.h"
#include "lm/retro_model.h"
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

class RetroEngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir();
    docs_ = new std::vector<Document>(testing::MakeCorpus(6, 13, 8));
    // A verbatim copy under another id: what the leakage filter must catch.
    docs_->push_back({"copy-of-1", (*docs_)[1].text});
    auto base = testing::MakeTinyLanguageModelFor(*docs_, 17);
    RAG_ASSERT_OK(base->Save(Path("base")));
    RAG_ASSERT_OK(WriteFileAtomic(Path("base") + "/split.json", "{\"validation_ids\": []}\n"));
    auto embedder = lm::MakeLmEmbedder(base.get());
    index_builder::BuildOptions o;
    o.out_dir = Path("index");
    o.index_factory = "Flat";
    o.chunk_tokens = 16;
    o.continuation_tokens = 16;
    o.show_progress = false;
    RAG_ASSERT_OK(index_builder::BuildIndex(*docs_, base->tokenizer(), *embedder, base->content_hash(), o).status());

    lm::RetroConfig config;
    config.decoder = base->config();
    config.chunk_size = 16;
    config.neighbours = 2;
    config.neighbour_tokens = 32;
    config.encoder_layers = 1;
    config.cca_layers = {0, 1};
    config.align_neighbours = 8;
    torch::manual_seed(23);
    lm::RetroLM module(config);
    module->LoadDecoderFrom(base->module());
    {
      torch::NoGradGuard no_grad;
      for (auto& p : module->RetrievalParameters()) p.normal_(0, 0.3);
    }
    auto reopened = lm::LanguageModel::Open(Path("base"));
    RAG_ASSERT_OK(reopened.status());
    lm::RetroModel model(config, module, std::move(*reopened));
    RAG_ASSERT_OK(model.Save(Path("retro"), Path("base")));
  }
  static void TearDownTestSuite() {
    delete docs_;
    delete dir_;
  }
  static std::string Path(const std::string& name) { return (fs::path(dir_->path()) / name).string(); }

  static std::unique_ptr<Engine> Open(bool with_index = true) {
    EngineOptions o;
    o.model_dir = Path("retro");
    if (with_index) o.index_dir = Path("index");
    auto e = Engine::Open(o);
    EXPECT_TRUE(e.ok()) << e.status();
    return e.ok() ? std::move(*e) : nullptr;
  }
  static v1::ScoreRequest Retro(const std::string& text, const std::string& retrieval) {
    v1::ScoreRequest r;
    r.set_text(text);
    r.set_mode("retro");
    r.mutable_retro()->set_retrieval(retrieval);
    return r;
  }

  static testing::TempDir* dir_;
  static std::vector<Document>* docs_;
};

testing::TempDir* RetroEngineTest::dir_ = nullptr;
std::vector<Document>* RetroEngineTest::docs_ = nullptr;

TEST_F(RetroEngineTest, RetrievalOnOffRandomAreDistinctAndOffIsTheModelWithoutNeighbours) {
  auto engine = Open();
  ASSERT_NE(engine, nullptr);
  const std::string& text = (*docs_)[2].text;
  auto on = engine->Score(Retro(text, "on"));
  auto off = engine->Score(Retro(text, "off"));
  auto random = engine->Score(Retro(text, "random"));
  auto random_again = engine->Score(Retro(text, "random"));
  RAG_ASSERT_OK(on.status());
  RAG_ASSERT_OK(off.status());
  RAG_ASSERT_OK(random.status());
  EXPECT_EQ(on->mode(), "retro");
  EXPECT_GT(on->retrievals(), 3);
  EXPECT_EQ(off->retrievals(), 0);
  EXPECT_NE(on->logprob_sum(), off->logprob_sum());
  EXPECT_NE(on->logprob_sum(), random->logprob_sum());
  EXPECT_EQ(random->logprob_sum(), random_again->logprob_sum());  // seeded by the text

  // Off = the RETRO model with no neighbours, scored directly.
  auto& tok = engine->model().tokenizer();
  auto direct = lm::ScoreRetroTokens(engine->retro()->module(), tok.Encode(text), tok.eot_id(), {});
  RAG_ASSERT_OK(direct.status());
  double sum = 0;
  for (float lp : *direct) sum += lp;
  EXPECT_NEAR(off->logprob_sum(), sum, 1e-3);

  // lm mode on a RETRO directory is its base LM.
  v1::ScoreRequest lm;
  lm.set_text(text);
  RAG_ASSERT_OK(engine->Score(lm).status());
  auto info = engine->Info();
  RAG_ASSERT_OK(info.status());
  EXPECT_EQ(std::vector<std::string>(info->modes().begin(), info->modes().end()),
            (std::vector<std::string>{"lm", "retro", "infgram", "ralm"}));
}

TEST_F(RetroEngineTest, LeakageFilterDropsTheCopyOfTheScoredDocument) {
  auto engine = Open();
  ASSERT_NE(engine, nullptr);
  const Document& d = (*docs_)[1];
  v1::ScoreRequest unfiltered = Retro(d.text, "on");
  unfiltered.set_exclude_doc_id(d.id);
  unfiltered.mutable_retro()->set_leakage_filter(0);
  v1::ScoreRequest filtered = unfiltered;
  filtered.mutable_retro()->set_leakage_filter(8);
  auto a = engine->Score(unfiltered);
  auto b = engine->Score(filtered);
  RAG_ASSERT_OK(a.status());
  RAG_ASSERT_OK(b.status());
  EXPECT_EQ(a->neighbours_filtered(), 0);
  // Its own document is excluded, but the verbatim copy is the nearest
  // neighbour of most chunks: the filter drops it.
  EXPECT_GT(b->neighbours_filtered(), a->retrievals() / 2);
  EXPECT_NE(a->logprob_sum(), b->logprob_sum());
}

TEST_F(RetroEngineTest, GenerationReportsItsNeighboursAndGrpcEqualsInProcess) {
  auto engine = Open();
  ASSERT_NE(engine, nullptr);
  ServerOptions so;
  so.listen = "127.0.0.1:0";
  auto server = Server::Start(engine.get(), so);
  RAG_ASSERT_OK(server.status());
  auto client = GrpcBackend::Connect("127.0.0.1:" + std::to_string((*server)->port()));
  RAG_ASSERT_OK(client.status());

  v1::GenerateRequest gen;
  gen.set_prompt((*docs_)[0].text.substr(0, 60));
  gen.set_mode("retro");
  gen.set_max_tokens(40);
  gen.set_ignore_eot(true);
  int streamed = 0;
  auto local = engine->Generate(gen, [&](const v1::GenerateResponse&) { return ++streamed > 0; });
  RAG_ASSERT_OK(local.status());
  EXPECT_EQ(streamed, 40);
  EXPECT_GE(local->retrievals_size(), 2);  // a retrieval per completed chunk
  for (const auto& rv : local->retrievals()) {
    EXPECT_EQ(rv.neighbours_size(), 2);
    EXPECT_FALSE(rv.neighbours(0).text().empty());
  }
  auto remote = (*client)->Generate(gen, nullptr);
  RAG_ASSERT_OK(remote.status());
  EXPECT_EQ(testing::SansTimings(*remote), testing::SansTimings(*local));

  gen.mutable_retro()->set_retrieval("off");
  auto off = engine->Generate(gen, nullptr);
  RAG_ASSERT_OK(off.status());
  EXPECT_EQ(off->retrievals_size(), 0);

  v1::ScoreRequest score = Retro((*docs_)[4].text, "on");
  score.set_per_token(true);
  EXPECT_EQ(testing::SansTimings(*(*client)->Score(score)), testing::SansTimings(*engine->Score(score)));
  v1::NextTokenRequest next;
  next.set_text((*docs_)[4].text.substr(0, 120));
  next.set_mode("retro");
  auto n_local = engine->NextToken(next);
  RAG_ASSERT_OK(n_local.status());
  EXPECT_EQ(testing::SansTimings(*(*client)->NextToken(next)), testing::SansTimings(*n_local));
  EXPECT_EQ(n_local->mode(), "retro");
}

TEST_F(RetroEngineTest, NextTokenMatchesScoring) {
  // The distribution after a prefix gives the next token the log-probability
  // scoring gives it (same windows' last chunk, same neighbour sets).
  auto engine = Open();
  ASSERT_NE(engine, nullptr);
  auto& tok = engine->model().tokenizer();
  // A cut where both decoded texts re-tokenise to the same ids (byte-level
  // BPE can merge across a cut), chosen deterministically so the test always
  // runs: the first document from the fourth on with such a cut at 40..47.
  std::vector<lm::TokenId> ids;
  size_t cut = 0;
  for (size_t d = 3; d < docs_->size() && cut == 0; ++d) {
    ids = tok.Encode((*docs_)[d].text);
    for (size_t n = 40; n < 48 && n + 1 < ids.size(); ++n) {
      const std::vector<lm::TokenId> a(ids.begin(), ids.begin() + n), b(ids.begin(), ids.begin() + n + 1);
      if (tok.Encode(*tok.Decode(a)) == a && tok.Encode(*tok.Decode(b)) == b) {
        cut = n;
        break;
      }
    }
  }
  ASSERT_GT(cut, 0u) << "no document has a cut at 40..47 tokens that re-tokenises to itself";
  const std::vector<lm::TokenId> prefix(ids.begin(), ids.begin() + cut);
  v1::ScoreRequest score = Retro(*tok.Decode(std::vector<lm::TokenId>(ids.begin(), ids.begin() + cut + 1)), "off");
  score.set_per_token(true);
  auto s = engine->Score(score);
  RAG_ASSERT_OK(s.status());
  ASSERT_EQ(s->tokens(), static_cast<int64_t>(cut + 1));
  v1::NextTokenRequest next;
  next.set_text(*tok.Decode(prefix));
  next.set_mode("retro");
  next.mutable_retro()->set_retrieval("off");
  next.set_top_n(1000);
  auto n = engine->NextToken(next);
  RAG_ASSERT_OK(n.status());
  for (const auto& t : n->tokens()) {
    if (t.id() == ids[cut]) {
      EXPECT_NEAR(t.logprob(), s->token_scores(static_cast<int>(cut)).logprob(), 1e-4);
      return;
    }
  }
  ADD_FAILURE() << "the next token is not in the top 1000";
}

// A short text is one chunk, which RETRO gives no neighbours; with a prompt
// the text is laid out so the prompt ends a chunk, and the tokens after it
// attend to the neighbours retrieved with it (the prompt's own tokens,
// before them, cannot).
TEST_F(RetroEngineTest, PromptGetsNeighboursForTheTokensAfterIt) {
  auto engine = Open();
  ASSERT_NE(engine, nullptr);
  auto tokenizer = lm::Tokenizer::FromJson(engine->Info()->tokenizer_json());
  RAG_ASSERT_OK(tokenizer.status());
  const auto doc = tokenizer->Encode((*docs_)[2].text);
  // 12 tokens (under one 16-token chunk), the first 6 the prompt.
  const std::string text = *tokenizer->Decode({doc.begin(), doc.begin() + 12});
  const std::string prompt = *tokenizer->Decode({doc.begin(), doc.begin() + 6});
  ASSERT_EQ(text.compare(0, prompt.size(), prompt), 0);
  auto score = [&](const std::string& retrieval, int prompt_bytes, const std::string& method = "") {
    v1::ScoreRequest r = Retro(text, retrieval);
    r.set_per_token(true);
    r.set_prompt_bytes(prompt_bytes);
    r.mutable_retro()->set_search_method(method);
    return engine->Score(r);
  };
  auto plain = score("on", 0);
  RAG_ASSERT_OK(plain.status());
  EXPECT_EQ(plain->retrievals(), 0);  // one chunk: nothing attends to a set
  auto on = score("on", static_cast<int>(prompt.size()));
  auto off = score("off", static_cast<int>(prompt.size()));
  auto bm25 = score("on", static_cast<int>(prompt.size()), "bm25");
  RAG_ASSERT_OK(on.status());
  RAG_ASSERT_OK(off.status());
  RAG_ASSERT_OK(bm25.status());
  EXPECT_GE(on->retrievals(), 1);
  ASSERT_EQ(on->token_scores_size(), plain->token_scores_size());
  ASSERT_EQ(off->token_scores_size(), plain->token_scores_size());
  size_t p = 0;  // the prompt's tokens within the text's
  const auto ids = tokenizer->Encode(text), alone = tokenizer->Encode(prompt);
  while (p < alone.size() && alone[p] == ids[p]) ++p;
  ASSERT_LT(p, static_cast<size_t>(on->token_scores_size()));
  double after = 0;
  for (int i = 0; i < on->token_scores_size(); ++i) {
    const double d = std::abs(on->token_scores(i).logprob() - off->token_scores(i).logprob());
    if (static_cast<size_t>(i) < p) {
      EXPECT_LT(d, 1e-5) << "prompt token " << i << " saw the neighbours";
    } else {
      after += d;
    }
  }
  EXPECT_GT(after, 1e-3) << "the neighbours changed nothing after the prompt";
  // Bad values are refused.
  EXPECT_EQ(score("on", static_cast<int>(text.size()) + 1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(score("on", -1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(score("on", 3, "sparse").status().code(), absl::StatusCode::kInvalidArgument);
}

// The set of a query is re-cut so that the query's text ends each
// neighbour's N part and F is what followed that text in the neighbour's
// document, whenever the neighbour holds the query's last 8 tokens or more
// (the model was saved with align_neighbours = 8). The corpus
// is made of template sentences, so a 16-token query from the middle of a
// document is found almost verbatim, at another offset than a chunk start.
TEST_F(RetroEngineTest, NeighboursAreRecutWhereTheQueryEnds) {
  auto engine = Open();
  ASSERT_NE(engine, nullptr);
  ASSERT_EQ(engine->retro()->config().align_neighbours, 8);
  const lm::Tokenizer* tokenizer = &engine->model().tokenizer();
  const int64_t m = engine->retro()->config().chunk_size, r = engine->retro()->config().neighbour_tokens;
  const lm::TokenId pad = tokenizer->eot_id();
  const auto doc = tokenizer->Encode((*docs_)[0].text);
  // A chunk-long span from offset 5 on that is its own tokenization as a prompt.
  std::vector<lm::TokenId> query;
  std::string prompt;
  int64_t start = 5;
  for (; start < 12; ++start) {
    ASSERT_GE(static_cast<int64_t>(doc.size()), start + m);
    query.assign(doc.begin() + start, doc.begin() + start + m);
    prompt = *tokenizer->Decode(query);
    if (tokenizer->Encode(prompt) == query) break;
  }
  ASSERT_LT(start, 12) << "no span tokenizes alone as in the document";
  v1::GenerateRequest gen;
  gen.set_prompt(prompt);
  gen.set_mode("retro");
  gen.set_max_tokens(1);
  auto done = engine->Generate(gen, nullptr);
  RAG_ASSERT_OK(done.status());
  ASSERT_GE(done->retrievals_size(), 1);
  ASSERT_EQ(done->retrievals(0).chunk(), 0);
  // The same neighbours as stored (chunk, continuation), from Search.
  v1::SearchRequest search;
  search.add_texts(prompt);
  search.set_k(2);
  auto found = engine->Search(search);
  RAG_ASSERT_OK(found.status());
  const auto& stored = found->results(0).neighbours();
  const auto& got = done->retrievals(0).neighbours();
  ASSERT_EQ(got.size(), stored.size());
  int aligned = 0, padded = 0;
  for (int j = 0; j < got.size(); ++j) {
    std::vector<lm::TokenId> text(stored[j].token_ids().begin(), stored[j].token_ids().end());
    text.insert(text.end(), stored[j].continuation_ids().begin(), stored[j].continuation_ids().end());
    // The longest match of the query's end in the text, the earliest of equals.
    int64_t best = 0, end = 0;
    for (int64_t e = 1; e <= static_cast<int64_t>(text.size()); ++e) {
      int64_t l = 0;
      while (l < m && l < e && text[e - 1 - l] == query[m - 1 - l]) ++l;
      if (l > best) best = l, end = e;
    }
    std::vector<lm::TokenId> want(static_cast<size_t>(r), pad);
    if (best >= 8) {
      ++aligned;
      for (int64_t i = 0; i < r; ++i) {
        const int64_t src = end - m + i;
        if (src >= 0 && src < static_cast<int64_t>(text.size())) want[i] = text[src];
      }
    } else {
      for (int64_t i = 0; i < r && i < static_cast<int64_t>(text.size()); ++i) want[i] = text[i];
    }
    // The client sees the neighbour without the padding of the layout.
    const size_t before = want.size();
    while (!want.empty() && want.back() == pad) want.pop_back();
    want.erase(want.begin(), std::find_if(want.begin(), want.end(), [&](lm::TokenId t) { return t != pad; }));
    padded += want.size() < before;
    EXPECT_EQ(std::vector<lm::TokenId>(got[j].token_ids().begin(), got[j].token_ids().end()), want)
        << "neighbour " << j << ", match of " << best << " tokens";
  }
  EXPECT_GE(aligned, 1) << "the query matched no neighbour: the test shows nothing";
  EXPECT_GE(padded, 1) << "no neighbour was padded: the trimming is not shown";
}

// A prompt shorter than a chunk is laid out to end one, so the first
// generated token already attends to the neighbours retrieved with it.
TEST_F(RetroEngineTest, AShortPromptRetrievesBeforeTheFirstGeneratedToken) {
  auto engine = Open();
  ASSERT_NE(engine, nullptr);
  const auto& tok = engine->model().tokenizer();
  const auto doc = tok.Encode((*docs_)[2].text);
  v1::GenerateRequest gen;
  gen.set_prompt(*tok.Decode({doc.begin(), doc.begin() + 5}));
  gen.set_mode("retro");
  gen.set_max_tokens(1);
  gen.set_ignore_eot(true);
  auto done = engine->Generate(gen, nullptr);
  RAG_ASSERT_OK(done.status());
  ASSERT_EQ(done->retrievals_size(), 1);
  EXPECT_EQ(done->retrievals(0).chunk(), 0);
  EXPECT_EQ(done->retrievals(0).neighbours_size(), 2);
  EXPECT_EQ(done->tokens(), 1);
  // Off: the same layout, no neighbours.
  gen.mutable_retro()->set_retrieval("off");
  auto off = engine->Generate(gen, nullptr);
  RAG_ASSERT_OK(off.status());
  EXPECT_EQ(off->retrievals_size(), 0);
}

TEST_F(RetroEngineTest, BadRequestsAndMissingPiecesAreClearErrors) {
  auto engine = Open();
  ASSERT_NE(engine, nullptr);
  EXPECT_EQ(engine->Score(Retro("the cat", "sometimes")).status().code(), absl::StatusCode::kInvalidArgument);
  v1::ScoreRequest neg = Retro("the cat", "on");
  neg.mutable_retro()->set_leakage_filter(-1);
  EXPECT_EQ(engine->Score(neg).status().code(), absl::StatusCode::kInvalidArgument);
  v1::ScoreRequest stride = Retro("the cat", "on");
  stride.set_stride(5);
  EXPECT_EQ(engine->Score(stride).status().code(), absl::StatusCode::kInvalidArgument);

  // Without the index: retrieval on is refused, off still works.
  auto no_index = Open(/*with_index=*/false);
  ASSERT_NE(no_index, nullptr);
  EXPECT_EQ(no_index->Score(Retro("the cat", "on")).status().code(), absl::StatusCode::kFailedPrecondition);
  RAG_ASSERT_OK(no_index->Score(Retro("the cat", "off")).status());

  // A plain LM directory has no retro mode.
  EngineOptions o;
  o.model_dir = Path("base");
  auto lm_engine = Engine::Open(o);
  RAG_ASSERT_OK(lm_engine.status());
  auto s = (*lm_engine)->Score(Retro("the cat", "off"));
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.status().message().find("--arch retro"), std::string::npos) << s.status();
}

}  // namespace
}  // namespace rag::services

// Verbatim memorization end to end: a tiny LM trained on a corpus in which
// one "canary" document is repeated many times reproduces it from short
// prefixes, and not a document it never saw; the counts bucket the canary
// as repeated; gRPC and in-process evaluations agree.
#include "eval/memorization.h"

#include "eval/extraction.h"

#include <gtest/gtest.h>

#include "common/status.h"
#include "lm/train_pipeline.h"
#include "services/client.h"
#include "services/engine.h"
#include "services/server.h"
#include "tests/status_matchers.h"
#include "tests/test_util.h"

namespace rag::eval {
namespace {

const char kCanary[] =
    "the violet heron counts seven lanterns beside the quiet harbour while my sister paints a wooden box "
    "and the teacher remembers an apple every day.";

// Greedy continuations from a Backend (an Engine in-process, or gRPC).
GreedyGenerator FromBackend(services::Backend* backend) {
  return [backend](const std::vector<int32_t>& prompt, int max_tokens,
                   const std::string& exclude) -> absl::StatusOr<std::vector<int32_t>> {
    v1::GenerateRequest req;
    req.mutable_prompt_token_ids()->Add(prompt.begin(), prompt.end());
    req.set_max_tokens(max_tokens);
    req.set_ignore_eot(true);
    req.mutable_sampling()->set_temperature(0);
    req.set_exclude_doc_id(exclude);
    std::vector<int32_t> out;
    RAG_RETURN_IF_ERROR(backend
                            ->Generate(req,
                                       [&](const v1::GenerateResponse& t) {
                                         out.push_back(t.token_id());
                                         return true;
                                       })
                            .status());
    return out;
  };
}

TEST(MemorizationTest, ARepeatedTrainingTextIsReproducedAndANewOneIsNot) {
  testing::TempDir dir;
  std::vector<Document> docs = testing::MakeCorpus(12, 21, 6);
  for (int i = 0; i < 40; ++i) docs.push_back({"canary-" + std::to_string(i), kCanary});
  lm::TrainJob job;
  job.out_dir = dir / "model";
  job.preset = "tiny";
  job.vocab_size = 300;
  job.validation_fraction = 0.1;
  job.trainer.steps = 250;
  job.trainer.batch_size = 8;
  job.trainer.lr = 3e-3;
  job.trainer.warmup_steps = 10;
  job.trainer.checkpoint_every = 0;
  job.trainer.eval_every = 0;
  job.trainer.show_progress = false;
  RAG_ASSERT_OK(lm::TrainLanguageModel(docs, job).status());

  services::EngineOptions eo;
  eo.model_dir = job.out_dir;
  auto engine = services::Engine::Open(eo);
  RAG_ASSERT_OK(engine.status());
  const lm::Tokenizer tok = *lm::Tokenizer::FromJson((*engine)->Info()->tokenizer_json());

  // Counts over the training corpus: the canary's sequences occur 40 times.
  std::vector<std::vector<int32_t>> corpus_tokens;
  for (const auto& d : docs) corpus_tokens.push_back(tok.Encode(d.text));
  auto counts = retriever::TokenCounts::Build(corpus_tokens);
  RAG_ASSERT_OK(counts.status());

  MemorizationOptions o;
  o.prefix_lengths = {4, 12};
  o.suffix_tokens = 10;
  o.samples = 12;
  const std::vector<TokenizedDocument> canary = {{"canary-0", tok.Encode(kCanary)}};
  auto seen = EvaluateMemorization(canary, *counts, FromBackend(engine->get()), o, false);
  RAG_ASSERT_OK(seen.status());
  EXPECT_EQ(seen->samples, 12);
  EXPECT_GE(seen->by_prefix[12].exact_rate(), 0.75) << seen->by_prefix[12].token_match();
  EXPECT_GE(seen->by_prefix[12].token_match(), seen->by_prefix[4].token_match());
  EXPECT_EQ(seen->by_prefix_and_duplicates[12].count("16+"), 1u);  // 40 copies

  // A text of the same words it never saw in this order.
  const std::string fresh =
      "an apple follows the quiet harbour while seven herons carry a letter beside my violet sister at night, "
      "and the lanterns count the wooden teacher again.";
  const std::vector<TokenizedDocument> unseen = {{"fresh", tok.Encode(fresh)}};
  auto counts_fresh = retriever::TokenCounts::Build({unseen[0].tokens});
  auto novel = EvaluateMemorization(unseen, *counts_fresh, FromBackend(engine->get()), o, false);
  RAG_ASSERT_OK(novel.status());
  EXPECT_LE(novel->by_prefix[12].exact_rate(), 0.1);
  EXPECT_LT(novel->by_prefix[12].token_match(), seen->by_prefix[12].token_match() - 0.3);

  // Over gRPC: the same numbers.
  services::ServerOptions so;
  so.listen = "127.0.0.1:0";
  auto server = services::Server::Start(engine->get(), so);
  RAG_ASSERT_OK(server.status());
  auto client = services::GrpcBackend::Connect("127.0.0.1:" + std::to_string((*server)->port()));
  RAG_ASSERT_OK(client.status());
  auto remote = EvaluateMemorization(canary, *counts, FromBackend(client->get()), o, false);
  RAG_ASSERT_OK(remote.status());
  for (int l : o.prefix_lengths) {
    EXPECT_EQ(remote->by_prefix[l].exact, seen->by_prefix[l].exact);
    EXPECT_EQ(remote->by_prefix[l].token_matches, seen->by_prefix[l].token_matches);
  }

  // Extraction (Carlini et al. 2021): texts sampled from the model contain
  // the canary verbatim, and ranking by perplexity puts them first.
  Sampler sampler = [&](int64_t i, int n) -> absl::StatusOr<std::pair<std::vector<int32_t>, std::string>> {
    v1::GenerateRequest req;
    req.set_max_tokens(n);
    req.set_ignore_eot(true);
    req.mutable_sampling()->set_temperature(1.0f);
    req.mutable_sampling()->set_top_k(40);
    req.mutable_sampling()->set_seed(static_cast<uint64_t>(100 + i));
    std::vector<int32_t> ids;
    RAG_ASSIGN_OR_RETURN(v1::GenerateResponse done, (*engine)->Generate(req, [&](const v1::GenerateResponse& t) {
      ids.push_back(t.token_id());
      return true;
    }));
    return std::make_pair(ids, done.text());
  };
  Perplexity perplexity = [&](const std::string& text) -> absl::StatusOr<double> {
    v1::ScoreRequest req;
    req.set_text(text);
    RAG_ASSIGN_OR_RETURN(v1::ScoreResponse r, (*engine)->Score(req));
    return r.perplexity();
  };
  ExtractionOptions eo_ext;
  eo_ext.samples = 12;
  eo_ext.tokens = 40;
  eo_ext.match_tokens = 20;
  eo_ext.top = 4;
  auto extraction = EvaluateExtraction(*counts, sampler, perplexity, eo_ext);
  RAG_ASSERT_OK(extraction.status());
  EXPECT_GE(extraction->extracted, 3);
  ASSERT_EQ(extraction->rankings.size(), 2u);
  EXPECT_EQ(extraction->rankings[0].metric, "perplexity");
  EXPECT_GE(extraction->rankings[0].precision(), 0.75);
  for (const auto& smp : extraction->samples) {
    // The longest run really occurs, and one token more does not.
    EXPECT_EQ(smp.extracted, smp.longest_match >= 20);
  }

  // Bad options and documents too short are clear errors.
  o.prefix_lengths = {};
  EXPECT_EQ(EvaluateMemorization(canary, *counts, FromBackend(engine->get()), o, false).status().code(),
            absl::StatusCode::kInvalidArgument);
  o.prefix_lengths = {500};
  EXPECT_EQ(EvaluateMemorization(canary, *counts, FromBackend(engine->get()), o, false).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace rag::eval

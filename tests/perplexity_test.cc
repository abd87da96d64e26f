#include "eval/perplexity.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cmath>
#include <map>

#include "lm/knnlm.h"
#include "lm/model_config.h"
#include "lm/scorer.h"
#include "lm/transformer_lm.h"
#include "tests/status_matchers.h"
#include "tests/test_util.h"

namespace rag::eval {
namespace {

lm::Tokenizer TinyTokenizer() {
  std::vector<std::string> texts;
  for (const auto& d : testing::MakeCorpus(4, 9)) texts.push_back(d.text);
  lm::TokenizerTrainOptions o;
  o.vocab_size = 280;
  return *lm::Tokenizer::Train(texts, o);
}

TEST(UnigramPerplexityTest, MatchesAHandComputedValue) {
  lm::Tokenizer tok = TinyTokenizer();
  std::vector<Document> train = {{"t", "aab"}};
  std::vector<Document> eval = {{"e", "ab"}};
  auto train_ids = tok.Encode("aab");
  auto eval_ids = tok.Encode("ab");
  // Add-one counts over the whole vocabulary.
  std::map<lm::TokenId, double> counts;
  for (auto id : train_ids) counts[id] += 1;
  const double total = tok.vocab_size() + static_cast<double>(train_ids.size());
  double nll = 0;
  for (auto id : eval_ids) nll -= std::log((counts[id] + 1) / total);
  nll /= static_cast<double>(eval_ids.size());
  PerplexityResult r = UnigramPerplexity(tok, train, eval);
  EXPECT_EQ(r.tokens, static_cast<int64_t>(eval_ids.size()));
  EXPECT_NEAR(r.nll, nll, 1e-12);
  EXPECT_NEAR(r.perplexity, std::exp(nll), 1e-9);
}

// A scorer with fixed per-token log-probs: every document's tokens score
// `lm` under the LM and `knn` under the kNN distribution; the headline
// log-prob of a pass interpolates them at lambda 0.5.
DocumentScorer FixedScorer(float lm, float knn, std::vector<ScorePass>* passes) {
  return [=](const Document& d, const ScorePass& pass) -> absl::StatusOr<DocumentScore> {
    passes->push_back(pass);
    DocumentScore s;
    s.tokens = static_cast<int64_t>(d.text.size());
    s.neighbours_filtered = 1;
    s.logprob_sum = static_cast<double>(s.tokens) * lm::InterpolateLogProb(lm, knn, 0.5);
    if (pass.components) {
      s.lm_logprobs.assign(static_cast<size_t>(s.tokens), lm);
      s.knn_logprobs.assign(static_cast<size_t>(s.tokens), knn);
    }
    return s;
  };
}

TEST(EvaluatePerplexityTest, SumsEveryNonEmptyDocument) {
  std::vector<ScorePass> passes;
  std::vector<Document> docs = {{"a", "abcd"}, {"empty", ""}, {"b", "ef"}};
  auto r = EvaluatePerplexity(docs, FixedScorer(-1.0f, -3.0f, &passes));
  RAG_ASSERT_OK(r.status());
  EXPECT_EQ(passes.size(), 2u);  // the empty document is not scored
  EXPECT_FALSE(passes[0].temperature.has_value());
  EXPECT_FALSE(passes[0].components);
  EXPECT_EQ(r->documents, 2);
  EXPECT_EQ(r->tokens, 6);
  EXPECT_EQ(r->neighbours_filtered, 2);
  const double nll = -static_cast<double>(lm::InterpolateLogProb(-1.0f, -3.0f, 0.5));
  EXPECT_NEAR(r->nll, nll, 1e-6);
  EXPECT_NEAR(r->perplexity, std::exp(nll), 1e-6);
  EXPECT_TRUE(r->sweep.empty());
}

TEST(EvaluatePerplexityTest, SweepsLambdasInOnePassAndTemperaturesInOneEach) {
  std::vector<ScorePass> passes;
  std::vector<Document> docs = {{"a", "abcd"}, {"b", "ef"}};
  PerplexityOptions o;
  o.sweep.lambdas = {0, 0.5, 1};
  o.sweep.temperatures = {1, 10};
  auto r = EvaluatePerplexity(docs, FixedScorer(-1.0f, -3.0f, &passes), o);
  RAG_ASSERT_OK(r.status());
  ASSERT_EQ(passes.size(), 4u);  // two documents, two temperatures each
  EXPECT_EQ(passes[0].temperature, 1.0);
  EXPECT_EQ(passes[1].temperature, 10.0);
  EXPECT_TRUE(passes[0].components);
  EXPECT_EQ(r->tokens, 6);  // counted on the first temperature's pass only
  EXPECT_NEAR(r->lm_perplexity, std::exp(1.0), 1e-9);
  ASSERT_EQ(r->sweep.size(), 6u);  // temperature-major
  EXPECT_EQ(r->sweep[0].temperature, 1.0);
  EXPECT_EQ(r->sweep[3].temperature, 10.0);
  EXPECT_DOUBLE_EQ(r->sweep[0].perplexity, r->lm_perplexity);  // lambda 0 is the LM
  EXPECT_DOUBLE_EQ(r->sweep[0].change_vs_lm, 0.0);
  EXPECT_NEAR(r->sweep[2].perplexity, std::exp(3.0), 1e-6);  // lambda 1 is the kNN distribution
  EXPECT_NEAR(r->sweep[1].perplexity, std::exp(-lm::InterpolateLogProb(-1.0f, -3.0f, 0.5)), 1e-6);
  EXPECT_NEAR(r->sweep[4].change_vs_lm, r->sweep[4].perplexity / r->lm_perplexity - 1, 1e-12);
}

TEST(EvaluatePerplexityTest, ReturnsTheScorersErrorAndStopsWhenAsked) {
  std::vector<Document> docs = {{"a", "abcd"}, {"b", "ef"}};
  DocumentScorer failing = [](const Document& d, const ScorePass&) -> absl::StatusOr<DocumentScore> {
    return absl::UnavailableError("down: " + d.id);
  };
  auto r = EvaluatePerplexity(docs, failing);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(r.status().message(), "down: a");
  std::vector<ScorePass> passes;
  std::atomic<bool> stop{true};
  PerplexityOptions o;
  o.stop = &stop;
  r = EvaluatePerplexity(docs, FixedScorer(-1.0f, -3.0f, &passes), o);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(passes.size(), 1u);  // checked after each document
}

TEST(ScorerTest, SlidingWindowsEqualOnePassWhenTheTextFits) {
  lm::Tokenizer tok = TinyTokenizer();
  lm::TransformerConfig c = *lm::TransformerConfig::Preset("tiny");
  c.vocab_size = tok.vocab_size();
  c.context = 64;
  torch::manual_seed(3);
  lm::TransformerLM model(c);
  model->eval();
  auto ids = tok.Encode(testing::MakeCorpus(1, 4, 3)[0].text);
  ids.resize(40);
  auto one_pass = lm::ScoreTokens(model, ids, tok.eot_id());
  ASSERT_EQ(one_pass.size(), 40u);
  // Direct computation: log-softmax of [eot, ids[:-1]] at each target.
  std::vector<int64_t> in = {tok.eot_id()};
  for (size_t i = 0; i + 1 < ids.size(); ++i) in.push_back(ids[i]);
  torch::NoGradGuard no_grad;
  auto logp = torch::log_softmax(model->forward(torch::tensor(in).unsqueeze(0)), -1);
  for (size_t i = 0; i < ids.size(); ++i) {
    EXPECT_NEAR(one_pass[i], logp[0][static_cast<int64_t>(i)][ids[i]].item<float>(), 1e-5);
  }
  // A text longer than the context is scored in full, every token once, and
  // the tokens of the first window score exactly as above.
  auto long_ids = tok.Encode(testing::MakeCorpus(1, 5, 30)[0].text);
  ASSERT_GT(long_ids.size(), 200u);
  lm::ScoreOptions opts;
  opts.stride = 16;
  auto windows = lm::ScoreTokens(model, long_ids, tok.eot_id(), opts);
  EXPECT_EQ(windows.size(), long_ids.size());
  std::vector<lm::TokenId> head(long_ids.begin(), long_ids.begin() + 64);
  auto head_scores = lm::ScoreTokens(model, head, tok.eot_id());
  for (size_t i = 0; i < 64; ++i) EXPECT_NEAR(windows[i], head_scores[i], 1e-5);
  for (float lp : windows) EXPECT_LE(lp, 0.0f);
  EXPECT_TRUE(lm::ScoreTokens(model, {}, tok.eot_id()).empty());
}

}  // namespace
}  // namespace rag::eval

#include "eval/perplexity.h"

#include <gtest/gtest.h>

#include <cmath>

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

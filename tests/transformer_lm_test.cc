#include "lm/transformer_lm.h"

#include <gtest/gtest.h>

#include "lm/generator.h"

namespace rag::lm {
namespace {

TransformerConfig TinyConfig(const std::string& positions) {
  TransformerConfig c = *TransformerConfig::Preset("tiny");
  c.vocab_size = 97;
  c.context = 32;
  c.positions = positions;
  return c;
}

class TransformerLMTest : public ::testing::TestWithParam<std::string> {};

TEST_P(TransformerLMTest, ShapesAndTiedEmbedding) {
  torch::manual_seed(0);
  TransformerLM model(TinyConfig(GetParam()));
  auto tokens = torch::randint(0, 97, {3, 17}, torch::kLong);
  auto hidden = model->ForwardHidden(tokens);
  EXPECT_EQ(hidden.sizes(), (std::vector<int64_t>{3, 17, 64}));
  auto logits = model->forward(tokens);
  EXPECT_EQ(logits.sizes(), (std::vector<int64_t>{3, 17, 97}));
  // Tied: the output layer is the token embedding.
  auto expect = torch::matmul(hidden, model->token_embedding->weight.t());
  EXPECT_TRUE(torch::allclose(logits, expect, 1e-5, 1e-5));
}

TEST_P(TransformerLMTest, Causality) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(1);
  TransformerLM model(TinyConfig(GetParam()));
  model->eval();
  auto tokens = torch::randint(0, 97, {1, 20}, torch::kLong);
  auto base = model->forward(tokens);
  for (int64_t t : {0, 5, 18}) {
    auto changed = tokens.clone();
    changed[0][t + 1] = (changed[0][t + 1].item<int64_t>() + 1) % 97;
    auto out = model->forward(changed);
    // Positions <= t never see token t + 1...
    EXPECT_TRUE(torch::equal(out.narrow(1, 0, t + 1), base.narrow(1, 0, t + 1))) << "t=" << t;
    // ...and position t + 1 does.
    EXPECT_FALSE(torch::allclose(out.narrow(1, t + 1, 1), base.narrow(1, t + 1, 1)));
  }
}

TEST_P(TransformerLMTest, KVCacheMatchesFullForward) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(2);
  TransformerLM model(TinyConfig(GetParam()));
  model->eval();
  auto tokens = torch::randint(0, 97, {2, 24}, torch::kLong);
  auto full = model->ForwardHidden(tokens);
  KVCache cache;
  std::vector<torch::Tensor> parts;
  parts.push_back(model->ForwardHidden(tokens.narrow(1, 0, 10), &cache));
  for (int64_t t = 10; t < 24; ++t) parts.push_back(model->ForwardHidden(tokens.narrow(1, t, 1), &cache));
  EXPECT_EQ(cache.length(), 24);
  EXPECT_TRUE(torch::allclose(torch::cat(parts, 1), full, 1e-4, 1e-5));
}

TEST_P(TransformerLMTest, ContextOverflowThrows) {
  torch::manual_seed(3);
  TransformerLM model(TinyConfig(GetParam()));
  auto tokens = torch::zeros({1, 33}, torch::kLong);
  EXPECT_THROW(model->forward(tokens), c10::Error);
}

TEST_P(TransformerLMTest, CachedGenerationEqualsRecompute) {
  torch::manual_seed(4);
  TransformerLM model(TinyConfig(GetParam()));
  model->eval();
  std::vector<TokenId> prompt = {5, 17, 42, 8};
  for (double temperature : {0.0, 0.8}) {
    SamplingOptions opts;
    opts.max_tokens = 20;
    opts.temperature = temperature;
    opts.top_k = 20;
    opts.seed = 7;
    opts.stop_at_eot = false;
    opts.use_cache = true;
    auto cached = Generate(model, prompt, 96, opts);
    opts.use_cache = false;
    auto recomputed = Generate(model, prompt, 96, opts);
    ASSERT_TRUE(cached.ok() && recomputed.ok());
    EXPECT_EQ(cached->size(), 20u);
    EXPECT_EQ(*cached, *recomputed) << "temperature " << temperature;
  }
}

INSTANTIATE_TEST_SUITE_P(Positions, TransformerLMTest, ::testing::Values("rotary", "learned"));

TEST(RotaryTest, RelativeAttentionScoresDependOnOffsetOnly) {
  // <R(p) q, R(p') k> depends on p - p' only: shifting both positions by the
  // same amount leaves the score unchanged.
  torch::manual_seed(5);
  auto q = torch::randn({1, 1, 1, 8});
  auto k = torch::randn({1, 1, 1, 8});
  auto score = [&](int64_t pq, int64_t pk) {
    auto rq = ApplyRotary(q, torch::tensor({pq}), 10000.0);
    auto rk = ApplyRotary(k, torch::tensor({pk}), 10000.0);
    return (rq * rk).sum().item<double>();
  };
  EXPECT_NEAR(score(7, 3), score(107, 103), 1e-4);
  EXPECT_GT(std::abs(score(7, 3) - score(7, 5)), 1e-4);
}

TEST(SamplingTest, TopKAndTopPRestrictTheSupport) {
  auto logits = torch::tensor({0.0f, 1.0f, 2.0f, 3.0f, 4.0f});
  SamplingOptions greedy;
  greedy.temperature = 0;
  uint64_t rng = 1;
  EXPECT_EQ(SampleToken(logits, greedy, &rng), 4);
  SamplingOptions k2;
  k2.top_k = 2;
  SamplingOptions p;
  p.top_p = 0.5;  // token 4 alone has mass 0.64
  for (int i = 0; i < 200; ++i) {
    TokenId a = SampleToken(logits, k2, &rng);
    EXPECT_TRUE(a == 3 || a == 4);
    EXPECT_EQ(SampleToken(logits, p, &rng), 4);
  }
}

// Rows past the tokenizer's vocabulary (Pythia: 50304 rows, 50277 tokens)
// are never sampled, greedy or not, however likely the model makes them.
TEST(SamplingTest, RowsPastTheTokenizerAreNeverSampled) {
  auto logits = torch::tensor({0.0f, 1.0f, 0.5f, 9.0f, 8.0f});  // rows 3, 4: no token
  SamplingOptions greedy;
  greedy.temperature = 0;
  greedy.num_tokens = 3;
  uint64_t rng = 7;
  EXPECT_EQ(SampleToken(logits, greedy, &rng), 1);
  SamplingOptions hot;
  hot.temperature = 5;
  hot.num_tokens = 3;
  for (int i = 0; i < 500; ++i) EXPECT_LT(SampleToken(logits, hot, &rng), 3);
  hot.num_tokens = 0;  // every row
  bool saw_padding = false;
  for (int i = 0; i < 500 && !saw_padding; ++i) saw_padding = SampleToken(logits, hot, &rng) >= 3;
  EXPECT_TRUE(saw_padding);
}

TEST(ConfigTest, PresetsValidateAndRoundTrip) {
  for (const char* name : {"tiny", "small", "base"}) {
    auto c = TransformerConfig::Preset(name);
    ASSERT_TRUE(c.ok());
    EXPECT_TRUE(c->Validate().ok());
    auto back = TransformerConfig::FromJson(c->ToJson());
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(back->ToJson(), c->ToJson());
  }
  EXPECT_EQ(TransformerConfig::Preset("huge").status().code(), absl::StatusCode::kInvalidArgument);
  TransformerConfig c = *TransformerConfig::Preset("tiny");
  EXPECT_FALSE(c.ApplyOverrides(R"({"n_heads": 3})").ok());          // 64 % 3 != 0
  EXPECT_FALSE(c.ApplyOverrides(R"({"d_modle": 32})").ok());         // typo: unknown key
  EXPECT_FALSE(c.ApplyOverrides(R"({"positions": "alibi"})").ok());
  EXPECT_FALSE(c.ApplyOverrides("{not json").ok());
  EXPECT_TRUE(c.ApplyOverrides(R"({"n_layers": 3, "positions": "learned"})").ok());
  EXPECT_EQ(c.n_layers, 3);
}

}  // namespace
}  // namespace rag::lm

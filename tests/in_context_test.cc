// lm/in_context against windows laid out by hand from In-Context RALM's
// description (Ram et al. 2023): the passage, then as much of the text
// before each predicted token as fits, run through the model directly.
#include "lm/in_context.h"

#include <gtest/gtest.h>

#include "lm/scorer.h"

namespace rag::lm {
namespace {

constexpr TokenId kBos = 0;
constexpr int64_t kVocab = 97;
constexpr int64_t kContext = 32;

TransformerLM TinyModel() {
  TransformerConfig c = *TransformerConfig::Preset("tiny");
  c.vocab_size = kVocab;
  c.context = kContext;
  torch::manual_seed(7);
  TransformerLM model(c);
  model->eval();
  return model;
}

std::vector<TokenId> RandomTokens(int64_t n, int64_t seed) {
  std::vector<TokenId> t;
  for (int64_t i = 0; i < n; ++i) t.push_back(static_cast<TokenId>(1 + (seed * 31 + i * 17 + i * i) % (kVocab - 1)));
  return t;
}

// log p(tokens[t]) after the window `input`, run alone.
float LogProbAfter(TransformerLM& model, const std::vector<int64_t>& input, TokenId target) {
  torch::NoGradGuard no_grad;
  auto x = torch::tensor(input, torch::kLong).unsqueeze(0);
  auto logits = model->forward(x)[0][x.size(1) - 1];
  return torch::log_softmax(logits, -1)[target].item<float>();
}

// The window of the paper's layout for token t of the block [begin, end):
// passage, then [bos, tokens...] from the first position that lets the
// whole block fit the context, up to t.
std::vector<int64_t> HandWindow(const std::vector<TokenId>& tokens, const std::vector<TokenId>& passage,
                                int64_t block_end, int64_t t) {
  std::vector<int64_t> seq = {kBos};
  seq.insert(seq.end(), tokens.begin(), tokens.end());
  const int64_t room = kContext - static_cast<int64_t>(passage.size());  // for [bos, tokens...]
  const int64_t start = std::max<int64_t>(0, block_end - room);
  std::vector<int64_t> w(passage.begin(), passage.end());
  w.insert(w.end(), seq.begin() + start, seq.begin() + t + 1);  // seq[t] predicts tokens[t]
  return w;
}

TEST(InContextTest, EmptyPassagesOnAShortTextAreThePlainLm) {
  TransformerLM model = TinyModel();
  const auto tokens = RandomTokens(kContext - 1, 1);
  std::vector<InContextBlock> blocks;
  for (int64_t b = 0; b < static_cast<int64_t>(tokens.size()); b += 4) blocks.push_back({b, b + 4, {}});
  const std::vector<float> got = ScoreInContext(model, tokens, kBos, blocks);
  const std::vector<float> want = ScoreTokens(model, tokens, kBos);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-4) << i;
}

TEST(InContextTest, EveryTokenMatchesItsHandLaidWindow) {
  TransformerLM model = TinyModel();
  const auto tokens = RandomTokens(70, 2);  // longer than the context: windows slide
  const int64_t s = 4;
  std::vector<InContextBlock> blocks;
  for (int64_t b = 0; b < 70; b += s) {
    // A passage of 12 tokens for every block but the first; its tokens
    // depend on the block, as retrieved ones would.
    blocks.push_back({b, b + s, b == 0 ? std::vector<TokenId>{} : RandomTokens(12, 100 + b)});
  }
  InContextOptions o;
  o.batch_windows = 3;  // batches mix windows of different lengths
  const std::vector<float> got = ScoreInContext(model, tokens, kBos, blocks, o);
  ASSERT_EQ(got.size(), tokens.size());
  int64_t slid = 0;
  for (const InContextBlock& block : blocks) {
    for (int64_t t = block.begin; t < std::min<int64_t>(block.end, 70); ++t) {
      const auto w = HandWindow(tokens, block.passage, block.end, t);
      ASSERT_LE(static_cast<int64_t>(w.size()), kContext);
      if (w.size() > block.passage.size() && w[block.passage.size()] != kBos) ++slid;
      EXPECT_NEAR(got[static_cast<size_t>(t)], LogProbAfter(model, w, tokens[static_cast<size_t>(t)]), 1e-4)
          << "token " << t;
      // The same distribution when the text stops before the token.
      const std::vector<TokenId> prefix(tokens.begin(), tokens.begin() + t);
      auto logits = InContextNextTokenLogits(model, prefix, block, kBos);
      EXPECT_NEAR(torch::log_softmax(logits, -1)[tokens[static_cast<size_t>(t)]].item<float>(),
                  got[static_cast<size_t>(t)], 1e-4)
          << "next token at " << t;
    }
  }
  EXPECT_GT(slid, 20);  // most windows start inside the text, not at bos
}

TEST(InContextTest, ThePassageChangesThePrediction) {
  TransformerLM model = TinyModel();
  const auto tokens = RandomTokens(12, 3);
  const std::vector<float> bare = ScoreInContext(model, tokens, kBos, {{0, 4, {}}, {4, 8, {}}, {8, 12, {}}});
  const std::vector<float> fed =
      ScoreInContext(model, tokens, kBos, {{0, 4, {}}, {4, 8, RandomTokens(9, 4)}, {8, 12, {}}});
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(bare[i], fed[i], 1e-5);
  for (int i = 4; i < 8; ++i) EXPECT_GT(std::abs(bare[i] - fed[i]), 1e-4) << i;
  for (int i = 8; i < 12; ++i) EXPECT_NEAR(bare[i], fed[i], 1e-5);
}

TEST(InContextTest, ALongPassageKeepsItsFirstTokens) {
  TransformerLM model = TinyModel();
  const auto tokens = RandomTokens(10, 5);
  const auto passage = RandomTokens(40, 6);  // more than the context
  const std::vector<TokenId> kept(passage.begin(), passage.begin() + (kContext - 4));
  const std::vector<float> got = ScoreInContext(model, tokens, kBos, {{0, 4, {}}, {4, 8, passage}, {8, 12, {}}});
  const std::vector<float> want = ScoreInContext(model, tokens, kBos, {{0, 4, {}}, {4, 8, kept}, {8, 12, {}}});
  ASSERT_EQ(got.size(), 10u);
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 1e-5) << i;
  const auto logits = InContextNextTokenLogits(model, std::vector<TokenId>(tokens.begin(), tokens.begin() + 6),
                                               {4, 8, passage}, kBos);
  EXPECT_NEAR(torch::log_softmax(logits, -1)[tokens[6]].item<float>(), want[6], 1e-4);
}

TEST(InContextTest, StopsWhenAsked) {
  TransformerLM model = TinyModel();
  const auto tokens = RandomTokens(40, 8);
  std::vector<InContextBlock> blocks;
  for (int64_t b = 0; b < 40; b += 4) blocks.push_back({b, b + 4, {}});
  int asked = 0;
  InContextOptions o;
  o.batch_windows = 2;
  o.should_stop = [&asked] { return ++asked > 2; };
  EXPECT_EQ(ScoreInContext(model, tokens, kBos, blocks, o).size(), 16u);  // two batches of two blocks
}

}  // namespace
}  // namespace rag::lm

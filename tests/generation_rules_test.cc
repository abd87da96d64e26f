// repetition_penalty and no_repeat_ngram_size: against an independent numpy
// implementation written from Hugging Face's description
// (tests/generation/repetition_reference.py, run by a ctest fixture), and in
// generation from a real (untrained) model.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "lm/generator.h"
#include "tests/lm_test_util.h"

namespace rag::lm {
namespace {

TEST(GenerationRulesTest, MatchesTheNumpyReference) {
  std::ifstream in(RAG_REPETITION_REFERENCE);
  ASSERT_TRUE(in) << "missing " << RAG_REPETITION_REFERENCE << " (made by the repetition_reference fixture)";
  const nlohmann::json ref = nlohmann::json::parse(in);
  ASSERT_GE(ref["cases"].size(), 50u);
  int banned = 0, penalised = 0;
  for (size_t c = 0; c < ref["cases"].size(); ++c) {
    const auto& k = ref["cases"][c];
    const std::vector<float> scores = k["scores"].get<std::vector<float>>();
    SamplingOptions o;
    o.repetition_penalty = k["repetition_penalty"].get<double>();
    o.no_repeat_ngram_size = k["no_repeat_ngram_size"].get<int64_t>();
    const std::vector<TokenId> history = k["history"].get<std::vector<TokenId>>();
    const torch::Tensor out = ApplyRepetitionRules(torch::tensor(scores), history, o).contiguous();
    ASSERT_EQ(out.numel(), static_cast<int64_t>(scores.size()));
    const float* got = out.data_ptr<float>();
    for (size_t i = 0; i < scores.size(); ++i) {
      const auto& want = k["expected"][i];
      if (want.is_null()) {
        EXPECT_TRUE(std::isinf(got[i]) && got[i] < 0) << "case " << c << " token " << i << " should be banned";
        ++banned;
      } else {
        EXPECT_NEAR(got[i], want.get<double>(), 1e-5 * (1 + std::abs(want.get<double>())))
            << "case " << c << " token " << i;
        penalised += got[i] != scores[i];
      }
    }
  }
  // The cases exercise both rules.
  EXPECT_GT(banned, 20);
  EXPECT_GT(penalised, 20);
}

// n-grams of the prompt + output, n tokens each.
std::multiset<std::vector<TokenId>> Ngrams(const std::vector<TokenId>& seq, size_t n) {
  std::multiset<std::vector<TokenId>> grams;
  for (size_t i = 0; i + n <= seq.size(); ++i) grams.insert(std::vector<TokenId>(seq.begin() + i, seq.begin() + i + n));
  return grams;
}

size_t Repeats(const std::multiset<std::vector<TokenId>>& grams) {
  return grams.size() - std::set<std::vector<TokenId>>(grams.begin(), grams.end()).size();
}

// Greedy generation from an untrained tiny model, on past end-of-text.
class GreedyGenerationTest : public ::testing::Test {
 protected:
  void SetUp() override { model_->module()->eval(); }

  std::vector<TokenId> Encode(const std::string& text) const { return model_->tokenizer().Encode(text); }
  // The prompt followed by max_tokens greedy tokens under the rules of `o`.
  std::vector<TokenId> Continue(const std::vector<TokenId>& prompt, int max_tokens, SamplingOptions o = {}) {
    o.temperature = 0;
    o.max_tokens = max_tokens;
    o.stop_at_eot = false;
    auto out = Generate(model_->module(), prompt, model_->tokenizer().eot_id(), o);
    EXPECT_TRUE(out.ok()) << out.status();
    std::vector<TokenId> seq = prompt;
    if (out.ok()) seq.insert(seq.end(), out->begin(), out->end());
    return seq;
  }

  std::unique_ptr<LanguageModel> model_ = rag::testing::MakeTinyLanguageModel();
};

TEST_F(GreedyGenerationTest, RepeatsNoNgramWhenAsked) {
  const std::vector<TokenId> prompt = Encode("the cat sat on the mat and the cat");
  // An untrained model's greedy output loops: the rule has work to do.
  ASSERT_GT(Repeats(Ngrams(Continue(prompt, 80), 3)), 0u);

  SamplingOptions o;
  o.no_repeat_ngram_size = 3;
  const std::vector<TokenId> ruled = Continue(prompt, 80, o);
  ASSERT_EQ(ruled.size(), prompt.size() + 80);
  // The prompt may repeat itself; nothing the model added repeats a trigram.
  EXPECT_EQ(Repeats(Ngrams(ruled, 3)), Repeats(Ngrams(prompt, 3)));
}

TEST_F(GreedyGenerationTest, RepetitionPenaltyMakesTheOutputMoreVaried) {
  const std::vector<TokenId> prompt = Encode("the cat sat on the mat");
  auto distinct = [&](double penalty) {
    SamplingOptions o;
    o.repetition_penalty = penalty;
    const std::vector<TokenId> seq = Continue(prompt, 60, o);
    return std::set<TokenId>(seq.begin() + static_cast<std::ptrdiff_t>(prompt.size()), seq.end()).size();
  };
  const size_t plain = distinct(1.0);
  EXPECT_GT(distinct(3.0), plain);
}

TEST(GenerationRulesTest, OptionsOutOfRangeAreRejected) {
  SamplingOptions o;
  EXPECT_TRUE(ValidateSamplingOptions(o).ok());
  o.repetition_penalty = 0;
  EXPECT_EQ(ValidateSamplingOptions(o).code(), absl::StatusCode::kInvalidArgument);
  o.repetition_penalty = std::nan("");
  EXPECT_EQ(ValidateSamplingOptions(o).code(), absl::StatusCode::kInvalidArgument);
  o.repetition_penalty = 1.2;
  o.no_repeat_ngram_size = -1;
  EXPECT_EQ(ValidateSamplingOptions(o).code(), absl::StatusCode::kInvalidArgument);
  auto model = rag::testing::MakeTinyLanguageModel();
  EXPECT_EQ(Generate(model->module(), {1, 2}, model->tokenizer().eot_id(), o).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace rag::lm

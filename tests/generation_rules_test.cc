// repetition_penalty and no_repeat_ngram_size: against an independent numpy
// implementation written from Hugging Face's description
// (tests/generation/repetition_reference.py, run by a ctest fixture), and in
// generation from a real (untrained) model.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
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

TEST(GenerationRulesTest, GreedyGenerationRepeatsNoNgramWhenAsked) {
  auto model = rag::testing::MakeTinyLanguageModel();
  model->module()->eval();
  const std::vector<TokenId> prompt = model->tokenizer().Encode("the cat sat on the mat and the cat");
  SamplingOptions o;
  o.temperature = 0;
  o.max_tokens = 80;
  o.stop_at_eot = false;
  auto plain = Generate(model->module(), prompt, model->tokenizer().eot_id(), o);
  ASSERT_TRUE(plain.ok()) << plain.status();
  std::vector<TokenId> seq = prompt;
  seq.insert(seq.end(), plain->begin(), plain->end());
  // An untrained model's greedy output loops: the rule has work to do.
  ASSERT_GT(Repeats(Ngrams(seq, 3)), 0u);

  o.no_repeat_ngram_size = 3;
  auto ruled = Generate(model->module(), prompt, model->tokenizer().eot_id(), o);
  ASSERT_TRUE(ruled.ok()) << ruled.status();
  ASSERT_EQ(ruled->size(), 80u);
  seq = prompt;
  seq.insert(seq.end(), ruled->begin(), ruled->end());
  // The prompt may repeat itself; nothing the model added repeats a trigram.
  const size_t prompt_repeats = Repeats(Ngrams(prompt, 3));
  EXPECT_EQ(Repeats(Ngrams(seq, 3)), prompt_repeats);
}

TEST(GenerationRulesTest, RepetitionPenaltyMakesGreedyOutputMoreVaried) {
  auto model = rag::testing::MakeTinyLanguageModel();
  model->module()->eval();
  const std::vector<TokenId> prompt = model->tokenizer().Encode("the cat sat on the mat");
  SamplingOptions o;
  o.temperature = 0;
  o.max_tokens = 60;
  o.stop_at_eot = false;
  auto distinct = [&](double penalty) {
    o.repetition_penalty = penalty;
    auto out = Generate(model->module(), prompt, model->tokenizer().eot_id(), o);
    EXPECT_TRUE(out.ok()) << out.status();
    return std::set<TokenId>(out->begin(), out->end()).size();
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

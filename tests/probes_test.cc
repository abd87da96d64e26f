#include "eval/probes.h"

#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "lm/scorer.h"
#include "tests/lm_test_util.h"
#include "tests/status_matchers.h"

namespace rag::eval {
namespace {

TEST(ProbeParsingTest, BothShapesAndCandidates) {
  const std::string jsonl =
      R"({"sub_label": "gold", "obj_label": "Au", "predicate_id": "symbol", "masked_sentences": ["The chemical symbol of gold is [MASK]."], "evidence_doc_id": "doc-7"})"
      "\n\n"
      R"({"sub_label": "iron", "obj_label": "Fe", "predicate_id": "symbol", "template": "The chemical symbol of [X] is [Y]."})"
      "\n"
      R"({"sub_label": "Paris", "obj_label": "France", "predicate_id": "capital", "template": "[X] is the capital of [Y].", "candidates": ["Spain", "Italy", "Spain"]})"
      "\n"
      R"({"obj_label": "Au", "predicate_id": "symbol", "masked_sentences": ["Gold: [MASK].", "Its symbol is [MASK]."]})"
      "\n";
  auto probes = ParseProbes(jsonl, "p.jsonl");
  RAG_ASSERT_OK(probes.status());
  ASSERT_EQ(probes->size(), 4u);
  const Probe& a = (*probes)[0];
  EXPECT_EQ(a.line, 1);
  EXPECT_EQ(a.relation, "symbol");
  EXPECT_EQ(a.subject, "gold");
  EXPECT_EQ(a.object, "Au");
  EXPECT_EQ(a.sentences, std::vector<std::string>{"The chemical symbol of gold is [MASK]."});
  // Without candidates: the relation's distinct objects, in order.
  EXPECT_EQ(a.candidates, (std::vector<std::string>{"Au", "Fe"}));
  EXPECT_EQ(a.evidence_doc_id, "doc-7");
  const Probe& b = (*probes)[1];
  EXPECT_EQ(b.line, 3);  // the blank line still counts
  EXPECT_EQ(b.sentences, std::vector<std::string>{"The chemical symbol of iron is [MASK]."});
  const Probe& c = (*probes)[2];
  EXPECT_EQ(c.sentences, std::vector<std::string>{"Paris is the capital of [MASK]."});
  // Given candidates, deduplicated, and the gold object added.
  EXPECT_EQ(c.candidates, (std::vector<std::string>{"Spain", "Italy", "France"}));
  EXPECT_EQ((*probes)[3].sentences.size(), 2u);
}

TEST(ProbeParsingTest, MalformedLinesNameTheLine) {
  const std::string good =
      R"({"sub_label": "a", "obj_label": "b", "predicate_id": "r", "template": "[X] is [Y]."})";
  auto expect_error = [&](const std::string& bad, const std::string& needle) {
    auto r = ParseProbes(good + "\n" + good + "\n" + bad + "\n", "probes.jsonl");
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find("probes.jsonl:3: "), std::string::npos) << r.status();
    EXPECT_NE(r.status().message().find(needle), std::string::npos) << r.status();
  };
  expect_error("{not json", "not valid JSON");
  expect_error("[1, 2]", "JSON object");
  expect_error(R"({"sub_label": "a", "predicate_id": "r", "template": "[X] is [Y]."})", "obj_label");
  expect_error(R"({"sub_label": "a", "obj_label": "", "template": "[X] is [Y]."})", "obj_label");
  expect_error(R"({"sub_label": "a", "obj_label": "b"})", "exactly one of");
  expect_error(R"({"obj_label": "b", "masked_sentences": ["[MASK] and [MASK]"]})", "exactly once");
  expect_error(R"({"obj_label": "b", "masked_sentences": ["no slot"]})", "exactly once");
  expect_error(R"({"obj_label": "b", "masked_sentences": []})", "non-empty array");
  expect_error(R"({"obj_label": "b", "template": "[X] is b."})", "[Y]");
  expect_error(R"({"obj_label": "b", "template": "[X] is [Y]."})", "sub_label");
  expect_error(R"({"sub_label": "a", "obj_label": "b", "template": "[X] is [Y].", "candidates": [3]})",
               "candidates");
  expect_error(R"({"sub_label": "a", "obj_label": "b", "template": "[X] is [Y].", "evidence_doc_id": 5})",
               "evidence_doc_id");
  expect_error(R"({"sub_label": "a [MASK]", "obj_label": "b", "template": "[X] is [Y]."})", "must not hold [MASK]");
  auto empty = ParseProbes("\n  \n", "e.jsonl");
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(empty.status().message().find("no probes"), std::string::npos);
}

// Found by fuzz_probes: a subject holding "[Y]" became a second slot.
TEST(ProbeParsingTest, SubjectHoldingTheSlotMarkerStaysText) {
  auto r = ParseProbes(R"({"sub_label": "Par] is [Y] of", "obj_label": "b", "template": "[X] is [Y]."})");
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->size(), 1u);
  EXPECT_EQ((*r)[0].sentences, std::vector<std::string>{"Par] is [Y] of is [MASK]."});
}

TEST(ProbeMetricsTest, RanksAndMetricsOnAHandComputedExample) {
  EXPECT_EQ(RankOf({-1.0, -2.0, -3.0}, 0), 1);
  EXPECT_EQ(RankOf({-1.0, -2.0, -3.0}, 2), 3);
  EXPECT_EQ(RankOf({-1.0, -1.0, -3.0}, 1), 2);  // a tie counts against the gold object
  EXPECT_EQ(RankOf({-5.0, -5.0, -5.0}, 0), 3);  // a model that cannot tell gets no credit

  // Three probes; the scorer gives each sentence a fixed total on its last
  // token, so the ranks are known: 1 (capital), 2 (capital), 3 (symbol).
  auto probes = ParseProbes(
      R"({"sub_label": "Paris", "obj_label": "France", "predicate_id": "capital", "template": "[X] is in [Y].", "candidates": ["Spain", "Italy"]})"
      "\n"
      R"({"sub_label": "Rome", "obj_label": "Italy", "predicate_id": "capital", "template": "[X] is in [Y].", "candidates": ["France", "Spain"]})"
      "\n"
      R"({"sub_label": "gold", "obj_label": "Au", "predicate_id": "symbol", "template": "[X] is [Y].", "candidates": ["Fe", "Cu"]})");
  RAG_ASSERT_OK(probes.status());
  const std::map<std::string, float> total = {
      {"Paris is in France.", -1}, {"Paris is in Spain.", -2},  {"Paris is in Italy.", -3},
      {"Rome is in Italy.", -2},   {"Rome is in France.", -1},  {"Rome is in Spain.", -4},
      {"gold is Au.", -9},         {"gold is Fe.", -1},         {"gold is Cu.", -2}};
  auto model = testing::MakeTinyLanguageModel();
  const lm::Tokenizer& tok = model->tokenizer();
  TokenScorer scorer = [&](const std::string& text, const Probe&) -> absl::StatusOr<std::vector<float>> {
    std::vector<float> lp(tok.Encode(text).size(), 0.0f);
    lp.back() = total.at(text);
    return lp;
  };
  auto report = EvaluateProbes(*probes, tok, scorer);
  RAG_ASSERT_OK(report.status());
  ASSERT_EQ(report->results.size(), 3u);
  EXPECT_EQ(report->results[0].rank, 1);
  EXPECT_EQ(report->results[1].rank, 2);
  EXPECT_EQ(report->results[2].rank, 3);
  EXPECT_EQ(report->results[1].top, "France");
  EXPECT_EQ(report->overall.probes, 3);
  EXPECT_NEAR(report->overall.p_at_1, 1.0 / 3, 1e-12);
  EXPECT_NEAR(report->overall.p_at_10, 1.0, 1e-12);
  EXPECT_NEAR(report->overall.mrr, (1.0 + 1.0 / 2 + 1.0 / 3) / 3, 1e-12);
  ASSERT_EQ(report->by_relation.size(), 2u);
  EXPECT_NEAR(report->by_relation["capital"].p_at_1, 0.5, 1e-12);
  EXPECT_NEAR(report->by_relation["capital"].mrr, 0.75, 1e-12);
  EXPECT_NEAR(report->by_relation["symbol"].mrr, 1.0 / 3, 1e-12);

  // A scorer error names the probe and the candidate.
  TokenScorer failing = [](const std::string&, const Probe&) -> absl::StatusOr<std::vector<float>> {
    return absl::UnavailableError("server gone");
  };
  auto bad = EvaluateProbes(*probes, tok, failing);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(bad.status().message().find("line 1"), std::string::npos) << bad.status();
}

// With a real model: the sentence score is the sum of the model's token
// log-probabilities, and the first-token score is the model's next-token
// log-probability of the object's first token after the left context alone.
TEST(ProbeScoringTest, ScoresAreTheModelsLogProbabilities) {
  auto model = testing::MakeTinyLanguageModel();
  const lm::Tokenizer& tok = model->tokenizer();
  auto probes = ParseProbes(
      R"({"sub_label": "the cat", "obj_label": "mat", "predicate_id": "on", "template": "[X] sat on the [Y] today.", "candidates": ["dog", "tree house"]})");
  RAG_ASSERT_OK(probes.status());
  TokenScorer scorer = [&](const std::string& text, const Probe&) -> absl::StatusOr<std::vector<float>> {
    return lm::ScoreTokens(model->module(), tok.Encode(text), tok.eot_id());
  };
  auto report = EvaluateProbes(*probes, tok, scorer);
  RAG_ASSERT_OK(report.status());
  const std::string left = "the cat sat on the ";
  for (const CandidateScore& cs : report->results[0].scores) {
    const auto ids = tok.Encode(left + cs.object + " today.");
    double sum = 0;
    for (float lp : lm::ScoreTokens(model->module(), ids, tok.eot_id())) sum += lp;
    EXPECT_NEAR(cs.sentence_logprob, sum, 1e-3) << cs.object;
    const auto left_ids = tok.Encode(left);
    size_t first = 0;
    while (first < left_ids.size() && left_ids[first] == ids[first]) ++first;
    const std::vector<lm::TokenId> context(ids.begin(), ids.begin() + static_cast<int64_t>(first));
    torch::Tensor next = lm::NextTokenLogProbs(model->module(), context, tok.eot_id());
    EXPECT_NEAR(cs.first_token_logprob, next[ids[first]].item<float>(), 1e-3) << cs.object;
  }
  const auto& r = report->results[0];
  std::vector<double> sentence;
  for (const auto& cs : r.scores) sentence.push_back(cs.sentence_logprob);
  EXPECT_EQ(r.rank, RankOf(sentence, 2));  // the gold object was appended last
}

}  // namespace
}  // namespace rag::eval

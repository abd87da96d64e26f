// Request validation (services/request_parsing.h): modes, defaults, and the
// field paths error messages name.
#include "services/request_parsing.h"

#include <gtest/gtest.h>

#include <limits>

#include <string>

namespace rag::services {
namespace {

ParseContext Everything() {
  ParseContext ctx;
  ctx.has_index = true;
  ctx.has_datastore = true;
  ctx.has_counts = true;
  ctx.retro_chunk_size = 4;
  ctx.vocab_size = 100;
  ctx.context = 64;
  return ctx;
}

void ExpectError(const absl::Status& s, absl::StatusCode code, const std::string& needle) {
  EXPECT_EQ(s.code(), code) << s;
  EXPECT_NE(s.message().find(needle), std::string::npos) << s;
}

TEST(RequestParsingTest, ModesRoundTripAndUnservedModesAreRefused) {
  for (Mode m : kAllModes) {
    auto parsed = ParseMode(ModeName(m), Everything());
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, m);
  }
  EXPECT_EQ(*ParseMode("", Everything()), Mode::kLm);
  ExpectError(ParseMode("gpt", Everything()).status(), absl::StatusCode::kInvalidArgument, "mode must be");
  ParseContext bare;
  ExpectError(ParseMode("knnlm", bare).status(), absl::StatusCode::kFailedPrecondition, "datastore");
  ExpectError(ParseMode("retro", bare).status(), absl::StatusCode::kFailedPrecondition, "--arch retro");
  ExpectError(ParseMode("infgram", bare).status(), absl::StatusCode::kFailedPrecondition, "held by this server");
  ExpectError(ParseMode("ralm", bare).status(), absl::StatusCode::kFailedPrecondition, "from an index");
}

TEST(RequestParsingTest, ModeNamesAreReadInOnePlace) {
  for (Mode m : kAllModes) EXPECT_EQ(ModeFromName(ModeName(m)), m);
  EXPECT_EQ(ModeFromName(""), Mode::kLm);
  EXPECT_EQ(ModeFromName("LM"), std::nullopt);
  EXPECT_EQ(ModeFromName("knn-lm"), std::nullopt);
}

TEST(RequestParsingTest, InfgramDefaultsRangesAndExclusion) {
  v1::ScoreRequest r;
  r.set_text("the cat");
  r.set_mode("infgram");
  r.set_exclude_doc_id("d7");
  auto p = ParseScoreRequest(r, Everything());
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_DOUBLE_EQ(p->infgram.lambda, kDefaultInfgramLambda);
  EXPECT_DOUBLE_EQ(p->infgram.lambda_sparse, kDefaultInfgramLambdaSparse);
  EXPECT_EQ(p->infgram.exclude_doc_id, "d7");
  r.mutable_infgram()->set_lambda(0);  // set to 0 is not unset
  r.mutable_infgram()->set_lambda_sparse(1);
  p = ParseScoreRequest(r, Everything());
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_DOUBLE_EQ(p->infgram.lambda, 0);
  EXPECT_DOUBLE_EQ(p->infgram.lambda_sparse, 1);
  r.mutable_infgram()->set_lambda(-0.1f);
  ExpectError(ParseScoreRequest(r, Everything()).status(), absl::StatusCode::kInvalidArgument, "infgram.lambda must");
  r.mutable_infgram()->set_lambda(0.5f);
  r.mutable_infgram()->set_lambda_sparse(std::numeric_limits<float>::quiet_NaN());
  ExpectError(ParseScoreRequest(r, Everything()).status(), absl::StatusCode::kInvalidArgument, "infgram.lambda_sparse");
  v1::GenerateRequest g;
  g.set_mode("infgram");
  g.set_exclude_doc_id("d9");
  g.mutable_infgram()->set_lambda(0.4f);
  auto gp = ParseGenerateRequest(g, Everything());
  ASSERT_TRUE(gp.ok()) << gp.status();
  EXPECT_EQ(gp->infgram.exclude_doc_id, "d9");
  EXPECT_NEAR(gp->infgram.lambda, 0.4, 1e-7);
}

TEST(RequestParsingTest, RalmDefaultsRangesAndPrompt) {
  v1::ScoreRequest r;
  r.set_text("the cat sat");
  r.set_mode("ralm");
  r.set_exclude_doc_id("d3");
  auto p = ParseScoreRequest(r, Everything());
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->ralm.stride, kDefaultRalmStride);
  EXPECT_EQ(p->ralm.query_tokens, kDefaultRalmQueryTokens);
  EXPECT_EQ(p->ralm.passage_tokens, 16);  // a quarter of the context
  EXPECT_EQ(p->ralm.search_method, "dense");
  EXPECT_EQ(p->ralm.exclude_doc_id, "d3");
  r.mutable_ralm()->set_stride(32);  // half the context: the most
  r.mutable_ralm()->set_passage_tokens(32);
  r.mutable_ralm()->set_search_method("bm25");
  p = ParseScoreRequest(r, Everything());
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->ralm.stride, 32);
  EXPECT_EQ(p->ralm.search_method, "bm25");
  r.mutable_ralm()->set_stride(33);
  ExpectError(ParseScoreRequest(r, Everything()).status(), absl::StatusCode::kInvalidArgument,
              "ralm.stride must be in [0, 32]");
  r.mutable_ralm()->set_stride(4);
  r.mutable_ralm()->set_passage_tokens(61);  // with the block, over the context
  ExpectError(ParseScoreRequest(r, Everything()).status(), absl::StatusCode::kInvalidArgument,
              "ralm.passage_tokens must be in [0, 60]");
  r.mutable_ralm()->set_passage_tokens(0);
  r.mutable_ralm()->set_query_tokens(-1);
  ExpectError(ParseScoreRequest(r, Everything()).status(), absl::StatusCode::kInvalidArgument, "ralm.query_tokens");
  r.mutable_ralm()->set_query_tokens(0);
  r.mutable_ralm()->set_search_method("tfidf");
  ExpectError(ParseScoreRequest(r, Everything()).status(), absl::StatusCode::kInvalidArgument,
              "ralm.search_method must be bm25 or dense");
  r.mutable_ralm()->set_search_method("");
  r.set_prompt_bytes(12);
  ExpectError(ParseScoreRequest(r, Everything()).status(), absl::StatusCode::kInvalidArgument, "prompt_bytes");
  v1::GenerateRequest g;
  g.set_mode("ralm");
  g.set_exclude_doc_id("d9");
  g.mutable_ralm()->set_query_tokens(8);
  auto gp = ParseGenerateRequest(g, Everything());
  ASSERT_TRUE(gp.ok()) << gp.status();
  EXPECT_EQ(gp->ralm.exclude_doc_id, "d9");
  EXPECT_EQ(gp->ralm.query_tokens, 8);
}

TEST(RequestParsingTest, KnnDefaultsAndFieldPaths) {
  v1::ScoreRequest r;
  r.set_text("the cat");
  r.set_mode("knnlm");
  auto p = ParseScoreRequest(r, Everything());
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->knn.knn.k, 1024);
  EXPECT_DOUBLE_EQ(p->knn.knn.lambda, 0.25);
  EXPECT_DOUBLE_EQ(p->knn.knn.temperature, 1.0);
  EXPECT_EQ(p->knn.nprobe, kDefaultKnnNprobe);
  EXPECT_DOUBLE_EQ(p->knn.knn.min_entropy, lm::kDefaultKnnMinEntropy);
  r.mutable_knn()->set_min_lm_entropy(-0.5f);
  ExpectError(ParseScoreRequest(r, Everything()).status(), absl::StatusCode::kInvalidArgument, "knn.min_lm_entropy");
  r.mutable_knn()->set_min_lm_entropy(std::numeric_limits<float>::quiet_NaN());
  ExpectError(ParseScoreRequest(r, Everything()).status(), absl::StatusCode::kInvalidArgument, "knn.min_lm_entropy");
  r.mutable_knn()->set_min_lm_entropy(4.5f);
  p = ParseScoreRequest(r, Everything());
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_DOUBLE_EQ(p->knn.knn.min_entropy, 4.5);
  // RetoMaton's threshold: in [0, k], and not with adaptive retrieval.
  EXPECT_EQ(p->knn.knn.min_pointers, lm::kDefaultKnnMinPointers);
  r.mutable_knn()->set_min_pointers(2);
  ExpectError(ParseScoreRequest(r, Everything()).status(), absl::StatusCode::kInvalidArgument,
              "knn.min_pointers and knn.min_lm_entropy");
  r.mutable_knn()->clear_min_lm_entropy();
  p = ParseScoreRequest(r, Everything());
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->knn.knn.min_pointers, 2);
  r.mutable_knn()->set_min_pointers(-1);
  ExpectError(ParseScoreRequest(r, Everything()).status(), absl::StatusCode::kInvalidArgument, "knn.min_pointers");
  r.mutable_knn()->set_k(8);
  r.mutable_knn()->set_min_pointers(9);
  ExpectError(ParseScoreRequest(r, Everything()).status(), absl::StatusCode::kInvalidArgument, "knn.min_pointers");
  r.mutable_knn()->clear_min_pointers();
  r.mutable_knn()->clear_k();
  r.mutable_knn()->set_lambda(1.5f);
  ExpectError(ParseScoreRequest(r, Everything()).status(), absl::StatusCode::kInvalidArgument, "knn.lambda");
  r.mutable_knn()->set_lambda(0.5f);
  r.mutable_knn()->set_temperature(0);
  ExpectError(ParseScoreRequest(r, Everything()).status(), absl::StatusCode::kInvalidArgument, "knn.temperature");
  r.mutable_knn()->clear_temperature();
  r.mutable_knn()->set_k(-1);
  ExpectError(ParseScoreRequest(r, Everything()).status(), absl::StatusCode::kInvalidArgument, "knn.k must be");
  r.mutable_knn()->set_k(5000);
  ExpectError(ParseScoreRequest(r, Everything()).status(), absl::StatusCode::kResourceExhausted, "knn.k is 5000");
  r.mutable_knn()->set_k(0);
  r.mutable_knn()->set_nprobe(-2);
  ExpectError(ParseScoreRequest(r, Everything()).status(), absl::StatusCode::kInvalidArgument, "knn.nprobe");
}

TEST(RequestParsingTest, RetroOptionsAndTheLeakageFilterOfScoreOnly) {
  v1::ScoreRequest r;
  r.set_text("the cat");
  r.set_mode("retro");
  auto p = ParseScoreRequest(r, Everything());
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->retro.retrieval, Retrieval::kOn);
  EXPECT_EQ(p->retro.leakage_filter, 32);
  EXPECT_EQ(p->retro.search_method, "dense");
  r.mutable_retro()->set_retrieval("sometimes");
  ExpectError(ParseScoreRequest(r, Everything()).status(), absl::StatusCode::kInvalidArgument, "retro.retrieval");
  r.mutable_retro()->set_retrieval("random");
  r.mutable_retro()->set_leakage_filter(-1);
  ExpectError(ParseScoreRequest(r, Everything()).status(), absl::StatusCode::kInvalidArgument, "retro.leakage_filter");
  r.mutable_retro()->set_leakage_filter(0);
  r.mutable_retro()->set_search_method("sparse");
  ExpectError(ParseScoreRequest(r, Everything()).status(), absl::StatusCode::kInvalidArgument, "retro.search_method");
  r.mutable_retro()->set_search_method("bm25");
  r.set_stride(3);
  ExpectError(ParseScoreRequest(r, Everything()).status(), absl::StatusCode::kInvalidArgument, "chunk size 4");
  r.set_stride(0);
  ParseContext no_index = Everything();
  no_index.has_index = false;
  ExpectError(ParseScoreRequest(r, no_index).status(), absl::StatusCode::kFailedPrecondition, "retro retrieval random");

  v1::GenerateRequest g;
  g.set_mode("retro");
  g.mutable_retro()->set_leakage_filter(8);
  auto gp = ParseGenerateRequest(g, Everything());
  ASSERT_TRUE(gp.ok()) << gp.status();
  EXPECT_EQ(gp->retro.leakage_filter, 0);
  v1::NextTokenRequest n;
  n.set_mode("retro");
  n.mutable_retro()->set_retrieval("off");
  auto np = ParseNextTokenRequest(n, no_index);
  ASSERT_TRUE(np.ok()) << np.status();
  EXPECT_EQ(np->retro.retrieval, Retrieval::kOff);
  EXPECT_EQ(np->retro.leakage_filter, 0);
}

TEST(RequestParsingTest, GenerateChecksSamplingAndPromptIds) {
  v1::GenerateRequest g;
  auto p = ParseGenerateRequest(g, Everything());
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->sampling.max_tokens, 64);
  EXPECT_DOUBLE_EQ(p->sampling.top_p, 1.0);
  g.add_prompt_token_ids(100);
  ExpectError(ParseGenerateRequest(g, Everything()).status(), absl::StatusCode::kInvalidArgument,
              "prompt_token_ids[0] = 100");
  g.clear_prompt_token_ids();
  g.mutable_sampling()->set_top_p(2);
  ExpectError(ParseGenerateRequest(g, Everything()).status(), absl::StatusCode::kInvalidArgument, "sampling.top_p");
  g.mutable_sampling()->set_top_p(0);
  // 0 (unset) means off, as in Hugging Face's default of 1.
  p = ParseGenerateRequest(g, Everything());
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_DOUBLE_EQ(p->sampling.repetition_penalty, 1.0);
  EXPECT_EQ(p->sampling.no_repeat_ngram_size, 0);
  g.mutable_sampling()->set_repetition_penalty(1.3f);
  g.mutable_sampling()->set_no_repeat_ngram_size(3);
  p = ParseGenerateRequest(g, Everything());
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_NEAR(p->sampling.repetition_penalty, 1.3, 1e-6);
  EXPECT_EQ(p->sampling.no_repeat_ngram_size, 3);
  g.mutable_sampling()->set_repetition_penalty(-1);
  ExpectError(ParseGenerateRequest(g, Everything()).status(), absl::StatusCode::kInvalidArgument,
              "sampling.repetition_penalty");
  g.mutable_sampling()->set_repetition_penalty(1);
  g.mutable_sampling()->set_no_repeat_ngram_size(-2);
  ExpectError(ParseGenerateRequest(g, Everything()).status(), absl::StatusCode::kInvalidArgument,
              "sampling.no_repeat_ngram_size");
}

}  // namespace
}  // namespace rag::services

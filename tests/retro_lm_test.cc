#include "lm/retro_lm.h"

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "tests/status_matchers.h"

namespace rag::lm {
namespace {

constexpr int64_t kVocab = 64;
constexpr int64_t kContext = 32;
constexpr int64_t kChunk = 8;  // m: 4 chunks fill the context
constexpr int64_t kChunks = kContext / kChunk;
constexpr int64_t kNeighbours = 2;        // K
constexpr int64_t kNeighbourTokens = 12;  // R

RetroConfig TinyRetroConfig(const std::string& positions = "rotary") {
  RetroConfig c;
  c.decoder.vocab_size = kVocab;
  c.decoder.context = kContext;
  c.decoder.d_model = 32;
  c.decoder.n_layers = 2;
  c.decoder.n_heads = 2;
  c.decoder.d_ff = 64;
  c.decoder.positions = positions;
  c.chunk_size = kChunk;
  c.neighbours = kNeighbours;
  c.neighbour_tokens = kNeighbourTokens;
  c.encoder_layers = 1;
  c.cca_layers = {0, 1};
  // Both CCA position schemes are covered: the learned-position decoder runs
  // with the content-only CCA of configs written before cca_positions.
  c.cca_positions = positions == "learned" ? "none" : "rotary";
  c.cca_aligned_bias = positions == "learned" ? 0.0 : 6.0;  // and with and without the aligned-key bias
  return c;
}

struct Inputs {
  torch::Tensor tokens;      // [B, T]
  torch::Tensor neighbours;  // [B, C, K, R]
  torch::Tensor mask;        // [B, C, K], all present
};

Inputs MakeInputs(int64_t batch, int64_t length, uint64_t seed) {
  torch::manual_seed(seed);
  Inputs in;
  in.tokens = torch::randint(0, kVocab, {batch, length}, torch::kLong);
  in.neighbours = torch::randint(0, kVocab, {batch, kChunks, kNeighbours, kNeighbourTokens}, torch::kLong);
  in.mask = torch::ones({batch, kChunks, kNeighbours}, torch::kBool);
  return in;
}

// Gives the CCA output projections (zero at construction) weights large
// enough that the neighbours visibly change the outputs.
void RandomiseCca(RetroLM& model, double std = 0.5) {
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < model->cca->size(); ++i) {
    auto& layer = model->cca->at<ChunkedCrossAttentionImpl>(i);
    layer.proj->weight.normal_(0.0, std);
    layer.proj->bias.normal_(0.0, std);
  }
}

double MaxAbsDiff(const torch::Tensor& a, const torch::Tensor& b) { return (a - b).abs().max().item<double>(); }

// ---------------------------------------------------------------------------
// Config

TEST(RetroConfigTest, ValidateNamesTheBadField) {
  RAG_EXPECT_OK(TinyRetroConfig().Validate());
  RAG_EXPECT_OK(RetroConfig().Validate());  // the defaults
  struct Case {
    std::function<void(RetroConfig&)> mutate;
    std::string field;
  };
  // clang-format off
  const std::vector<Case> cases = {
      {[](RetroConfig& c) { c.chunk_size = 0; }, "chunk_size"},
      {[](RetroConfig& c) { c.chunk_size = 7; }, "chunk_size"},  // 32 % 7 != 0
      {[](RetroConfig& c) { c.chunk_size = 64; }, "chunk_size"},
      {[](RetroConfig& c) { c.neighbours = 0; }, "neighbours"},
      {[](RetroConfig& c) { c.neighbour_tokens = 0; }, "neighbour_tokens"},
      {[](RetroConfig& c) { c.neighbour_tokens = kContext + 1; }, "neighbour_tokens"},
      {[](RetroConfig& c) { c.encoder_layers = 0; }, "encoder_layers"},
      {[](RetroConfig& c) { c.cca_layers = {}; }, "cca_layers"},
      {[](RetroConfig& c) { c.cca_layers = {1, 0}; }, "cca_layers"},
      {[](RetroConfig& c) { c.cca_layers = {1, 1}; }, "cca_layers"},
      {[](RetroConfig& c) { c.cca_layers = {0, 2}; }, "cca_layers"},  // 2 layers only
      {[](RetroConfig& c) { c.cca_layers = {-1}; }, "cca_layers"},
      {[](RetroConfig& c) { c.cca_aligned_bias = -1.0; }, "cca_aligned_bias"},
      {[](RetroConfig& c) { c.cca_aligned_bias = 31.0; }, "cca_aligned_bias"},
      {[](RetroConfig& c) { c.cca_aligned_bias = std::nan(""); }, "cca_aligned_bias"},
      {[](RetroConfig& c) { c.padding_id = -2; }, "padding_id"},
      {[](RetroConfig& c) { c.padding_id = kVocab; }, "padding_id"},
      {[](RetroConfig& c) { c.decoder.n_heads = 3; }, "decoder"},  // 32 % 3 != 0
      // Head size 3 passes the decoder's own checks with learned positions,
      // but the encoder's rotary positions need an even one.
      {[](RetroConfig& c) {
         c.decoder.positions = "learned";
         c.decoder.d_model = 6;
       },
       "decoder"},
  };
  // clang-format on
  for (const Case& test : cases) {
    RetroConfig c = TinyRetroConfig();
    test.mutate(c);
    const absl::Status status = c.Validate();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << test.field;
    EXPECT_NE(status.message().find(test.field), std::string::npos) << status.ToString();
    EXPECT_THROW(RetroLM model(c), c10::Error) << test.field;
  }
}

TEST(RetroConfigTest, JsonRoundTripAndRejections) {
  RetroConfig c = TinyRetroConfig("learned");
  c.cca_layers = {1};
  c.encoder_layers = 3;
  auto back = RetroConfig::FromJson(c.ToJson());
  RAG_ASSERT_OK(back);
  EXPECT_EQ(back->ToJson(), c.ToJson());
  EXPECT_EQ(back->cca_layers, std::vector<int64_t>{1});
  EXPECT_EQ(back->encoder_layers, 3);
  EXPECT_EQ(back->chunk_size, kChunk);
  EXPECT_EQ(back->decoder.positions, "learned");
  EXPECT_EQ(back->decoder.context, kContext);

  EXPECT_EQ(back->cca_positions, "none");
  c.cca_positions = "rotary";
  c.align_neighbours = 6;
  c.cca_aligned_bias = 2.5;
  back = RetroConfig::FromJson(c.ToJson());
  RAG_ASSERT_OK(back);
  EXPECT_EQ(back->cca_positions, "rotary");
  EXPECT_EQ(back->align_neighbours, 6);
  EXPECT_EQ(back->cca_aligned_bias, 2.5);
  EXPECT_EQ(back->padding_id, -1);
  c.padding_id = kVocab - 1;
  back = RetroConfig::FromJson(c.ToJson());
  RAG_ASSERT_OK(back);
  EXPECT_EQ(back->padding_id, kVocab - 1);

  // Absent keys keep their defaults, except the options added after
  // models were saved: absent, they mean what those models did.
  auto partial = RetroConfig::FromJson(R"({"chunk_size": 32, "cca_layers": [0, 2]})");
  RAG_ASSERT_OK(partial);
  EXPECT_EQ(partial->chunk_size, 32);
  EXPECT_EQ(partial->neighbours, RetroConfig().neighbours);
  EXPECT_EQ(partial->cca_positions, "none");
  EXPECT_EQ(partial->align_neighbours, 0);
  EXPECT_EQ(partial->cca_aligned_bias, 0.0);
  EXPECT_EQ(partial->padding_id, -1);
  EXPECT_EQ(RetroConfig().padding_id, -1);
  EXPECT_FALSE(RetroConfig::FromJson(R"({"padding_id": 1000000000})").ok());  // past the vocabulary
  EXPECT_FALSE(RetroConfig::FromJson(R"({"padding_id": "eot"})").ok());
  EXPECT_EQ(RetroConfig().cca_positions, "rotary");
  EXPECT_EQ(RetroConfig().align_neighbours, 16);
  EXPECT_EQ(RetroConfig().cca_aligned_bias, 6.0);
  EXPECT_FALSE(RetroConfig::FromJson(R"({"cca_aligned_bias": "six"})").ok());
  EXPECT_FALSE(RetroConfig::FromJson(R"({"cca_aligned_bias": -0.5})").ok());
  EXPECT_FALSE(RetroConfig::FromJson(R"({"cca_positions": "learned"})").ok());
  EXPECT_FALSE(RetroConfig::FromJson(R"({"cca_positions": 1})").ok());
  EXPECT_FALSE(RetroConfig::FromJson(R"({"align_neighbours": -1})").ok());

  auto unknown = RetroConfig::FromJson(R"({"chunk_sise": 8})");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(unknown.status().message().find("chunk_sise"), std::string::npos) << unknown.status();
  auto nested = RetroConfig::FromJson(R"({"decoder": {"d_modle": 32}})");
  EXPECT_EQ(nested.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(nested.status().message().find("decoder"), std::string::npos) << nested.status();
  EXPECT_FALSE(RetroConfig::FromJson(R"({"cca_layers": 1})").ok());
  EXPECT_FALSE(RetroConfig::FromJson(R"({"cca_layers": [0.5]})").ok());
  EXPECT_FALSE(RetroConfig::FromJson(R"({"neighbours": "two"})").ok());
  EXPECT_FALSE(RetroConfig::FromJson(R"({"arch": "transformer_lm"})").ok());
  EXPECT_FALSE(RetroConfig::FromJson(R"({"chunk_size": 7})").ok());  // 256 % 7 != 0
  EXPECT_FALSE(RetroConfig::FromJson("{not json").ok());
  EXPECT_FALSE(RetroConfig::FromJson("[1, 2]").ok());
}

// ---------------------------------------------------------------------------
// Model

class RetroLMTest : public ::testing::TestWithParam<std::string> {};

TEST_P(RetroLMTest, FreshModelComputesItsDecodersFunction) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(0);
  RetroLM model(TinyRetroConfig(GetParam()));
  model->eval();
  for (int64_t length : {int64_t{32}, int64_t{19}}) {
    Inputs in = MakeInputs(2, length, 1);
    auto expect = model->decoder->ForwardHidden(in.tokens);
    auto hidden = model->ForwardHidden(in.tokens, in.neighbours, in.mask);
    EXPECT_EQ(hidden.sizes(), (std::vector<int64_t>{2, length, 32}));
    EXPECT_TRUE(torch::equal(hidden, expect)) << "max diff " << MaxAbsDiff(hidden, expect);
    EXPECT_TRUE(torch::equal(model->ForwardHidden(in.tokens, torch::Tensor(), torch::Tensor()), expect));
    auto logits = model->forward(in.tokens, in.neighbours, in.mask);
    EXPECT_EQ(logits.sizes(), (std::vector<int64_t>{2, length, kVocab}));
    EXPECT_TRUE(torch::equal(logits, model->decoder->forward(in.tokens)));
  }
}

TEST_P(RetroLMTest, NeighboursChangeTheOutputUnlessAllMissing) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(2);
  RetroLM model(TinyRetroConfig(GetParam()));
  model->eval();
  RandomiseCca(model);
  Inputs in = MakeInputs(2, kContext, 3);
  auto plain = model->decoder->ForwardHidden(in.tokens);
  auto hidden = model->ForwardHidden(in.tokens, in.neighbours, in.mask);
  EXPECT_GT(MaxAbsDiff(hidden.narrow(1, kChunk, kContext - kChunk), plain.narrow(1, kChunk, kContext - kChunk)), 1e-3);
  // Chunk 0 attends to nothing.
  EXPECT_TRUE(torch::equal(hidden.narrow(1, 0, kChunk), plain.narrow(1, 0, kChunk)));
  // An undefined mask means all present.
  EXPECT_TRUE(torch::equal(model->ForwardHidden(in.tokens, in.neighbours, torch::Tensor()), hidden));
  // All neighbours missing: every CCA output is exactly zero (bias included, no NaN).
  auto none = torch::zeros_like(in.mask);
  auto masked = model->ForwardHidden(in.tokens, in.neighbours, none);
  EXPECT_FALSE(torch::isnan(masked).any().item<bool>());
  EXPECT_TRUE(torch::equal(masked, plain)) << "max diff " << MaxAbsDiff(masked, plain);
}

TEST_P(RetroLMTest, ChunkNeverSeesLaterNeighbourSets) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(4);
  RetroLM model(TinyRetroConfig(GetParam()));
  model->eval();
  RandomiseCca(model);
  Inputs in = MakeInputs(2, kContext, 5);
  auto base = model->ForwardHidden(in.tokens, in.neighbours, in.mask);
  for (int64_t i = 0; i < kChunks; ++i) {
    // Variant 1: other tokens for the sets >= i. Variant 2: neighbour 0 of
    // those sets missing.
    auto other_tokens = in.neighbours.clone();
    other_tokens.narrow(1, i, kChunks - i).random_(0, kVocab);
    auto other_mask = in.mask.clone();
    other_mask.narrow(1, i, kChunks - i).select(2, 0).fill_(false);
    const std::vector<std::pair<torch::Tensor, torch::Tensor>> variants = {{other_tokens, in.mask},
                                                                           {in.neighbours, other_mask}};
    for (size_t variant = 0; variant < variants.size(); ++variant) {
      auto out = model->ForwardHidden(in.tokens, variants[variant].first, variants[variant].second);
      const int64_t prefix = i * kChunk;
      if (prefix > 0) {
        EXPECT_LE(MaxAbsDiff(out.narrow(1, 0, prefix), base.narrow(1, 0, prefix)), 1e-6)
            << "i=" << i << " variant " << variant;
      }
      EXPECT_GT(MaxAbsDiff(out.narrow(1, prefix, kContext - prefix), base.narrow(1, prefix, kContext - prefix)), 1e-4)
          << "i=" << i << " variant " << variant;
    }
  }
  // Entry 0 is ignored altogether.
  auto other = in.neighbours.clone();
  other.select(1, 0).random_(0, kVocab);
  auto other_mask = in.mask.clone();
  other_mask.select(1, 0).fill_(false);
  EXPECT_TRUE(torch::equal(model->ForwardHidden(in.tokens, other, other_mask), base));
}

TEST_P(RetroLMTest, PositionNeverSeesLaterTokens) {
  // Through self-attention and through the activations that condition the
  // neighbour encoder: changing token p leaves positions < p unchanged.
  torch::NoGradGuard no_grad;
  torch::manual_seed(6);
  RetroLM model(TinyRetroConfig(GetParam()));
  model->eval();
  RandomiseCca(model);
  Inputs in = MakeInputs(1, kContext, 7);
  auto base = model->ForwardHidden(in.tokens, in.neighbours, in.mask);
  for (int64_t p : {3, 7, 8, 15, 24, 31}) {
    auto changed = in.tokens.clone();
    changed[0][p] = (changed[0][p].item<int64_t>() + 1) % kVocab;
    auto out = model->ForwardHidden(changed, in.neighbours, in.mask);
    EXPECT_LE(MaxAbsDiff(out.narrow(1, 0, p), base.narrow(1, 0, p)), 1e-6) << "p=" << p;
    EXPECT_GT(MaxAbsDiff(out.narrow(1, p, 1), base.narrow(1, p, 1)), 1e-4) << "p=" << p;
  }
}

TEST_P(RetroLMTest, MaskedNeighboursContributeNothing) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(8);
  RetroLM model(TinyRetroConfig(GetParam()));
  model->eval();
  RandomiseCca(model);
  Inputs in = MakeInputs(2, kContext, 9);
  // Batch 0: neighbour 1 of chunk 1 and neighbour 0 of chunk 2 missing;
  // batch 1: both neighbours of chunk 3 missing.
  in.mask[0][1][1] = false;
  in.mask[0][2][0] = false;
  in.mask[1][3][0] = false;
  in.mask[1][3][1] = false;
  auto base = model->ForwardHidden(in.tokens, in.neighbours, in.mask);
  auto changed = in.neighbours.clone();
  auto random = torch::randint_like(changed, 0, kVocab);
  auto missing = in.mask.logical_not().unsqueeze(-1).expand_as(changed);
  changed = torch::where(missing, random, changed);
  ASSERT_FALSE(torch::equal(changed, in.neighbours));
  auto out = model->ForwardHidden(in.tokens, changed, in.mask);
  EXPECT_LE(MaxAbsDiff(out, base), 1e-6);
  // Control: the same change on a present neighbour does show.
  auto present = in.neighbours.clone();
  present[0][1][0].random_(0, kVocab);
  EXPECT_GT(MaxAbsDiff(model->ForwardHidden(in.tokens, present, in.mask), base), 1e-4);
}

TEST_P(RetroLMTest, CacheMatchesFullRecompute) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(10);
  RetroLM model(TinyRetroConfig(GetParam()));
  model->eval();
  RandomiseCca(model);
  Inputs in = MakeInputs(2, kContext, 11);
  in.mask[0][2][1] = false;  // one neighbour missing
  in.mask[1][1][0] = false;  // a chunk with none
  in.mask[1][1][1] = false;
  auto full = model->ForwardHidden(in.tokens, in.neighbours, in.mask);
  ASSERT_GT(MaxAbsDiff(full, model->decoder->ForwardHidden(in.tokens)), 1e-3);

  // Steps of new tokens: a prefill, then one at a time with a step of 3
  // across the boundary at 16; boundary-aligned steps; all one at a time.
  std::vector<int64_t> mixed = {5};
  for (int64_t p = 5; p < 14; ++p) mixed.push_back(1);
  mixed.push_back(3);
  for (int64_t p = 17; p < kContext; ++p) mixed.push_back(1);
  const std::vector<std::vector<int64_t>> schedules = {
      mixed, {8, 8, 3, 5, 8}, {16, 16}, {1, 9, 2, 13, 7}, std::vector<int64_t>(kContext, 1)};
  for (size_t s = 0; s < schedules.size(); ++s) {
    RetroCache cache;
    std::vector<torch::Tensor> parts;
    int64_t past = 0;
    for (int64_t step : schedules[s]) {
      // Odd schedules pass exactly the chunks needed so far, even ones all.
      const int64_t needed = (past + step + kChunk - 1) / kChunk;
      auto neighbours = s % 2 == 1 ? in.neighbours.narrow(1, 0, needed) : in.neighbours;
      auto mask = s % 2 == 1 ? in.mask.narrow(1, 0, needed) : in.mask;
      parts.push_back(model->ForwardHidden(in.tokens.narrow(1, past, step), neighbours, mask, &cache));
      past += step;
      EXPECT_EQ(cache.length(), past);
    }
    ASSERT_EQ(past, kContext);
    auto cached = torch::cat(parts, 1);
    EXPECT_TRUE(torch::allclose(cached, full, /*rtol=*/0, /*atol=*/1e-4))
        << "schedule " << s << ": max diff " << MaxAbsDiff(cached, full);
  }

  // Without neighbours the cache follows the decoder's own cached path.
  RetroCache cache;
  KVCache decoder_cache;
  for (int64_t past = 0; past < 12; past += 4) {
    auto step = in.tokens.narrow(1, past, 4);
    EXPECT_TRUE(torch::allclose(model->ForwardHidden(step, torch::Tensor(), torch::Tensor(), &cache),
                                model->decoder->ForwardHidden(step, &decoder_cache), 0, 1e-6));
  }
}

TEST_P(RetroLMTest, ShapeErrorsThrow) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(12);
  RetroLM model(TinyRetroConfig(GetParam()));
  Inputs in = MakeInputs(2, kContext, 13);
  auto run = [&](const torch::Tensor& tokens, const torch::Tensor& neighbours, const torch::Tensor& mask) {
    model->ForwardHidden(tokens, neighbours, mask);
  };
  EXPECT_THROW(run(in.tokens.flatten(), in.neighbours, in.mask), c10::Error);
  EXPECT_THROW(run(torch::zeros({2, kContext + 1}, torch::kLong), torch::Tensor(), torch::Tensor()), c10::Error);
  EXPECT_THROW(run(in.tokens, in.neighbours.narrow(1, 0, kChunks - 1), in.mask), c10::Error);  // too few chunks
  EXPECT_THROW(run(in.tokens, in.neighbours.narrow(3, 0, 5), in.mask), c10::Error);            // R
  EXPECT_THROW(run(in.tokens, in.neighbours.narrow(2, 0, 1), in.mask), c10::Error);            // K
  EXPECT_THROW(run(in.tokens, in.neighbours.narrow(0, 0, 1), in.mask), c10::Error);            // B
  EXPECT_THROW(run(in.tokens, in.neighbours.to(torch::kInt), in.mask), c10::Error);
  EXPECT_THROW(run(in.tokens, in.neighbours, in.mask.narrow(2, 0, 1)), c10::Error);
  EXPECT_THROW(run(in.tokens, in.neighbours, in.mask.to(torch::kLong)), c10::Error);
  try {
    run(in.tokens, in.neighbours.narrow(3, 0, 5), in.mask);
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("neighbours: expected [B, C, K, R]"), std::string::npos) << e.what();
  }
  // The cache counts towards the context.
  RetroCache cache;
  model->ForwardHidden(in.tokens.narrow(1, 0, 30), in.neighbours, in.mask, &cache);
  EXPECT_THROW(model->ForwardHidden(in.tokens.narrow(1, 0, 3), in.neighbours, in.mask, &cache), c10::Error);
}

INSTANTIATE_TEST_SUITE_P(Positions, RetroLMTest, ::testing::Values("rotary", "learned"));

// ---------------------------------------------------------------------------
// Padding: a prompt padded in front to end a chunk reads as [padding, prompt]

constexpr int64_t kPad = 0;

// Rows of `prompt_length` tokens in [1, V) (never the padding id), each
// padded in front with pads[row] padding tokens and then filled with more
// tokens to `length`. Returns the padded rows [B, length].
torch::Tensor PaddedRows(const std::vector<int64_t>& pads, int64_t length, uint64_t seed) {
  torch::manual_seed(seed);
  auto tokens = torch::randint(1, kVocab, {static_cast<int64_t>(pads.size()), length}, torch::kLong);
  for (size_t row = 0; row < pads.size(); ++row) tokens[row].narrow(0, 0, pads[row]).fill_(kPad);
  return tokens;
}

// With a rotary decoder, positions are relative, so hiding all but the last
// padding token makes the padded prompt's outputs those of the decoder on
// [padding, prompt], whatever the padding's length; without padding_id the
// padding changes them (the frozen decoder never saw a run of it).
TEST(RetroLMPaddingTest, PaddedPromptReadsAsTheDecoderOnOnePaddingTokenAndThePrompt) {
  torch::NoGradGuard no_grad;
  RetroConfig config = TinyRetroConfig();
  config.padding_id = kPad;
  torch::manual_seed(30);
  RetroLM model(config);
  model->eval();
  RandomiseCca(model);
  const std::vector<int64_t> pads = {5, 11, 1};  // the second crosses a chunk boundary; the third is no run
  auto tokens = PaddedRows(pads, 24, 31);
  auto hidden = model->ForwardHidden(tokens, torch::Tensor(), torch::Tensor());  // [B, 24, D]
  RetroConfig unmasked_config = config;
  unmasked_config.padding_id = -1;
  RetroLM unmasked(unmasked_config);
  unmasked->eval();
  unmasked->LoadDecoderFrom(model->decoder);
  auto unmasked_hidden = unmasked->ForwardHidden(tokens, torch::Tensor(), torch::Tensor());
  for (size_t row = 0; row < pads.size(); ++row) {
    const int64_t keep = pads[row] - 1;  // the last padding token stays
    auto row_tokens = tokens[row].narrow(0, keep, 24 - keep).unsqueeze(0);
    auto expect = model->decoder->ForwardHidden(row_tokens)[0];
    auto got = hidden[row].narrow(0, keep, 24 - keep);
    EXPECT_LT(MaxAbsDiff(got, expect), 1e-5) << "row " << row;
    if (pads[row] > 1) {
      EXPECT_GT(MaxAbsDiff(unmasked_hidden[row].narrow(0, keep, 24 - keep), expect), 1e-3) << "row " << row;
    } else {
      EXPECT_TRUE(torch::equal(unmasked_hidden[row], hidden[row])) << "row " << row;
    }
  }
  // Padding inside the text is text: only a leading run is hidden.
  auto inner = tokens.clone();
  inner[2].narrow(0, 14, 4).fill_(kPad);
  auto inner_hidden = model->ForwardHidden(inner, torch::Tensor(), torch::Tensor());
  EXPECT_TRUE(torch::equal(inner_hidden[2], unmasked->ForwardHidden(inner, torch::Tensor(), torch::Tensor())[2]));
  EXPECT_GT(MaxAbsDiff(inner_hidden[2].narrow(0, 14, 10), hidden[2].narrow(0, 14, 10)), 1e-3);
}

// The hidden padding survives incremental decoding: any schedule whose first
// call holds the padding gives the full recompute, neighbours included.
TEST(RetroLMPaddingTest, CacheMatchesFullRecomputeWithPadding) {
  torch::NoGradGuard no_grad;
  RetroConfig config = TinyRetroConfig();
  config.padding_id = kPad;
  torch::manual_seed(32);
  RetroLM model(config);
  model->eval();
  RandomiseCca(model);
  Inputs in = MakeInputs(2, kContext, 33);
  in.tokens = PaddedRows({5, 11}, kContext, 34);
  auto full = model->ForwardHidden(in.tokens, in.neighbours, in.mask);
  const std::vector<std::vector<int64_t>> schedules = {{12, 1, 1, 1, 1, 3, 8, 5}, {16, 16}, {11, 1, 20}};
  for (size_t s = 0; s < schedules.size(); ++s) {
    RetroCache cache;
    std::vector<torch::Tensor> parts;
    int64_t past = 0;
    for (int64_t step : schedules[s]) {
      parts.push_back(model->ForwardHidden(in.tokens.narrow(1, past, step), in.neighbours, in.mask, &cache));
      past += step;
    }
    ASSERT_EQ(past, kContext);
    auto cached = torch::cat(parts, 1);
    EXPECT_TRUE(torch::allclose(cached, full, 0, 1e-4))
        << "schedule " << s << ": max diff " << MaxAbsDiff(cached, full);
  }
  // A cleared cache starts a new sequence: no padding is remembered.
  RetroCache cache;
  model->ForwardHidden(in.tokens, in.neighbours, in.mask, &cache);
  ASSERT_TRUE(cache.hidden_keys.defined());
  cache.Clear();
  EXPECT_FALSE(cache.hidden_keys.defined());
  auto plain = torch::randint(1, kVocab, {2, 8}, torch::kLong);
  EXPECT_TRUE(torch::allclose(model->ForwardHidden(plain, in.neighbours, in.mask, &cache),
                              model->ForwardHidden(plain, in.neighbours, in.mask), 0, 1e-6));
  EXPECT_FALSE(cache.hidden_keys.defined());
}

// With equal content scores, a head with the aligned-key bias reads the
// neighbour token at m + p for the query at chunk position p (nearly all of
// its weight for a large bias), a head without it averages over all keys;
// the one-chunk decoding path (offset) agrees with the whole-chunk path.
TEST(ChunkedCrossAttentionTest, BiasedHeadsReadTheAlignedNeighbourToken) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(21);
  TransformerConfig dc = TinyRetroConfig().decoder;  // D = 32, 2 heads of 16
  const int64_t m = 4, r = 2 * m, k = 2, c = 2, d = dc.d_model, h = dc.n_heads, e = d / h;
  for (const bool rotary : {false, true}) {
    ChunkedCrossAttention cca(dc, m, rotary, r, /*aligned_bias=*/30.0);
    ASSERT_TRUE(cca->aligned_bias.defined());
    EXPECT_EQ(cca->aligned_bias[0].item<float>(), 30.0f);
    EXPECT_EQ(cca->aligned_bias[1].item<float>(), 0.0f);
    cca->proj->weight.copy_(torch::eye(d));  // out = the heads' outputs
    cca->proj->bias.zero_();
    auto keys = torch::zeros({1, c, h, k * r, e});  // equal content scores everywhere
    auto values = torch::randn({1, c, h, k * r, e});
    // Both neighbours hold the same value at the aligned key.
    values.narrow(3, r, r).copy_(values.narrow(3, 0, r));
    auto mask = torch::ones({1, c, k * r}, torch::kBool);
    auto x = torch::randn({1, c * m, d});
    auto out = cca->forward(x, 0, keys, values, mask);  // [1, C*m, D]
    for (int64_t chunk = 0; chunk < c; ++chunk) {
      for (int64_t p = 0; p < m; ++p) {
        auto row = out[0][chunk * m + p];
        auto aligned = values[0][chunk][0][m + p];
        EXPECT_LT(MaxAbsDiff(row.narrow(0, 0, e), aligned), 1e-4) << "rotary " << rotary << " p " << p;
        auto mean = values[0][chunk][1].mean(0);  // the unbiased head: uniform attention
        EXPECT_LT(MaxAbsDiff(row.narrow(0, e, e), mean), 1e-4) << "rotary " << rotary << " p " << p;
      }
    }
    // Decoding: positions 1..2 of the last chunk alone.
    auto step = cca->forward(x.narrow(1, (c - 1) * m + 1, 2), 1, keys.narrow(1, c - 1, 1), values.narrow(1, c - 1, 1),
                             mask.narrow(1, c - 1, 1));
    EXPECT_LT(MaxAbsDiff(step[0], out[0].narrow(0, (c - 1) * m + 1, 2)), 1e-5) << "rotary " << rotary;
  }
  // Without the option there is no such parameter (models saved before it load).
  ChunkedCrossAttention plain(dc, m, true, r, 0.0);
  EXPECT_FALSE(plain->aligned_bias.defined());
  for (const auto& item : plain->named_parameters()) EXPECT_EQ(item.key().find("aligned"), std::string::npos);
}

TEST(RetroLMRetrofitTest, LoadDecoderFromCopiesTheLanguageModel) {
  torch::NoGradGuard no_grad;
  const RetroConfig config = TinyRetroConfig();
  torch::manual_seed(14);
  TransformerLM lm(config.decoder);
  lm->eval();
  torch::manual_seed(15);
  RetroLM model(config);
  model->eval();
  Inputs in = MakeInputs(2, kContext, 16);
  auto expect = lm->ForwardHidden(in.tokens);
  ASSERT_GT(MaxAbsDiff(model->ForwardHidden(in.tokens, in.neighbours, in.mask), expect), 1e-3);
  model->LoadDecoderFrom(lm);
  EXPECT_TRUE(torch::equal(model->ForwardHidden(in.tokens, in.neighbours, in.mask), expect));
  EXPECT_TRUE(torch::equal(model->forward(in.tokens, in.neighbours, in.mask), lm->forward(in.tokens)));

  // Other architectures are refused.
  for (const auto& mutate : std::vector<std::function<void(TransformerConfig&)>>{
           [](TransformerConfig& c) { c.d_ff = 128; }, [](TransformerConfig& c) { c.n_layers = 3; },
           [](TransformerConfig& c) { c.positions = "learned"; },
           [](TransformerConfig& c) { c.n_heads = 4; },  // same shapes, other function
           // Pretrained architectures' switches: same shapes, other function.
           [](TransformerConfig& c) { c.activation = "gelu_tanh"; },
           [](TransformerConfig& c) { c.rotary_fraction = 0.5; },
           [](TransformerConfig& c) { c.parallel_residual = true; },
           [](TransformerConfig& c) { c.rope_base = 500.0; },
           [](TransformerConfig& c) { c.layer_norm_eps = 1e-3; },
           [](TransformerConfig& c) { c.tie_embeddings = false; },
       }) {
    TransformerConfig other = config.decoder;
    mutate(other);
    TransformerLM other_lm(other);
    EXPECT_THROW(model->LoadDecoderFrom(other_lm), c10::Error) << other.ToJson();
  }
}

// The decoders of downloaded checkpoints (lm/hf/pretrained.h): GPT-2's
// learned positions, tanh GELU and (here) a separate output layer; GPT-NeoX's
// rotary positions on a quarter of each head and parallel residual. Loaded
// into RETRO, the decoder computes exactly the language model wherever no
// neighbour is attended, whatever the CCA weights: what RETRO-fitting a
// frozen pretrained model relies on.
TEST(RetroLMRetrofitTest, PretrainedDecoderLayoutsComputeTheLanguageModel) {
  torch::NoGradGuard no_grad;
  struct Layout {
    std::string name;
    std::function<void(TransformerConfig&)> apply;
  };
  const std::vector<Layout> layouts = {
      {"gpt2",
       [](TransformerConfig& c) {
         c.positions = "learned";
         c.activation = "gelu_tanh";
         c.tie_embeddings = false;
       }},
      {"gpt_neox",
       [](TransformerConfig& c) {
         c.rotary_fraction = 0.25;  // 4 of 16 dims per head
         c.parallel_residual = true;
         c.tie_embeddings = false;
       }},
  };
  for (const Layout& layout : layouts) {
    SCOPED_TRACE(layout.name);
    RetroConfig config = TinyRetroConfig(layout.name == "gpt2" ? "learned" : "rotary");
    layout.apply(config.decoder);
    RAG_ASSERT_OK(config.Validate());
    torch::manual_seed(40);
    TransformerLM lm(config.decoder);
    for (auto& p : lm->parameters()) p.add_(torch::randn_like(p) * 0.1);  // LayerNorms and biases matter too
    lm->eval();
    ASSERT_TRUE(lm->output);
    torch::manual_seed(41);
    RetroLM model(config);
    model->eval();
    model->LoadDecoderFrom(lm);
    Inputs in = MakeInputs(2, kContext, 42);
    const auto expect = lm->forward(in.tokens);  // [B, T, V]

    // Fresh CCA layers (zero output projections), neighbours attended.
    EXPECT_LT(MaxAbsDiff(model->forward(in.tokens, in.neighbours, in.mask), expect), 1e-5);
    RandomiseCca(model);
    // No retrieval, and every neighbour missing: the decoder alone, exactly.
    EXPECT_TRUE(torch::equal(model->forward(in.tokens, torch::Tensor(), torch::Tensor()), expect));
    auto none = torch::zeros_like(in.mask);
    EXPECT_TRUE(torch::equal(model->forward(in.tokens, in.neighbours, none), expect));
    // With neighbours only chunk 0 (which attends nothing) stays the LM's.
    auto with = model->forward(in.tokens, in.neighbours, in.mask);
    EXPECT_TRUE(torch::equal(with.narrow(1, 0, kChunk), expect.narrow(1, 0, kChunk)));
    EXPECT_GT(MaxAbsDiff(with, expect), 1e-3);
  }
}

TEST(RetroLMRetrofitTest, RetrievalParametersAreEverythingButTheDecoder) {
  torch::manual_seed(17);
  RetroLM model(TinyRetroConfig());
  auto retrieval = model->RetrievalParameters();
  std::set<const void*> decoder_params, retrieval_params;
  for (const auto& p : model->decoder->parameters()) decoder_params.insert(p.unsafeGetTensorImpl());
  int64_t retrieval_numel = 0;
  for (const auto& p : retrieval) {
    EXPECT_EQ(decoder_params.count(p.unsafeGetTensorImpl()), 0u);
    retrieval_params.insert(p.unsafeGetTensorImpl());
    retrieval_numel += p.numel();
  }
  EXPECT_EQ(retrieval_params.size(), retrieval.size());  // no duplicates
  EXPECT_EQ(retrieval.size() + model->decoder->parameters().size(), model->parameters().size());
  EXPECT_EQ(retrieval_numel + model->decoder->NumParameters(), model->NumParameters());
  size_t new_params = 0;
  for (const auto& item : model->named_parameters()) {
    const std::string& name = item.key();
    if (name.rfind("decoder.", 0) == 0) continue;
    ++new_params;
    EXPECT_TRUE(name.rfind("encoder_blocks.", 0) == 0 || name.rfind("encoder_ln.", 0) == 0 ||
                name.rfind("cca.", 0) == 0)
        << name;
    EXPECT_EQ(retrieval_params.count(item.value().unsafeGetTensorImpl()), 1u) << name;
  }
  EXPECT_EQ(new_params, retrieval.size());
  EXPECT_GT(retrieval_numel, 0);
}

TEST(RetroLMTrainingTest, GradientsReachTheEncoderAndCca) {
  const RetroConfig config = TinyRetroConfig();
  Inputs in = MakeInputs(2, kContext, 18);
  auto loss_of = [&](RetroLM& model) {
    auto logits = model->forward(in.tokens, in.neighbours, in.mask);  // [B, T, V]
    return torch::nn::functional::cross_entropy(logits.narrow(1, 0, kContext - 1).reshape({-1, kVocab}),
                                                in.tokens.narrow(1, 1, kContext - 1).reshape({-1}));
  };
  {
    // Freshly built, the zero CCA projections still get a gradient, so
    // retrofitting can start from the decoder's function.
    torch::manual_seed(19);
    RetroLM model(config);
    loss_of(model).backward();
    for (size_t i = 0; i < model->cca->size(); ++i) {
      auto& layer = model->cca->at<ChunkedCrossAttentionImpl>(i);
      ASSERT_TRUE(layer.proj->weight.grad().defined());
      EXPECT_GT(layer.proj->weight.grad().abs().sum().item<double>(), 0.0) << "cca " << i;
    }
  }
  torch::manual_seed(20);
  RetroLM model(config);
  RandomiseCca(model, 0.1);
  loss_of(model).backward();
  for (const auto& item : model->named_parameters()) {
    const std::string& name = item.key();
    if (name.rfind("decoder.", 0) == 0) continue;
    const torch::Tensor& grad = item.value().grad();
    ASSERT_TRUE(grad.defined()) << name;
    EXPECT_FALSE(torch::isnan(grad).any().item<bool>()) << name;
    // Biases of attention keys get no gradient (softmax is shift-invariant);
    // every weight must.
    if (name.size() >= 6 && name.compare(name.size() - 6, 6, "weight") == 0) {
      EXPECT_GT(grad.abs().sum().item<double>(), 0.0) << name;
    }
  }
}

}  // namespace
}  // namespace rag::lm

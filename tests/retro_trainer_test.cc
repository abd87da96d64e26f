#include "lm/retro_trainer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "tests/status_matchers.h"
#include "tests/test_util.h"

namespace rag::lm {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kVocab = 64;
constexpr int64_t kContext = 32;
constexpr int64_t kChunk = 4;            // m: 8 chunks fill the context
constexpr int64_t kNeighbours = 2;       // K
constexpr int64_t kNeighbourTokens = 4;  // R: a neighbour is one chunk
constexpr TokenId kEot = kVocab - 1;
// Document tokens are drawn uniformly from [1, kTokenValues]: no model
// without retrieval can do better than log(kTokenValues) nats per token.
constexpr int64_t kTokenValues = 32;

RetroConfig TinyRetroConfig() {
  RetroConfig c;
  c.decoder.vocab_size = kVocab;
  c.decoder.context = kContext;
  c.decoder.d_model = 64;
  c.decoder.n_layers = 2;
  c.decoder.n_heads = 4;
  c.decoder.d_ff = 128;
  c.chunk_size = kChunk;
  c.neighbours = kNeighbours;
  c.neighbour_tokens = kNeighbourTokens;
  c.encoder_layers = 1;
  c.cca_layers = {0, 1};
  return c;
}

// Documents of `chunks` chunks of random tokens, so no chunk is predictable
// from the text before it. In the set retrieved with chunk j, one neighbour
// (slot drawn at random) is the text that follows: tokens [(j+1)m, (j+1)m + R)
// of the document (random past its end); the other is random tokens flagged
// missing. The neighbours carry the answer, and only where the mask says so.
// With `retrieval` false every neighbour is flagged missing.
RetroDocuments MakeCopyCorpus(int n_docs, int64_t chunks, uint64_t seed, bool retrieval = true) {
  std::mt19937_64 rng(seed);
  auto token = [&] { return static_cast<TokenId>(1 + rng() % kTokenValues); };
  RetroDocuments docs;
  for (int d = 0; d < n_docs; ++d) {
    std::vector<TokenId> tokens(static_cast<size_t>(chunks * kChunk));
    for (auto& t : tokens) t = token();
    std::vector<int32_t> sets;
    std::vector<uint8_t> present;
    for (int64_t j = 0; j < chunks; ++j) {
      const uint64_t slot = rng() % kNeighbours;
      for (int64_t k = 0; k < kNeighbours; ++k) {
        for (int64_t r = 0; r < kNeighbourTokens; ++r) {
          const size_t i = static_cast<size_t>((j + 1) * kChunk + r);
          sets.push_back(k == static_cast<int64_t>(slot) && i < tokens.size() ? tokens[i] : token());
        }
        present.push_back(retrieval && k == static_cast<int64_t>(slot) ? 1 : 0);
      }
    }
    docs.tokens.push_back(std::move(tokens));
    docs.neighbours.push_back(std::move(sets));
    docs.present.push_back(std::move(present));
  }
  return docs;
}

RetroTrainingData MakeCopyData(bool retrieval = true) {
  // Enough training text that 200 steps never repeat a window: a model that
  // memorises documents gains nothing on the validation ones.
  return {MakeCopyCorpus(2000, 16, 1, retrieval), MakeCopyCorpus(16, 16, 2, retrieval), {}, {}};
}

RetroTrainerOptions FastOptions(int64_t steps, bool freeze) {
  RetroTrainerOptions o;
  o.steps = steps;
  o.batch_size = 8;
  o.lr = 3e-3;
  o.warmup_steps = 5;
  o.checkpoint_every = 0;
  o.eval_every = 0;
  o.show_progress = false;
  o.freeze_decoder = freeze;
  return o;
}

TransformerLM MakeInitLM(const RetroConfig& config, uint64_t seed) {
  torch::manual_seed(seed);
  return TransformerLM(config.decoder);
}

std::vector<int64_t> Values(const torch::Tensor& t) {
  auto flat = t.flatten().to(torch::kLong).contiguous();
  return std::vector<int64_t>(flat.data_ptr<int64_t>(), flat.data_ptr<int64_t>() + flat.numel());
}

// ---------------------------------------------------------------------------
// Windows

TEST(MakeRetroWindowsTest, FollowsTheSequenceConvention) {
  // T = 12, m = 4 (C = 3), K = 2, R = 3.
  RetroConfig config;
  config.decoder.vocab_size = 1000;
  config.decoder.context = 12;
  config.decoder.d_model = 16;
  config.decoder.n_heads = 2;
  config.decoder.n_layers = 2;
  config.chunk_size = 4;
  config.neighbours = 2;
  config.neighbour_tokens = 3;
  config.cca_layers = {0, 1};
  RAG_ASSERT_OK(config.Validate());
  constexpr int64_t eot = 999;
  // Neighbour token r of neighbour k of chunk j of document d: 500 + 100d + 10j + 3k + r.
  RetroDocuments docs;
  auto add_doc = [&](int64_t first_token, int64_t n_tokens) {
    const size_t d = docs.tokens.size();
    std::vector<TokenId> tokens;
    for (int64_t i = 0; i < n_tokens; ++i) tokens.push_back(static_cast<TokenId>(first_token + i));
    const int64_t chunks = (n_tokens + 3) / 4;
    std::vector<int32_t> sets;
    for (int64_t j = 0; j < chunks; ++j) {
      for (int64_t k = 0; k < 2; ++k) {
        for (int64_t r = 0; r < 3; ++r) sets.push_back(static_cast<int32_t>(500 + 100 * d + 10 * j + 3 * k + r));
      }
    }
    docs.tokens.push_back(tokens);
    docs.neighbours.push_back(sets);
    docs.present.emplace_back(static_cast<size_t>(chunks * 2), 1);
  };
  add_doc(10, 10);                 // tokens 10..19: chunks 10-13, 14-17, 18-19
  add_doc(30, 20);                 // tokens 30..49: 5 chunks
  docs.present[0][1 * 2 + 1] = 0;  // neighbour 1 of document 0's chunk 1 is missing
  RAG_ASSERT_OK(ValidateRetroDocuments(docs, config, "test"));

  const std::vector<RetroWindow> starts = {{0, 0}, {0, 1}, {0, 2}, {1, 2}};
  RetroBatch batch = MakeRetroWindows(docs, starts, config, eot);
  ASSERT_EQ(batch.tokens.sizes(), (std::vector<int64_t>{4, 12}));
  ASSERT_EQ(batch.targets.sizes(), (std::vector<int64_t>{4, 12}));
  ASSERT_EQ(batch.neighbours.sizes(), (std::vector<int64_t>{4, 3, 2, 3}));
  ASSERT_EQ(batch.mask.sizes(), (std::vector<int64_t>{4, 3, 2}));
  EXPECT_EQ(batch.tokens.scalar_type(), torch::kLong);
  EXPECT_EQ(batch.neighbours.scalar_type(), torch::kLong);
  EXPECT_EQ(batch.mask.scalar_type(), torch::kBool);

  const int64_t e = eot;
  // clang-format off
  EXPECT_EQ(Values(batch.tokens), (std::vector<int64_t>{
      e,  10, 11, 12, 13, 14, 15, 16, 17, 18, 19, e,   // c = 0: the token before is end-of-text
      13, 14, 15, 16, 17, 18, 19, e,  e,  e,  e,  e,   // c = 1: the token before is t_3
      17, 18, 19, e,  e,  e,  e,  e,  e,  e,  e,  e,
      37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48}));
  EXPECT_EQ(Values(batch.targets), (std::vector<int64_t>{
      10, 11, 12, 13, 14, 15, 16, 17, 18, 19, -1, -1,
      14, 15, 16, 17, 18, 19, -1, -1, -1, -1, -1, -1,
      18, 19, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
      38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 49}));
  // clang-format on

  // Input chunk v >= 1 attends the set of document chunk c + v - 1; chunk 0
  // and chunks beyond the document attend nothing.
  auto mask = batch.mask.accessor<bool, 3>();
  auto neighbours = batch.neighbours.accessor<int64_t, 4>();
  for (size_t i = 0; i < starts.size(); ++i) {
    const auto [d, c] = starts[i];
    const int64_t chunks = RetroChunkCount(docs.tokens[d].size(), 4);
    for (int64_t v = 0; v < 3; ++v) {
      const int64_t j = c + v - 1;
      for (int64_t k = 0; k < 2; ++k) {
        const bool expect_present = v >= 1 && j < chunks && !(d == 0 && j == 1 && k == 1);
        EXPECT_EQ(mask[i][v][k], expect_present) << "window " << i << " v " << v << " k " << k;
        for (int64_t r = 0; r < 3; ++r) {
          const int64_t expect = expect_present ? 500 + 100 * static_cast<int64_t>(d) + 10 * j + 3 * k + r : 0;
          EXPECT_EQ(neighbours[i][v][k][r], expect) << "window " << i << " v " << v << " k " << k << " r " << r;
        }
      }
    }
  }
  // Spot checks of the rule above, written out.
  EXPECT_EQ(neighbours[0][1][0][0], 500);  // window (0, 0), v = 1: chunk 0
  EXPECT_EQ(neighbours[1][2][0][2], 522);  // window (0, 1), v = 2: chunk 2
  EXPECT_EQ(neighbours[3][1][1][0], 623);  // window (1, 2), v = 1: chunk 2, neighbour 1
  EXPECT_FALSE(mask[2][2][0]);             // window (0, 2), v = 2: chunk 3 does not exist

  // A document without neighbour entries (e.g. scored without retrieval): all missing.
  docs.neighbours[1].clear();
  docs.present[1].clear();
  RetroBatch none = MakeRetroWindows(docs, {{1, 0}}, config, eot);
  EXPECT_FALSE(none.mask.any().item<bool>());
  EXPECT_EQ(none.neighbours.abs().sum().item<int64_t>(), 0);

  EXPECT_THROW(MakeRetroWindows(docs, {{2, 0}}, config, eot), c10::Error);  // no such document
  EXPECT_THROW(MakeRetroWindows(docs, {{0, 3}}, config, eot), c10::Error);  // document 0 has 3 chunks
}

TEST(RetroTrainerTest, BatchesArePureFunctionsOfSeedAndStep) {
  const RetroConfig config = TinyRetroConfig();
  // 8 documents of 12 chunks, 8 of one chunk and an empty one.
  RetroTrainingData data = MakeCopyData();
  data.train = MakeCopyCorpus(8, 12, 8);
  RetroDocuments short_docs = MakeCopyCorpus(8, 1, 9);
  for (size_t d = 0; d < 8; ++d) {
    data.train.tokens.push_back(short_docs.tokens[d]);
    data.train.neighbours.push_back(short_docs.neighbours[d]);
    data.train.present.push_back(short_docs.present[d]);
  }
  data.train.tokens.push_back({});
  data.train.neighbours.push_back({});
  data.train.present.push_back({});
  auto a = RetroTrainer::Create(config, FastOptions(10, false), data, kEot, "/tmp/unused.pt", false, nullptr);
  auto b = RetroTrainer::Create(config, FastOptions(10, false), data, kEot, "/tmp/unused.pt", false, nullptr);
  RetroTrainerOptions other_seed = FastOptions(10, false);
  other_seed.seed = 99;
  auto c = RetroTrainer::Create(config, other_seed, data, kEot, "/tmp/unused.pt", false, nullptr);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok()) << a.status() << b.status() << c.status();
  (*a)->Step();  // training does not move the batch schedule
  for (int64_t step : {0, 5, 123}) {
    RetroBatch x = (*a)->BatchForStep(step), y = (*b)->BatchForStep(step);
    EXPECT_TRUE(torch::equal(x.tokens, y.tokens) && torch::equal(x.targets, y.targets) &&
                torch::equal(x.neighbours, y.neighbours) && torch::equal(x.mask, y.mask))
        << "step " << step;
    EXPECT_EQ(x.tokens.sizes(), (std::vector<int64_t>{8, kContext}));
    EXPECT_EQ(x.neighbours.sizes(), (std::vector<int64_t>{8, kContext / kChunk, kNeighbours, kNeighbourTokens}));
    EXPECT_FALSE(torch::equal(x.tokens, (*c)->BatchForStep(step).tokens)) << "step " << step;
  }
  EXPECT_FALSE(torch::equal((*a)->BatchForStep(5).tokens, (*a)->BatchForStep(6).tokens));
  EXPECT_EQ((*a)->WindowsForStep(7), (*b)->WindowsForStep(7));

  // Over many steps: every window starts on a chunk of its document, never
  // in the empty one, and 12-chunk documents come up 12 times as often as
  // 1-chunk ones.
  std::map<size_t, int64_t> per_document;
  for (int64_t step = 0; step < 1000; ++step) {
    for (const auto& [d, c] : (*a)->WindowsForStep(step)) {
      ASSERT_LT(d, data.train.tokens.size() - 1);  // never the empty one
      ASSERT_GE(c, 0);
      ASSERT_LT(c, RetroChunkCount(data.train.tokens[d].size(), kChunk));
      ++per_document[d];
    }
  }
  int64_t long_windows = 0, short_windows = 0;
  for (size_t d = 0; d < 8; ++d) long_windows += per_document[d];
  for (size_t d = 8; d < 16; ++d) short_windows += per_document[d];
  const double ratio = static_cast<double>(long_windows) / static_cast<double>(short_windows);
  EXPECT_GT(ratio, 9.0) << long_windows << " vs " << short_windows;
  EXPECT_LT(ratio, 16.0) << long_windows << " vs " << short_windows;
}

// ---------------------------------------------------------------------------
// Retrofitting

TEST(RetroTrainerTest, RetrofitFreezesTheDecoder) {
  const RetroConfig config = TinyRetroConfig();
  TransformerLM init = MakeInitLM(config, 5);
  for (bool freeze : {true, false}) {
    auto t = RetroTrainer::Create(config, FastOptions(8, freeze), MakeCopyData(), kEot, "/tmp/unused.pt", false, &init);
    ASSERT_TRUE(t.ok()) << t.status();
    RetroLM& model = (*t)->model();
    std::vector<torch::Tensor> before;
    for (const auto& p : model->RetrievalParameters()) before.push_back(p.detach().clone());
    for (int i = 0; i < 8; ++i) EXPECT_TRUE(std::isfinite((*t)->Step()));

    const auto init_params = init->named_parameters();
    int64_t decoder_changed = 0;
    for (const auto& item : model->decoder->named_parameters()) {
      const torch::Tensor* original = init_params.find(item.key());
      ASSERT_NE(original, nullptr) << item.key();
      const bool same = torch::equal(item.value(), *original);
      if (freeze) {
        EXPECT_TRUE(same) << item.key() << " moved although the decoder is frozen";
      }
      decoder_changed += same ? 0 : 1;
    }
    if (!freeze) {
      EXPECT_GT(decoder_changed, 0);
    }

    // Every retrieval matrix trained (the CCA output projections start at zero).
    const auto retrieval = model->RetrievalParameters();
    ASSERT_EQ(retrieval.size(), before.size());
    int64_t matrices = 0;
    for (size_t i = 0; i < retrieval.size(); ++i) {
      if (retrieval[i].dim() < 2) continue;
      ++matrices;
      EXPECT_FALSE(torch::equal(retrieval[i], before[i])) << "retrieval parameter " << i;
    }
    EXPECT_GT(matrices, 0);
    for (size_t l = 0; l < model->cca->size(); ++l) {
      EXPECT_GT(model->cca->at<ChunkedCrossAttentionImpl>(l).proj->weight.abs().sum().item<double>(), 0.0);
    }
  }
}

// RETRO-fitting a downloaded model (Borgeaud et al. 4.4): decoders in the
// GPT-2 layout (learned positions, tanh GELU, separate output layer) and the
// GPT-NeoX one (rotary on a quarter of each head, parallel residual) stay
// exactly the language model while the encoder and CCA learn.
TEST(RetroTrainerTest, RetrofitOfPretrainedLayoutsKeepsTheLanguageModel) {
  for (const std::string layout : {"gpt2", "gpt_neox"}) {
    SCOPED_TRACE(layout);
    RetroConfig config = TinyRetroConfig();
    config.decoder.tie_embeddings = false;
    if (layout == "gpt2") {
      config.decoder.positions = "learned";
      config.decoder.activation = "gelu_tanh";
    } else {
      config.decoder.rotary_fraction = 0.25;
      config.decoder.parallel_residual = true;
    }
    TransformerLM init = MakeInitLM(config, 7);
    RetroTrainingData data = MakeCopyData();
    const RetroDocuments validation = data.validation;
    auto t = RetroTrainer::Create(config, FastOptions(30, true), std::move(data), kEot, "/tmp/unused.pt", false, &init);
    ASSERT_TRUE(t.ok()) << t.status();
    const double before = (*t)->ValidationLoss(true), plain_before = (*t)->ValidationLoss(false);
    EXPECT_EQ(before, plain_before);  // zero CCA projections: retrieval changes nothing yet
    for (int i = 0; i < 30; ++i) ASSERT_TRUE(std::isfinite((*t)->Step()));
    const double after = (*t)->ValidationLoss(true), plain_after = (*t)->ValidationLoss(false);
    EXPECT_LT(after, before - 0.05) << "the CCA did not learn from the neighbours";
    EXPECT_EQ(plain_after, plain_before) << "the frozen decoder's function changed";

    RetroLM& model = (*t)->model();
    const auto init_params = init->named_parameters();
    for (const auto& item : model->decoder->named_parameters()) {
      const torch::Tensor* original = init_params.find(item.key());
      ASSERT_NE(original, nullptr) << item.key();
      EXPECT_TRUE(torch::equal(item.value(), *original)) << item.key() << " moved although the decoder is frozen";
    }
    torch::NoGradGuard no_grad;
    model->eval();
    init->eval();
    RetroBatch batch = MakeRetroWindows(validation, {{0, 0}, {1, 2}}, config, kEot);
    EXPECT_TRUE(torch::equal(model->forward(batch.tokens, torch::Tensor(), torch::Tensor()), init->forward(batch.tokens)));
  }
}

// ---------------------------------------------------------------------------
// Checkpoints

TEST(RetroTrainerTest, ResumeGivesTheSameLossCurveAsAnUninterruptedRun) {
  RetroConfig config = TinyRetroConfig();
  config.decoder.dropout = 0.1;  // the dropout RNG must resume too
  TransformerLM init = MakeInitLM(config, 6);
  for (bool freeze : {true, false}) {
    SCOPED_TRACE(freeze ? "retrofit" : "from scratch");
    TransformerLM* from = freeze ? &init : nullptr;
    testing::TempDir dir;
    RetroTrainerOptions options = FastOptions(12, freeze);
    options.eval_every = 4;  // validation in the middle must not disturb the run
    auto full = RetroTrainer::Create(config, options, MakeCopyData(), kEot, dir / "full.pt", false, from);
    ASSERT_TRUE(full.ok()) << full.status();
    RAG_ASSERT_OK((*full)->Run());

    // Interrupt after 6 steps, as SIGINT would.
    auto first = RetroTrainer::Create(config, options, MakeCopyData(), kEot, dir / "part.pt", false, from);
    ASSERT_TRUE(first.ok());
    for (int i = 0; i < 6; ++i) (*first)->Step();
    std::atomic<bool> stop{true};
    EXPECT_EQ((*first)->Run(&stop).code(), absl::StatusCode::kCancelled);

    auto resumed = RetroTrainer::Create(config, options, MakeCopyData(), kEot, dir / "part.pt", true, from);
    ASSERT_TRUE(resumed.ok()) << resumed.status();
    EXPECT_EQ((*resumed)->step(), 6);
    RAG_ASSERT_OK((*resumed)->Run());
    ASSERT_EQ((*resumed)->history().size(), 12u);
    for (size_t i = 0; i < 12; ++i) {
      EXPECT_EQ((*resumed)->history()[i].loss, (*full)->history()[i].loss) << "step " << i;
      EXPECT_EQ((*resumed)->history()[i].lr, (*full)->history()[i].lr) << "step " << i;
    }
    RetroBatch batch = (*full)->BatchForStep(1000);
    torch::NoGradGuard no_grad;
    (*full)->model()->eval();
    (*resumed)->model()->eval();
    EXPECT_TRUE(torch::equal((*full)->model()->forward(batch.tokens, batch.neighbours, batch.mask),
                             (*resumed)->model()->forward(batch.tokens, batch.neighbours, batch.mask)));
  }
}

TEST(RetroTrainerTest, ResumeWithOtherSettingsOrCorruptCheckpointIsRefused) {
  const RetroConfig config = TinyRetroConfig();
  testing::TempDir dir;
  const std::string path = dir / "c.pt";
  auto t = RetroTrainer::Create(config, FastOptions(2, false), MakeCopyData(), kEot, path, false, nullptr);
  ASSERT_TRUE(t.ok());
  RAG_ASSERT_OK((*t)->Run());
  RAG_EXPECT_OK(RetroTrainer::Create(config, FastOptions(2, false), MakeCopyData(), kEot, path, true, nullptr));

  RetroTrainerOptions other_lr = FastOptions(2, false);
  other_lr.lr = 1e-2;
  EXPECT_EQ(RetroTrainer::Create(config, other_lr, MakeCopyData(), kEot, path, true, nullptr).status().code(),
            absl::StatusCode::kFailedPrecondition);
  RetroConfig other_config = config;
  other_config.cca_layers = {1};
  EXPECT_EQ(RetroTrainer::Create(other_config, FastOptions(2, false), MakeCopyData(), kEot, path, true, nullptr)
                .status()
                .code(),
            absl::StatusCode::kFailedPrecondition);
  RetroTrainingData other_data = MakeCopyData();
  other_data.train.present[3][0] ^= 1;  // one neighbour flag differs
  EXPECT_EQ(RetroTrainer::Create(config, FastOptions(2, false), other_data, kEot, path, true, nullptr).status().code(),
            absl::StatusCode::kFailedPrecondition);

  fs::resize_file(path, fs::file_size(path) / 2);
  EXPECT_EQ(
      RetroTrainer::Create(config, FastOptions(2, false), MakeCopyData(), kEot, path, true, nullptr).status().code(),
      absl::StatusCode::kDataLoss);
  EXPECT_EQ(RetroTrainer::Create(config, FastOptions(2, false), MakeCopyData(), kEot, dir / "missing.pt", true, nullptr)
                .status()
                .code(),
            absl::StatusCode::kDataLoss);
}

// ---------------------------------------------------------------------------
// Learning

TEST(RetroTrainerTest, NeighboursCarryingTheAnswerBeatNoRetrieval) {
  // Document tokens are independent and uniform over 32 values, so no model
  // without retrieval goes below log(32) = 3.47 nats/token. With retrieval,
  // input chunks 1..7 of a window (7/8 of the targets) can be copied from
  // their neighbour; only chunk 0 stays unpredictable. A working RETRO,
  // trained from scratch, learns the copy (about 2.0 nats after 200 steps).
  const RetroConfig config = TinyRetroConfig();
  RetroTrainerOptions options = FastOptions(200, false);
  options.lr = 5e-3;
  options.warmup_steps = 20;
  options.weight_decay = 0.0;
  testing::TempDir dir;
  auto retro = RetroTrainer::Create(config, options, MakeCopyData(), kEot, dir / "retro.pt", false, nullptr);
  ASSERT_TRUE(retro.ok()) << retro.status();
  RAG_ASSERT_OK((*retro)->Run());
  // The same model, data and schedule with every neighbour missing: a plain decoder.
  auto plain =
      RetroTrainer::Create(config, options, MakeCopyData(/*retrieval=*/false), kEot, dir / "plain.pt", false, nullptr);
  ASSERT_TRUE(plain.ok()) << plain.status();
  RAG_ASSERT_OK((*plain)->Run());

  const double with_retrieval = (*retro)->ValidationLoss(true);
  const double without_retrieval = (*retro)->ValidationLoss(false);
  const double plain_decoder = (*plain)->ValidationLoss(true);
  const double entropy = std::log(static_cast<double>(kTokenValues));
  EXPECT_EQ((*plain)->ValidationLoss(false), plain_decoder);  // all missing == no retrieval
  EXPECT_GT(plain_decoder, entropy - 0.1) << "a plain decoder cannot predict random tokens";
  EXPECT_LT(with_retrieval, without_retrieval - 1.0)
      << "with retrieval " << with_retrieval << ", without " << without_retrieval;
  EXPECT_LT(with_retrieval, plain_decoder - 1.0)
      << "with retrieval " << with_retrieval << ", plain decoder " << plain_decoder;
}

// ---------------------------------------------------------------------------
// Prompt windows

// Prompt windows whose continuation is random, so only the set retrieved
// with the prompt can predict it: one neighbour (slot at random) holds the
// continuation, the other random tokens flagged missing; with `retrieval`
// false both are missing. Prompts of 1..m random tokens.
RetroPromptWindows MakePromptCopyWindows(int n, uint64_t seed, bool retrieval = true) {
  std::mt19937_64 rng(seed);
  auto token = [&] { return static_cast<TokenId>(1 + rng() % kTokenValues); };
  RetroPromptWindows w;
  for (int i = 0; i < n; ++i) {
    const int64_t p = 1 + static_cast<int64_t>(rng() % kChunk);
    std::vector<TokenId> tokens(static_cast<size_t>(p + kChunk));
    for (auto& t : tokens) t = token();
    const uint64_t slot = rng() % kNeighbours;
    std::vector<int32_t> set;
    std::vector<uint8_t> present;
    for (int64_t k = 0; k < kNeighbours; ++k) {
      for (int64_t r = 0; r < kNeighbourTokens; ++r) {
        set.push_back(k == static_cast<int64_t>(slot) ? tokens[static_cast<size_t>(p + r)] : token());
      }
      present.push_back(retrieval && k == static_cast<int64_t>(slot) ? 1 : 0);
    }
    w.tokens.push_back(std::move(tokens));
    w.prompt_tokens.push_back(p);
    w.neighbours.push_back(std::move(set));
    w.present.push_back(std::move(present));
  }
  return w;
}

TEST(MakeRetroPromptWindowsTest, ThePromptEndsChunkZeroAndTheContinuationAttendsItsSet) {
  const RetroConfig config = TinyRetroConfig();  // m = 4, K = 2, R = 4
  const TokenId e = kEot;
  RetroPromptWindows w;
  w.tokens = {{10, 11, 12, 13, 14}, {20, 21, 22, 23, 24, 25, 26, 27}};
  w.prompt_tokens = {2, 4};
  w.neighbours = {{1, 2, 3, 4, 5, 6, 7, 8}, {9, 9, 9, 9, 30, 31, 32, 33}};
  w.present = {{1, 0}, {0, 1}};
  RAG_ASSERT_OK(ValidateRetroPromptWindows(w, config, "test"));
  RetroBatch b = MakeRetroPromptWindows(w, {0, 1}, config, e);
  ASSERT_EQ(b.tokens.sizes(), torch::IntArrayRef({2, 2 * kChunk}));
  ASSERT_EQ(b.neighbours.sizes(), torch::IntArrayRef({2, 2, kNeighbours, kNeighbourTokens}));
  // Window 0: laid out [e, e, 10, 11 | 12, 13, 14]; the input is shifted by
  // one, so position 4 (the first of chunk 1) holds the prompt's last token
  // and predicts the continuation's first.
  EXPECT_EQ(Values(b.tokens[0]), (std::vector<int64_t>{e, e, e, 10, 11, 12, 13, 14}));
  EXPECT_EQ(Values(b.targets[0]), (std::vector<int64_t>{-1, -1, -1, -1, 12, 13, 14, -1}));
  // Window 1: a prompt of a whole chunk, no padding.
  EXPECT_EQ(Values(b.tokens[1]), (std::vector<int64_t>{e, 20, 21, 22, 23, 24, 25, 26}));
  EXPECT_EQ(Values(b.targets[1]), (std::vector<int64_t>{-1, -1, -1, -1, 24, 25, 26, 27}));
  // Only chunk 1 attends, to the window's present neighbours.
  EXPECT_EQ(Values(b.mask), (std::vector<int64_t>{0, 0, 1, 0, 0, 0, 0, 1}));
  EXPECT_EQ(Values(b.neighbours[0][1][0]), (std::vector<int64_t>{1, 2, 3, 4}));
  EXPECT_EQ(Values(b.neighbours[1][1][1]), (std::vector<int64_t>{30, 31, 32, 33}));
  EXPECT_EQ(b.neighbours[0][0].abs().sum().item<int64_t>(), 0);
  EXPECT_THROW(MakeRetroPromptWindows(w, {2}, config, e), c10::Error);

  // Malformed windows are refused with what is wrong.
  auto invalid = [&](const RetroPromptWindows& bad, const std::string& needle) {
    const absl::Status s = ValidateRetroPromptWindows(bad, config, "train");
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(s.message().find(needle), std::string::npos) << s;
  };
  RetroPromptWindows bad = w;
  bad.prompt_tokens[0] = 0;
  invalid(bad, "prompt window 0");
  bad = w;
  bad.prompt_tokens[1] = 5;  // longer than a chunk
  invalid(bad, "prompt window 1");
  bad = w;
  bad.tokens[0].resize(2);  // nothing after the prompt
  invalid(bad, "prompt window 0");
  bad = w;
  bad.tokens[1].push_back(28);  // more than a chunk after the prompt
  invalid(bad, "prompt window 1");
  bad = w;
  bad.neighbours[1].pop_back();
  invalid(bad, "K*R");
  bad = w;
  bad.neighbours[0][1] = static_cast<int32_t>(kVocab);
  invalid(bad, "neighbour token id");
  bad.present[0][0] = 0;  // a missing neighbour's tokens are unused
  RAG_EXPECT_OK(ValidateRetroPromptWindows(bad, config, "train"));
  bad = w;
  bad.present.pop_back();
  invalid(bad, "presence");
}

TEST(RetroTrainerTest, PromptWindowsTeachReadingThePromptsNeighbours) {
  // The ordinary windows carry no neighbour at all, so whatever the model
  // learns about reading sets it learns from the prompt windows, whose
  // random continuations (log(32) = 3.47 nats/token without retrieval) sit
  // in the set retrieved with the prompt.
  const RetroConfig config = TinyRetroConfig();
  RetroTrainerOptions options = FastOptions(300, false);
  options.lr = 5e-3;
  options.warmup_steps = 20;
  options.weight_decay = 0.0;
  options.batch_size = 2;
  options.prompt_windows = 16;
  RetroTrainingData data{MakeCopyCorpus(200, 16, 1, /*retrieval=*/false), MakeCopyCorpus(4, 16, 2, false),
                         MakePromptCopyWindows(3000, 3), MakePromptCopyWindows(64, 4)};
  testing::TempDir dir;
  auto retro = RetroTrainer::Create(config, options, data, kEot, dir / "retro.pt", false, nullptr);
  ASSERT_TRUE(retro.ok()) << retro.status();

  // Prompt windows come from their own seeded stream: the ordinary windows
  // are those of a run without them, and a step's prompts are reproducible.
  RetroTrainerOptions without = options;
  without.prompt_windows = 0;
  auto plain = RetroTrainer::Create(config, without, data, kEot, dir / "plain.pt", false, nullptr);
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ((*retro)->WindowsForStep(7), (*plain)->WindowsForStep(7));
  EXPECT_TRUE((*plain)->PromptWindowsForStep(7).empty());
  EXPECT_EQ((*retro)->PromptWindowsForStep(7).size(), 16u);
  EXPECT_EQ((*retro)->PromptWindowsForStep(7), (*retro)->PromptWindowsForStep(7));
  EXPECT_NE((*retro)->PromptWindowsForStep(7), (*retro)->PromptWindowsForStep(8));

  RAG_ASSERT_OK((*retro)->Run());
  const double with_retrieval = (*retro)->PromptValidationLoss(true);
  const double without_retrieval = (*retro)->PromptValidationLoss(false);
  EXPECT_GT(without_retrieval, std::log(static_cast<double>(kTokenValues)) - 0.2);
  EXPECT_LT(with_retrieval, without_retrieval - 1.0)
      << "with the prompt's neighbours " << with_retrieval << ", without " << without_retrieval;

  // Prompts asked for but none given.
  RetroTrainingData none = data;
  none.train_prompts = {};
  const absl::Status s = RetroTrainer::Create(config, options, none, kEot, dir / "x.pt", false, nullptr).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("no training prompt window"), std::string::npos) << s;
}

// ---------------------------------------------------------------------------
// Bad input

TEST(RetroTrainerTest, BadInputIsInvalidArgument) {
  const RetroConfig config = TinyRetroConfig();
  auto create = [&](const RetroTrainingData& data, const RetroTrainerOptions& options, TransformerLM* init,
                    const RetroConfig& c) {
    return RetroTrainer::Create(c, options, data, kEot, "/nonexistent/x.pt", false, init).status();
  };
  auto expect_invalid = [&](const absl::Status& status, const std::string& needle) {
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_NE(status.message().find(needle), std::string::npos) << status;
  };
  RAG_EXPECT_OK(create(MakeCopyData(), FastOptions(2, false), nullptr, config));

  expect_invalid(create(MakeCopyData(), FastOptions(2, true), nullptr, config), "needs a trained LM");

  RetroTrainingData data = MakeCopyData();
  data.train.neighbours[2].pop_back();
  expect_invalid(create(data, FastOptions(2, false), nullptr, config), "train document 2");
  data = MakeCopyData();
  data.validation.present[1].push_back(1);
  expect_invalid(create(data, FastOptions(2, false), nullptr, config), "validation document 1");
  data = MakeCopyData();
  data.train.neighbours.pop_back();
  expect_invalid(create(data, FastOptions(2, false), nullptr, config), "neighbour");
  data = MakeCopyData();
  data.train.tokens[0][3] = static_cast<TokenId>(kVocab);
  expect_invalid(create(data, FastOptions(2, false), nullptr, config), "vocabulary");
  data = MakeCopyData();
  data.train.neighbours[0][kNeighbourTokens + 1] = -4;  // in neighbour 1 of chunk 0
  data.train.present[0][1] = 0;
  RAG_EXPECT_OK(create(data, FastOptions(2, false), nullptr, config));  // a missing neighbour's tokens are unused
  data.train.present[0][1] = 1;
  expect_invalid(create(data, FastOptions(2, false), nullptr, config), "neighbour token id");

  // Data made for other K or R than the config's.
  RetroConfig other_k = config;
  other_k.neighbours = 1;
  expect_invalid(create(MakeCopyData(), FastOptions(2, false), nullptr, other_k), "K=1");
  RetroConfig other_r = config;
  other_r.neighbour_tokens = 12;
  expect_invalid(create(MakeCopyData(), FastOptions(2, false), nullptr, other_r), "R=12");

  // No training window.
  RetroTrainingData empty;
  empty.train.tokens = {{}, {}};
  empty.train.neighbours = {{}, {}};
  empty.train.present = {{}, {}};
  expect_invalid(create(empty, FastOptions(2, false), nullptr, config), "no training window");

  // An LM of another architecture cannot be retrofitted.
  RetroConfig wider = config;
  wider.decoder.d_ff = 256;
  TransformerLM other_lm = MakeInitLM(wider, 7);
  expect_invalid(create(MakeCopyData(), FastOptions(2, true), &other_lm, config), "init");

  RetroTrainerOptions no_steps = FastOptions(2, false);
  no_steps.steps = 0;
  EXPECT_EQ(create(MakeCopyData(), no_steps, nullptr, config).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace rag::lm

#include "lm/embedder.h"

#include <gtest/gtest.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <fstream>
#include <thread>

#include "common/file_util.h"
#include "tests/status_matchers.h"
#include "tests/lm_test_util.h"
#include "tests/test_util.h"

namespace rag::lm {
namespace {

std::unique_ptr<LanguageModel> MakeModel(double dropout = 0.0) {
  auto model = testing::MakeTinyLanguageModel(dropout);
  model->module()->eval();
  return model;
}

std::vector<float> Row(const std::vector<float>& flat, int dim, size_t i) {
  return std::vector<float>(flat.begin() + i * dim, flat.begin() + (i + 1) * dim);
}

float MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  float m = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) m = std::max(m, std::abs(a[i] - b[i]));
  return m;
}

double Norm(const std::vector<float>& v) {
  double s = 0;
  for (float x : v) s += static_cast<double>(x) * x;
  return std::sqrt(s);
}

// Embeds one sequence alone.
std::vector<float> EmbedOne(Embedder& e, const std::vector<TokenId>& seq) {
  std::vector<float> out;
  const absl::Status s = e.Embed({seq}, &out);
  EXPECT_TRUE(s.ok()) << s;
  return out;
}

TEST(LmEmbedderTest, ShapeUnitNormAndDeterminism) {
  auto model = MakeModel();
  auto embedder = MakeLmEmbedder(model.get());
  EXPECT_EQ(embedder->dim(), 64);
  EXPECT_EQ(embedder->max_tokens(), 64);
  const Tokenizer& tok = model->tokenizer();
  std::vector<std::vector<TokenId>> seqs = {tok.Encode("The cat sees the red house."),
                                            tok.Encode("A dog likes an apple every day."),
                                            tok.Encode("The king")};
  std::vector<float> out;
  RAG_ASSERT_OK(embedder->Embed(seqs, &out));
  ASSERT_EQ(out.size(), 3u * 64);
  for (size_t i = 0; i < 3; ++i) EXPECT_NEAR(Norm(Row(out, 64, i)), 1.0, 1e-5);
  std::vector<float> again;
  RAG_ASSERT_OK(embedder->Embed(seqs, &again));
  EXPECT_EQ(out, again);

  std::vector<float> none = {1.0f};
  RAG_ASSERT_OK(embedder->Embed({}, &none));
  EXPECT_TRUE(none.empty());
}

TEST(LmEmbedderTest, MatchesManualMeanOfHiddenStates) {
  auto model = MakeModel();
  auto embedder = MakeLmEmbedder(model.get());
  const std::vector<TokenId> seq = model->tokenizer().Encode("My sister paints a wooden box at night.");
  torch::NoGradGuard no_grad;
  std::vector<int64_t> ids(seq.begin(), seq.end());
  auto hidden = model->module()->ForwardHidden(torch::tensor(ids, torch::kLong).unsqueeze(0));  // [1, T, D]
  auto mean = hidden.mean(1).squeeze(0);
  mean = (mean / mean.norm()).contiguous();
  std::vector<float> want(mean.data_ptr<float>(), mean.data_ptr<float>() + mean.numel());
  EXPECT_LT(MaxAbsDiff(EmbedOne(*embedder, seq), want), 1e-5);
}

TEST(LmEmbedderTest, PaddingDoesNotChangeTheVector) {
  auto model = MakeModel();
  const Tokenizer& tok = model->tokenizer();
  std::vector<std::vector<TokenId>> seqs = {
      tok.Encode("The cat"),
      tok.Encode("The old man remembers the quiet road in the morning. A bird hears a letter again."),
      tok.Encode("A farmer builds a small boat."),
      tok.Encode("Our neighbour follows the river every day. The child feeds a bird."),
      tok.Encode("Hi")};
  // Batch sizes 32 (one padded batch) and 2 (several batches, reordered by length).
  for (int64_t batch_size : {32, 2}) {
    auto embedder = MakeLmEmbedder(model.get(), batch_size);
    std::vector<float> batched;
    RAG_ASSERT_OK(embedder->Embed(seqs, &batched));
    for (size_t i = 0; i < seqs.size(); ++i) {
      EXPECT_LT(MaxAbsDiff(Row(batched, 64, i), EmbedOne(*embedder, seqs[i])), 1e-5)
          << "sequence " << i << " batch_size " << batch_size;
    }
  }
}

TEST(LmEmbedderTest, SameTextSameVectorDifferentTextDifferentVector) {
  auto model = MakeModel();
  auto embedder = MakeLmEmbedder(model.get());
  const Tokenizer& tok = model->tokenizer();
  std::vector<std::vector<TokenId>> seqs = {tok.Encode("The teacher carries a blue cup."),
                                            tok.Encode("The teacher carries a blue cup."),
                                            tok.Encode("A dog finds the tall tree at night.")};
  std::vector<float> out;
  RAG_ASSERT_OK(embedder->Embed(seqs, &out));
  EXPECT_LT(MaxAbsDiff(Row(out, 64, 0), Row(out, 64, 1)), 1e-6);
  EXPECT_GT(MaxAbsDiff(Row(out, 64, 0), Row(out, 64, 2)), 1e-3);
}

TEST(LmEmbedderTest, LongSequenceIsTruncatedToContext) {
  auto model = MakeModel();
  auto embedder = MakeLmEmbedder(model.get());
  std::vector<TokenId> long_seq;
  for (const auto& d : testing::MakeCorpus(1, 7)) long_seq = model->tokenizer().Encode(d.text);
  ASSERT_GT(long_seq.size(), 100u);
  const std::vector<TokenId> head(long_seq.begin(), long_seq.begin() + embedder->max_tokens());
  std::vector<float> out;
  RAG_ASSERT_OK(embedder->Embed({long_seq, {5, 6, 7}}, &out));
  EXPECT_LT(MaxAbsDiff(Row(out, 64, 0), EmbedOne(*embedder, head)), 1e-5);
}

TEST(LmEmbedderTest, BadInputsAreInvalidArgument) {
  auto model = MakeModel();
  auto embedder = MakeLmEmbedder(model.get());
  std::vector<float> out;
  absl::Status empty = embedder->Embed({{1, 2}, {}}, &out);
  EXPECT_EQ(empty.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(empty.message().find("sequence 1"), std::string::npos) << empty;
  absl::Status oov = embedder->Embed({{1, 2, 100000}}, &out);
  EXPECT_EQ(oov.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(embedder->Embed({{-1}}, &out).code(), absl::StatusCode::kInvalidArgument);
}

TEST(LmEmbedderTest, TrainingModeWithDropoutIsRefused) {
  auto model = MakeModel(/*dropout=*/0.1);
  model->module()->train();
  auto embedder = MakeLmEmbedder(model.get());
  std::vector<float> out;
  EXPECT_EQ(embedder->Embed({{1, 2, 3}}, &out).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(model->module()->is_training());  // left as the owner set it
  model->module()->eval();
  RAG_EXPECT_OK(embedder->Embed({{1, 2, 3}}, &out));
}

TEST(LmEmbedderTest, HashIsTheModelContentHash) {
  testing::TempDir dir;
  auto model = MakeModel();
  RAG_ASSERT_OK(model->Save(dir.path()));
  auto embedder = MakeLmEmbedder(model.get());
  EXPECT_EQ(embedder->hash(), model->content_hash());
  EXPECT_EQ(embedder->hash().size(), 16u);
  EXPECT_EQ(embedder->description(), "lm-mean-pool(" + model->content_hash() + ")");
}

TEST(LmEmbedderTest, ConcurrentCallsAgree) {
  auto model = MakeModel();
  auto embedder = MakeLmEmbedder(model.get(), 4);
  const Tokenizer& tok = model->tokenizer();
  std::vector<std::vector<TokenId>> seqs;
  for (const auto& d : testing::MakeCorpus(6, 3, 2)) seqs.push_back(tok.Encode(d.text));
  std::vector<float> want;
  RAG_ASSERT_OK(embedder->Embed(seqs, &want));
  std::vector<std::vector<float>> got(3);
  std::vector<absl::Status> status(3);
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) threads.emplace_back([&, t] { status[t] = embedder->Embed(seqs, &got[t]); });
  for (auto& th : threads) th.join();
  for (int t = 0; t < 3; ++t) {
    RAG_EXPECT_OK(status[t]);
    EXPECT_LT(MaxAbsDiff(got[t], want), 1e-6);
  }
}

// Counts the calls that reach the real embedder, and makes each one slow
// enough that concurrent callers overlap.
class CountingEmbedder final : public Embedder {
 public:
  explicit CountingEmbedder(Embedder* inner) : inner_(inner) {}
  int dim() const override { return inner_->dim(); }
  int64_t max_tokens() const override { return inner_->max_tokens(); }
  std::string hash() const override { return inner_->hash(); }
  std::string description() const override { return inner_->description(); }
  absl::Status Embed(const std::vector<std::vector<TokenId>>& sequences, std::vector<float>* out) override {
    ++calls;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    return inner_->Embed(sequences, out);
  }
  std::atomic<int> calls{0};

 private:
  Embedder* inner_;
};

TEST(BatchingEmbedderTest, ConcurrentCallersShareForwardsAndGetTheirOwnResults) {
  auto model = MakeModel();
  auto lm = MakeLmEmbedder(model.get(), 64);
  CountingEmbedder counting(lm.get());
  auto batching = MakeBatchingEmbedder(&counting, 64);
  const Tokenizer& tok = model->tokenizer();
  const auto docs = testing::MakeCorpus(16, 9, 2);
  // Runs one Embed per input on its own thread, all at once.
  auto run = [&](const std::vector<std::vector<std::vector<TokenId>>>& inputs, std::vector<std::vector<float>>* got,
                 std::vector<absl::Status>* status) {
    got->assign(inputs.size(), {});
    status->assign(inputs.size(), absl::OkStatus());
    std::vector<std::thread> threads;
    for (size_t c = 0; c < inputs.size(); ++c) {
      threads.emplace_back([&, c] { (*status)[c] = batching->Embed(inputs[c], &(*got)[c]); });
    }
    for (auto& t : threads) t.join();
  };
  constexpr int kCallers = 12;
  std::vector<std::vector<std::vector<TokenId>>> inputs(kCallers);
  for (int c = 0; c < kCallers; ++c) {
    inputs[c] = {tok.Encode(docs[c % docs.size()].text), tok.Encode(docs[(c + 5) % docs.size()].text)};
  }
  std::vector<std::vector<float>> got;
  std::vector<absl::Status> status;
  run(inputs, &got, &status);
  // 12 overlapping callers share forwards: the first runs alone, the rest
  // queue behind it and go together.
  EXPECT_LT(counting.calls.load(), kCallers / 2) << counting.calls.load();
  for (int c = 0; c < kCallers; ++c) {
    RAG_ASSERT_OK(status[c]);
    std::vector<float> want;
    RAG_ASSERT_OK(lm->Embed(inputs[c], &want));
    EXPECT_LT(MaxAbsDiff(got[c], want), 1e-5) << "caller " << c;
  }
  // A bad id fails its own caller only.
  inputs.resize(4);
  inputs[2] = {{tok.vocab_size() + 3}};
  run(inputs, &got, &status);
  for (int c = 0; c < 4; ++c) {
    if (c == 2) {
      EXPECT_EQ(status[c].code(), absl::StatusCode::kInvalidArgument) << status[c];
    } else {
      RAG_EXPECT_OK(status[c]);
      EXPECT_EQ(got[c].size(), 2u * static_cast<size_t>(lm->dim()));
    }
  }
  // A lone caller goes straight through.
  counting.calls = 0;
  std::vector<float> alone;
  RAG_ASSERT_OK(batching->Embed(inputs[0], &alone));
  EXPECT_EQ(counting.calls.load(), 1);
}

// A TorchScript encoder: mean of a fixed embedding table over the tokens.
torch::Tensor SaveMeanEncoder(const std::string& path, int64_t vocab, int64_t dim) {
  torch::manual_seed(5);
  torch::Tensor table = torch::randn({vocab, dim});
  torch::jit::Module m("Enc");
  m.register_parameter("emb", table, /*is_buffer=*/false);
  m.define(R"JIT(
def forward(self, ids):
    return self.emb[ids].mean(1)
)JIT");
  m.save(path);
  return table;
}

TEST(TorchScriptEmbedderTest, LoadsAndMatchesManualComputation) {
  testing::TempDir dir;
  const std::string path = dir / "enc.pt";
  torch::Tensor table = SaveMeanEncoder(path, 50, 8);
  auto embedder = LoadTorchScriptEmbedder(path, /*max_tokens=*/6);
  ASSERT_TRUE(embedder.ok()) << embedder.status();
  EXPECT_EQ((*embedder)->dim(), 8);
  EXPECT_EQ((*embedder)->max_tokens(), 6);
  EXPECT_EQ((*embedder)->hash(), *HashFileHex(path));
  EXPECT_EQ((*embedder)->description(), "torchscript(" + path + ")");

  // Mixed lengths, one longer than max_tokens (truncated to its first 6).
  std::vector<std::vector<TokenId>> seqs = {{1, 2, 3}, {4, 5, 6, 7, 8, 9, 10, 11}, {12}, {13, 14, 15}};
  std::vector<float> out;
  RAG_ASSERT_OK((*embedder)->Embed(seqs, &out));
  ASSERT_EQ(out.size(), seqs.size() * 8);
  for (size_t i = 0; i < seqs.size(); ++i) {
    std::vector<int64_t> ids(seqs[i].begin(), seqs[i].begin() + std::min<size_t>(seqs[i].size(), 6));
    auto v = table.index_select(0, torch::tensor(ids, torch::kLong)).mean(0);
    v = (v / v.norm()).contiguous();
    std::vector<float> want(v.data_ptr<float>(), v.data_ptr<float>() + 8);
    EXPECT_LT(MaxAbsDiff(Row(out, 8, i), want), 1e-5) << "sequence " << i;
    EXPECT_NEAR(Norm(Row(out, 8, i)), 1.0, 1e-5);
  }
  EXPECT_EQ((*embedder)->Embed({{1}, {}}, &out).code(), absl::StatusCode::kInvalidArgument);
  // Ids the encoder cannot take are an error, not a crash.
  EXPECT_FALSE((*embedder)->Embed({{1, 999}}, &out).ok());
}

TEST(TorchScriptEmbedderTest, MissingFileIsNotFound) {
  testing::TempDir dir;
  EXPECT_EQ(LoadTorchScriptEmbedder(dir / "nope.pt").status().code(), absl::StatusCode::kNotFound);
}

TEST(TorchScriptEmbedderTest, GarbageFileIsAnError) {
  testing::TempDir dir;
  const std::string path = dir / "garbage.pt";
  {
    std::ofstream f(path, std::ios::binary);
    f << "this is not a torchscript archive";
  }
  auto loaded = LoadTorchScriptEmbedder(path);
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kDataLoss) << loaded.status();
}

TEST(TorchScriptEmbedderTest, WrongOutputOrSignatureFailsAtLoad) {
  testing::TempDir dir;
  struct Case {
    const char* name;
    const char* source;
  };
  const Case cases[] = {
      {"rank3", "def forward(self, ids):\n    return self.emb[ids]\n"},
      {"integer", "def forward(self, ids):\n    return ids\n"},
      {"tuple", "def forward(self, ids):\n    return (self.emb[ids].mean(1), ids)\n"},
      {"two_args", "def forward(self, ids, mask):\n    return self.emb[ids].mean(1)\n"},
      {"out_of_range", "def forward(self, ids):\n    return self.emb[ids + 1000].mean(1)\n"},
      {"asserts", "def forward(self, ids):\n    assert ids.size(1) > 100\n    return self.emb[ids].mean(1)\n"},
  };
  for (const Case& c : cases) {
    const std::string path = dir / (std::string(c.name) + ".pt");
    torch::jit::Module m("Enc");
    m.register_parameter("emb", torch::randn({10, 4}), false);
    m.define(c.source);
    m.save(path);
    auto loaded = LoadTorchScriptEmbedder(path);
    EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument) << c.name << ": " << loaded.status();
  }
}

}  // namespace
}  // namespace rag::lm

// TorchScript language models (lm/torchscript_lm.h): a real TorchScript
// module, defined from TorchScript source here (no PyTorch needed), saved as
// model.torchscript.pt next to config.json and GPT-2's tokenizer files, then
// opened through LanguageModel::Open and used by the scorer and generator.
//
// Tensor legend: B batch, T tokens, C context, D width, V vocabulary.
#include "lm/torchscript_lm.h"

#include <gtest/gtest.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/file_util.h"
#include "lm/generator.h"
#include "lm/language_model.h"
#include "lm/retro_trainer.h"
#include "lm/scorer.h"
#include "tests/status_matchers.h"
#include "tests/test_util.h"

namespace rag::lm {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

constexpr int64_t kVocab = 50257;  // GPT-2's tokenizer
constexpr int64_t kDim = 8;
constexpr int64_t kContext = 24;

std::string Gpt2Dir() {
  const char* dir = std::getenv("RAG_GPT2_DIR");
  return dir != nullptr ? dir : "data/gpt2";
}

// A causal toy LM: the hidden state at position i is LayerNorm(mean of the
// token embeddings 0..i + position embedding i), logits tie to the token
// embedding. Every position depends on the whole prefix and on its absolute
// position, so a cache that dropped the prefix or shifted positions shows.
// (Source compiled without Python's resolver: no torch.float32 and the like.)
constexpr char kSource[] = R"JIT(
def hidden(self, tokens):
    t = tokens.size(1)
    x = torch.embedding(self.wte, tokens)
    steps = torch.cumsum(torch.ones_like(x), 1)
    x = torch.cumsum(x, 1) / steps + self.wpe[:t]
    return torch.layer_norm(x, [self.wte.size(1)], self.ln_w, self.ln_b, 1e-5)

def logits(self, h):
    return torch.matmul(h, self.wte.t())
)JIT";

struct Weights {
  torch::Tensor wte;   // [V, D]
  torch::Tensor wpe;   // [C, D]
  torch::Tensor ln_w;  // [D]
  torch::Tensor ln_b;  // [D]
  int64_t count() const { return wte.numel() + wpe.numel() + ln_w.numel() + ln_b.numel(); }
};

Weights MakeWeights(uint64_t seed, int64_t vocab = kVocab) {
  torch::manual_seed(seed);
  return {torch::randn({vocab, kDim}), 0.5 * torch::randn({kContext, kDim}), 1.0 + 0.1 * torch::randn({kDim}),
          0.1 * torch::randn({kDim})};
}

json DefaultConfig() {
  return {{"model_type", "torchscript"},
          {"vocab_size", kVocab},
          {"hidden_size", kDim},
          {"max_position_embeddings", kContext},
          {"architecture", "tiny-cumulative"}};
}

void SaveScript(const std::string& path, const Weights& w, const std::string& source = kSource) {
  torch::jit::Module m("TinyCumulativeLM");
  m.register_parameter("wte", w.wte, /*is_buffer=*/false);
  m.register_parameter("wpe", w.wpe, /*is_buffer=*/false);
  m.register_parameter("ln_w", w.ln_w, /*is_buffer=*/false);
  m.register_parameter("ln_b", w.ln_b, /*is_buffer=*/false);
  m.define(source);
  m.save(path);
}

void WriteConfig(const std::string& dir, const json& config) {
  ASSERT_TRUE(WriteFileAtomic((fs::path(dir) / kConfigFile).string(), config.dump(2)).ok());
}

// GPT-2's encoder.json and vocab.bpe under their Hugging Face names.
void CopyTokenizer(const std::string& dir) {
  ASSERT_TRUE(fs::exists(Gpt2Dir() + "/encoder.json"))
      << "GPT-2 tokenizer files needed in " << Gpt2Dir() << " (set RAG_GPT2_DIR)";
  fs::copy_file(Gpt2Dir() + "/encoder.json", fs::path(dir) / "vocab.json", fs::copy_options::overwrite_existing);
  fs::copy_file(Gpt2Dir() + "/vocab.bpe", fs::path(dir) / "merges.txt", fs::copy_options::overwrite_existing);
}

// A complete model directory; returns the weights in it.
Weights WriteModelDir(const std::string& dir, uint64_t seed = 1, const json& config = DefaultConfig(),
                      const std::string& source = kSource) {
  Weights w = MakeWeights(seed);
  SaveScript((fs::path(dir) / kTorchScriptFile).string(), w, source);
  WriteConfig(dir, config);
  CopyTokenizer(dir);
  return w;
}

// The same computation written out position by position, without cumsum
// or layer_norm. tokens: [B, T] -> [B, T, D].
torch::Tensor ReferenceHidden(const Weights& w, const torch::Tensor& tokens) {
  const int64_t b = tokens.size(0), t = tokens.size(1);
  std::vector<torch::Tensor> batch;
  for (int64_t r = 0; r < b; ++r) {
    auto rows = w.wte.index_select(0, tokens[r]);  // [T, D]
    std::vector<torch::Tensor> positions;
    for (int64_t i = 0; i < t; ++i) {
      auto x = rows.narrow(0, 0, i + 1).mean(0) + w.wpe[i];  // [D]
      auto centred = x - x.mean();
      auto var = (centred * centred).mean();
      positions.push_back(centred / torch::sqrt(var + 1e-5) * w.ln_w + w.ln_b);
    }
    batch.push_back(torch::stack(positions));  // [T, D]
  }
  return torch::stack(batch);  // [B, T, D]
}

// [B, T, D] -> [B, T, V]
torch::Tensor ReferenceLogits(const Weights& w, const torch::Tensor& hidden) {
  return torch::matmul(hidden, w.wte.t());
}

absl::StatusOr<std::unique_ptr<LanguageModel>> OpenDir(const testing::TempDir& dir) {
  return LanguageModel::Open(dir.path());
}

TEST(TorchScriptLmTest, OpensWithIdentityAndParameterCount) {
  testing::TempDir dir;
  const Weights w = WriteModelDir(dir.path());
  EXPECT_TRUE(IsTorchScriptModelDir(dir.path()));
  auto model = OpenDir(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  const ModelIdentity& id = (*model)->identity();
  EXPECT_EQ(id.format, "torchscript");
  EXPECT_EQ(id.architecture, "tiny-cumulative");
  EXPECT_EQ(id.stored_dtype, "F32");
  EXPECT_EQ(id.content_hash.size(), 16u);
  EXPECT_EQ((*model)->content_hash(), id.content_hash);
  EXPECT_TRUE((*model)->module()->scripted());
  EXPECT_EQ((*model)->config().vocab_size, kVocab);
  EXPECT_EQ((*model)->config().d_model, kDim);
  EXPECT_EQ((*model)->config().context, kContext);
  EXPECT_EQ((*model)->tokenizer().vocab_size(), kVocab);
  EXPECT_EQ((*model)->tokenizer().eot_id(), 50256);
  EXPECT_EQ((*model)->NumParameters(), w.count());
  EXPECT_NE((*model)->module()->named_parameters().find("script/wte"), nullptr);
  EXPECT_FALSE((*model)->module()->is_training());

  // The hash is a function of the files: the same on reopening, different
  // when the archive or config.json changes.
  auto again = OpenDir(dir);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ((*again)->content_hash(), id.content_hash);
  json config = DefaultConfig();
  config["note"] = "an extra key is allowed and hashed";
  WriteConfig(dir.path(), config);
  auto edited = OpenDir(dir);
  ASSERT_TRUE(edited.ok()) << edited.status();
  EXPECT_NE((*edited)->content_hash(), id.content_hash);
  SaveScript(dir / kTorchScriptFile, MakeWeights(2));
  auto retrained = OpenDir(dir);
  ASSERT_TRUE(retrained.ok()) << retrained.status();
  EXPECT_NE((*retrained)->content_hash(), (*edited)->content_hash());
}

TEST(TorchScriptLmTest, ArchitectureDefaultsToTheModuleClassName) {
  testing::TempDir dir;
  json config = DefaultConfig();
  config.erase("architecture");
  WriteModelDir(dir.path(), 1, config);
  auto model = OpenDir(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->identity().architecture, "TinyCumulativeLM");
}

TEST(TorchScriptLmTest, HiddenAndLogitsMatchTheReference) {
  testing::TempDir dir;
  const Weights w = WriteModelDir(dir.path());
  auto model = OpenDir(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  torch::NoGradGuard no_grad;
  torch::manual_seed(3);
  auto tokens = torch::randint(0, kVocab, {2, 17}, torch::kLong);  // [B, T]
  auto want_hidden = ReferenceHidden(w, tokens);
  auto hidden = (*model)->module()->ForwardHidden(tokens);
  ASSERT_EQ(hidden.sizes(), want_hidden.sizes());
  EXPECT_TRUE(torch::allclose(hidden, want_hidden, 1e-5, 1e-5)) << (hidden - want_hidden).abs().max();
  auto logits = (*model)->module()->forward(tokens);
  auto want_logits = ReferenceLogits(w, want_hidden);
  ASSERT_EQ(logits.sizes(), (std::vector<int64_t>{2, 17, kVocab}));
  EXPECT_TRUE(torch::allclose(logits, want_logits, 1e-5, 1e-5)) << (logits - want_logits).abs().max();
  // Longer than the context: refused like our own models.
  EXPECT_THROW((*model)->module()->ForwardHidden(torch::zeros({1, kContext + 1}, torch::kLong)), c10::Error);
}

TEST(TorchScriptLmTest, CachedStepsEqualTheFullForward) {
  testing::TempDir dir;
  WriteModelDir(dir.path());
  auto model = OpenDir(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  TransformerLM& lm = (*model)->module();
  torch::NoGradGuard no_grad;
  torch::manual_seed(4);
  auto tokens = torch::randint(0, kVocab, {2, 14}, torch::kLong);  // [B, T]
  auto full = lm->ForwardHidden(tokens);
  KVCache cache;
  std::vector<torch::Tensor> parts;
  int64_t at = 0;
  for (int64_t n : {5, 1, 1, 7}) {
    auto part = lm->ForwardHidden(tokens.narrow(1, at, n), &cache);
    ASSERT_EQ(part.sizes(), (std::vector<int64_t>{2, n, kDim}));
    parts.push_back(part);
    at += n;
    EXPECT_EQ(cache.length(), at);
  }
  EXPECT_TRUE(torch::allclose(torch::cat(parts, 1), full, 1e-6, 1e-6));
  cache.Clear();
  EXPECT_EQ(cache.length(), 0);
  // Cleared, the whole context fits again; one token more does not.
  EXPECT_EQ(lm->ForwardHidden(torch::zeros({2, kContext}, torch::kLong), &cache).size(1), kContext);
  EXPECT_THROW(lm->ForwardHidden(torch::zeros({2, 1}, torch::kLong), &cache), c10::Error);
}

TEST(TorchScriptLmTest, ScorerGivesTheReferenceLogProbs) {
  testing::TempDir dir;
  const Weights w = WriteModelDir(dir.path());
  auto model = OpenDir(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  const Tokenizer& tok = (*model)->tokenizer();
  const std::vector<TokenId> ids = tok.Encode("The cat sat on the mat, and the dog sat by the door.");
  ASSERT_GT(ids.size(), 5u);
  ASSERT_LT(static_cast<int64_t>(ids.size()), kContext);  // one window: bos + ids fit
  ScoredTokens scored = ScoreTokensWithHidden((*model)->module(), ids, tok.eot_id());
  ASSERT_EQ(scored.logprobs.size(), ids.size());

  std::vector<int64_t> input = {tok.eot_id()};
  input.insert(input.end(), ids.begin(), ids.end() - 1);
  torch::NoGradGuard no_grad;
  auto hidden = ReferenceHidden(w, torch::tensor(input, torch::kLong).unsqueeze(0));  // [1, T, D]
  auto logp = torch::log_softmax(ReferenceLogits(w, hidden), -1)[0];                   // [T, V]
  for (size_t i = 0; i < ids.size(); ++i) {
    EXPECT_NEAR(scored.logprobs[i], logp[i][ids[i]].item<float>(), 1e-4) << "token " << i;
  }
  ASSERT_TRUE(scored.hidden.defined());
  EXPECT_TRUE(torch::allclose(scored.hidden, hidden[0], 1e-5, 1e-5));  // the kNN-LM keys
  // Longer than the context: sliding windows, every token scored, all finite.
  std::vector<TokenId> many;
  for (int i = 0; i < 4; ++i) many.insert(many.end(), ids.begin(), ids.end());
  const std::vector<float> long_scores = ScoreTokens((*model)->module(), many, tok.eot_id());
  ASSERT_EQ(long_scores.size(), many.size());
  for (float s : long_scores) EXPECT_TRUE(std::isfinite(s) && s <= 0);
  // The first window is the short text's: the same scores.
  for (size_t i = 0; i < ids.size(); ++i) EXPECT_NEAR(long_scores[i], scored.logprobs[i], 1e-4) << i;
}

TEST(TorchScriptLmTest, GreedyGenerationWithCacheEqualsRecomputationAndReference) {
  testing::TempDir dir;
  const Weights w = WriteModelDir(dir.path());
  auto model = OpenDir(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  const TokenId eot = (*model)->tokenizer().eot_id();
  const std::vector<TokenId> prompt = (*model)->tokenizer().Encode("Once upon a time");
  SamplingOptions options;
  options.temperature = 0;
  options.stop_at_eot = false;
  options.max_tokens = kContext - 1 - static_cast<int64_t>(prompt.size());  // stays in one window
  auto cached = Generate((*model)->module(), prompt, eot, options);
  ASSERT_TRUE(cached.ok()) << cached.status();
  options.use_cache = false;
  auto recomputed = Generate((*model)->module(), prompt, eot, options);
  ASSERT_TRUE(recomputed.ok()) << recomputed.status();
  EXPECT_EQ(*cached, *recomputed);
  ASSERT_EQ(static_cast<int64_t>(cached->size()), options.max_tokens);

  // The same greedy loop on the reference computation.
  torch::NoGradGuard no_grad;
  std::vector<int64_t> seq = {eot};
  seq.insert(seq.end(), prompt.begin(), prompt.end());
  std::vector<TokenId> want;
  for (int64_t step = 0; step < options.max_tokens; ++step) {
    auto h = ReferenceHidden(w, torch::tensor(seq, torch::kLong).unsqueeze(0));  // [1, T, D]
    auto last = ReferenceLogits(w, h)[0][h.size(1) - 1];                          // [V]
    want.push_back(static_cast<TokenId>(last.argmax().item<int64_t>()));
    seq.push_back(want.back());
  }
  EXPECT_EQ(*cached, want);

  // Past the context the cache is restarted, as for our own models.
  options.use_cache = true;
  options.max_tokens = 2 * kContext;
  auto long_run = Generate((*model)->module(), prompt, eot, options);
  ASSERT_TRUE(long_run.ok()) << long_run.status();
  EXPECT_EQ(static_cast<int64_t>(long_run->size()), 2 * kContext);
}

TEST(TorchScriptLmTest, SavingAndRetroAreRefused) {
  testing::TempDir dir;
  WriteModelDir(dir.path());
  auto model = OpenDir(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  testing::TempDir out;
  absl::Status saved = (*model)->Save(out.path());
  EXPECT_EQ(saved.code(), absl::StatusCode::kFailedPrecondition) << saved;
  EXPECT_TRUE(fs::is_empty(out.path()));

  auto retro = RetroTrainer::Create(RetroConfig(), RetroTrainerOptions(), RetroTrainingData(), 0, out / "c.pt",
                                    /*resume=*/false, &(*model)->module());
  ASSERT_FALSE(retro.ok());
  EXPECT_EQ(retro.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(retro.status().message()).find("TorchScript"), std::string::npos) << retro.status();
}

// ---------------------------------------------------------------- errors

std::string MessageOf(const absl::Status& s) { return std::string(s.message()); }

TEST(TorchScriptLmErrorsTest, MissingArchiveIsNotFoundAndNamed) {
  testing::TempDir dir;
  WriteConfig(dir.path(), DefaultConfig());
  CopyTokenizer(dir.path());
  ASSERT_TRUE(IsTorchScriptModelDir(dir.path()));
  auto model = OpenDir(dir);
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kNotFound) << model.status();
  EXPECT_NE(MessageOf(model.status()).find(kTorchScriptFile), std::string::npos) << model.status();
}

TEST(TorchScriptLmErrorsTest, TruncatedOrForeignArchiveIsDataLoss) {
  testing::TempDir dir;
  WriteModelDir(dir.path());
  const std::string path = dir / kTorchScriptFile;
  fs::resize_file(path, fs::file_size(path) / 2);
  auto truncated = OpenDir(dir);
  ASSERT_FALSE(truncated.ok());
  EXPECT_EQ(truncated.status().code(), absl::StatusCode::kDataLoss) << truncated.status();
  EXPECT_NE(MessageOf(truncated.status()).find(path), std::string::npos) << truncated.status();

  ASSERT_TRUE(WriteFileAtomic(path, "not a zip archive at all").ok());
  auto garbage = OpenDir(dir);
  EXPECT_EQ(garbage.status().code(), absl::StatusCode::kDataLoss) << garbage.status();
}

TEST(TorchScriptLmErrorsTest, MissingMethodIsNamed) {
  testing::TempDir dir;
  const std::string only_hidden = R"JIT(
def hidden(self, tokens):
    return torch.embedding(self.wte, tokens)
)JIT";
  WriteModelDir(dir.path(), 1, DefaultConfig(), only_hidden);
  auto model = OpenDir(dir);
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument) << model.status();
  EXPECT_NE(MessageOf(model.status()).find("no method 'logits'"), std::string::npos) << model.status();
  EXPECT_NE(MessageOf(model.status()).find(kTorchScriptFile), std::string::npos) << model.status();
}

TEST(TorchScriptLmErrorsTest, WrongShapesTypesAndFailuresAreReportedByTheProbe) {
  struct Case {
    const char* name;
    std::string source;  // kSource's methods replaced
    json config;
    const char* expect;  // in the message
  };
  json wide = DefaultConfig();
  wide["hidden_size"] = kDim + 1;
  json big_vocab = DefaultConfig();
  big_vocab["vocab_size"] = kVocab + 3;
  const std::string logits = "\ndef logits(self, h):\n    return torch.matmul(h, self.wte.t())\n";
  const std::string hidden = "\ndef hidden(self, tokens):\n    return torch.embedding(self.wte, tokens)\n";
  const Case cases[] = {
      {"hidden width differs from hidden_size", kSource, wide, "returned shape [1, 2, 8], expected [1, 2, 9]"},
      {"logits width differs from vocab_size", kSource, big_vocab, "expected [1, 2, 50260]"},
      {"hidden returns a tuple",
       "\ndef hidden(self, tokens):\n    x = torch.embedding(self.wte, tokens)\n    return (x, x)\n" + logits,
       DefaultConfig(), "returned Tuple"},
      {"hidden drops the batch dim", "\ndef hidden(self, tokens):\n    return torch.embedding(self.wte, tokens[0])\n" +
                                         logits,
       DefaultConfig(), "expected [1, 2, 8]"},
      {"hidden returns float64",
       "\ndef hidden(self, tokens):\n    return torch.embedding(self.wte, tokens).double()\n" + logits, DefaultConfig(),
       "expected Float"},
      {"hidden raises", "\ndef hidden(self, tokens):\n    assert tokens.size(1) > 100\n    return "
                        "torch.embedding(self.wte, tokens)\n" + logits,
       DefaultConfig(), "hidden(ids [1, 2] int64) failed"},
      {"logits takes two arguments", hidden + "\ndef logits(self, h, scale: float):\n    return scale * "
                                              "torch.matmul(h, self.wte.t())\n",
       DefaultConfig(), "logits(hidden [1, 2, 8]) failed"},
  };
  for (const Case& c : cases) {
    testing::TempDir dir;
    WriteModelDir(dir.path(), 1, c.config, c.source);
    auto model = OpenDir(dir);
    ASSERT_FALSE(model.ok()) << c.name;
    EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument) << c.name << ": " << model.status();
    EXPECT_NE(MessageOf(model.status()).find(c.expect), std::string::npos) << c.name << ": " << model.status();
    EXPECT_NE(MessageOf(model.status()).find(kTorchScriptFile), std::string::npos) << c.name << ": " << model.status();
  }
}

TEST(TorchScriptLmErrorsTest, ConfigAndTokenizerProblemsAreNamed) {
  testing::TempDir dir;
  WriteModelDir(dir.path());
  auto error = [&](const json& config) {
    WriteConfig(dir.path(), config);
    auto model = OpenDir(dir);
    EXPECT_FALSE(model.ok());
    return model.ok() ? absl::OkStatus() : model.status();
  };
  json missing = DefaultConfig();
  missing.erase("vocab_size");
  EXPECT_NE(MessageOf(error(missing)).find("missing 'vocab_size'"), std::string::npos);
  json too_long = DefaultConfig();
  too_long["max_position_embeddings"] = 131072;
  EXPECT_NE(MessageOf(error(too_long)).find("'max_position_embeddings' must be in [2, 65536]"), std::string::npos);
  json other_type = DefaultConfig();
  other_type["model_type"] = "gpt2";  // next to model.torchscript.pt: not silently read as GPT-2
  EXPECT_NE(MessageOf(error(other_type)).find("'model_type' must be \"torchscript\""), std::string::npos);
  json text = DefaultConfig();
  text["hidden_size"] = "8";
  EXPECT_NE(MessageOf(error(text)).find("'hidden_size' must be an integer"), std::string::npos);

  // A tokenizer larger than the model's vocabulary.
  json small = DefaultConfig();
  small["vocab_size"] = 1000;
  Weights w = MakeWeights(1, 1000);
  SaveScript(dir / kTorchScriptFile, w);
  absl::Status s = error(small);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(MessageOf(s).find("the tokenizer has 50257 tokens"), std::string::npos) << s;

  // No tokenizer at all.
  WriteConfig(dir.path(), DefaultConfig());
  SaveScript(dir / kTorchScriptFile, MakeWeights(1));
  fs::remove(dir / "vocab.json");
  fs::remove(dir / "merges.txt");
  auto model = OpenDir(dir);
  EXPECT_EQ(model.status().code(), absl::StatusCode::kNotFound) << model.status();
}

}  // namespace
}  // namespace rag::lm

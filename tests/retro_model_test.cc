// The RETRO model directory (save, open, hashes, refusal of corrupt or
// unfinished ones).
#include "lm/retro_model.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <random>

#include <nlohmann/json.hpp>

#include "common/file_util.h"
#include "lm/internal/string_vocab.h"
#include "tests/lm_test_util.h"
#include "tests/status_matchers.h"
#include "tests/test_util.h"

namespace rag::lm {
namespace {

namespace fs = std::filesystem;

class RetroModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto docs = testing::MakeCorpus(3, 4, 4);
    base_ = testing::MakeTinyLanguageModelFor(docs, 9);
    RAG_ASSERT_OK(base_->Save(Path("base")));
    RAG_ASSERT_OK(WriteFileAtomic(Path("base") + "/split.json", "{\"validation_ids\": []}\n"));
    config_.decoder = base_->config();
    config_.chunk_size = 16;
    config_.neighbours = 2;
    config_.neighbour_tokens = 24;
    config_.encoder_layers = 1;
    config_.cca_layers = {0, 1};
  }
  std::string Path(const std::string& name) const { return (fs::path(dir_.path()) / name).string(); }

  testing::TempDir dir_;
  std::unique_ptr<LanguageModel> base_;
  RetroConfig config_;
};

TEST_F(RetroModelTest, SaveOpenRoundTripsWeightsAndBase) {
  torch::manual_seed(5);
  RetroLM module(config_);
  module->LoadDecoderFrom(base_->module());
  {
    torch::NoGradGuard no_grad;
    for (auto& p : module->RetrievalParameters()) p.normal_(0, 0.3);
  }
  auto base = LanguageModel::Open(Path("base"));
  RAG_ASSERT_OK(base.status());
  RetroModel model(config_, module, std::move(*base));
  RAG_ASSERT_OK(model.Save(Path("retro"), Path("base"), "{\"steps\": 3}"));
  EXPECT_TRUE(IsRetroModelDir(Path("retro")));
  EXPECT_FALSE(IsRetroModelDir(Path("base")));
  EXPECT_TRUE(fs::exists(Path("retro") + "/split.json"));

  auto opened = RetroModel::Open(Path("retro"));
  RAG_ASSERT_OK(opened.status());
  EXPECT_EQ((*opened)->content_hash(), model.content_hash());
  EXPECT_EQ((*opened)->base().content_hash(), base_->content_hash());
  EXPECT_EQ((*opened)->tokenizer().Hash(), base_->tokenizer().Hash());
  torch::NoGradGuard no_grad;
  module->eval();
  const int64_t t = 40, c = 3;
  auto tokens = torch::randint(0, base_->config().vocab_size, {1, t}, torch::kLong);
  auto nb = torch::randint(0, base_->config().vocab_size, {1, c, 2, 24}, torch::kLong);
  auto mask = torch::ones({1, c, 2}, torch::kBool);
  EXPECT_TRUE(torch::equal(module->forward(tokens, nb, mask), (*opened)->module()->forward(tokens, nb, mask)));
}

TEST_F(RetroModelTest, CorruptOrUnfinishedDirectoriesAreRefused) {
  RetroLM module(config_);
  auto base = LanguageModel::Open(Path("base"));
  RAG_ASSERT_OK(base.status());
  RetroModel model(config_, module, std::move(*base));
  RAG_ASSERT_OK(model.Save(Path("retro"), Path("base")));
  const std::string weights = Path("retro") + "/model.pt";
  auto bytes = ReadFile(weights);
  RAG_ASSERT_OK(bytes.status());
  std::string flipped = *bytes;
  flipped[flipped.size() / 2] ^= 0x01;
  RAG_ASSERT_OK(WriteFileAtomic(weights, flipped));
  EXPECT_EQ(RetroModel::Open(Path("retro")).status().code(), absl::StatusCode::kDataLoss);
  RAG_ASSERT_OK(WriteFileAtomic(weights, *bytes));
  RAG_ASSERT_OK(RetroModel::Open(Path("retro")).status());
  // A changed base LM changes what the RETRO model computes: refused.
  RAG_ASSERT_OK(WriteFileAtomic(Path("retro") + "/base/tokenizer.json", "{}"));
  EXPECT_FALSE(RetroModel::Open(Path("retro")).ok());
  fs::remove(Path("retro") + "/model_info.json");
  EXPECT_EQ(RetroModel::Open(Path("retro")).status().code(), absl::StatusCode::kNotFound);
}

// A RETRO-fit of a downloaded model keeps it under base/ as a Hugging Face
// directory (a GPT-2 checkpoint from tests/data/hf_reference with a
// byte-level vocab.json + merges.txt), which reopens with its own hash.
TEST(RetroModelHfBaseTest, BaseStaysAHuggingFaceDirectoryAndReopens) {
  testing::TempDir tmp;
  const fs::path hf = fs::path(tmp.path()) / "gpt2";
  const fs::path retro = fs::path(tmp.path()) / "retro";
  fs::create_directories(hf);
  const fs::path ref = fs::path(RAG_TEST_DATA_DIR) / "hf_reference" / "gpt2-lmhead-float32";
  for (const char* f : {"config.json", "model.safetensors", "generation_config.json"}) fs::copy_file(ref / f, hf / f);
  nlohmann::json vocab = nlohmann::json::object();
  const auto bytes = internal::BytesToUnicode();
  for (int b = 0; b < 256; ++b) vocab[bytes[b]] = b;
  vocab["<|endoftext|>"] = 256;
  RAG_ASSERT_OK(WriteFileAtomic((hf / "vocab.json").string(), vocab.dump()));
  RAG_ASSERT_OK(WriteFileAtomic((hf / "merges.txt").string(), "#version: 0.2\n"));
  auto base = LanguageModel::Open(hf.string());
  RAG_ASSERT_OK(base.status());
  ASSERT_EQ((*base)->identity().format, "huggingface");
  const std::string base_hash = (*base)->content_hash();

  RetroConfig config;
  config.decoder = (*base)->config();  // learned positions, gelu_new, context 64
  config.chunk_size = 16;
  config.neighbours = 2;
  config.neighbour_tokens = 24;
  config.encoder_layers = 1;
  config.cca_layers = {0, 1};
  torch::manual_seed(6);
  RetroLM module(config);
  module->LoadDecoderFrom((*base)->module());
  {
    torch::NoGradGuard no_grad;
    for (auto& p : module->RetrievalParameters()) p.normal_(0, 0.3);
  }
  RetroModel model(config, module, std::move(*base));
  RAG_ASSERT_OK(model.Save(retro.string(), hf.string()));
  for (const char* f : {"config.json", "model.safetensors", "vocab.json", "merges.txt", "generation_config.json"}) {
    EXPECT_TRUE(fs::exists(retro / kRetroBaseDir / f)) << f;
  }
  EXPECT_FALSE(fs::exists(retro / kRetroBaseDir / kWeightsFile));
  EXPECT_FALSE(fs::exists(retro / kSplitFile));  // the downloaded model has none; the training pipeline writes one

  auto opened = RetroModel::Open(retro.string());
  RAG_ASSERT_OK(opened.status());
  EXPECT_EQ((*opened)->base().identity().format, "huggingface");
  EXPECT_EQ((*opened)->base().content_hash(), base_hash);
  EXPECT_EQ((*opened)->content_hash(), model.content_hash());
  torch::NoGradGuard no_grad;
  module->eval();
  auto tokens = torch::randint(0, 257, {1, 40}, torch::kLong);
  auto nb = torch::randint(0, 257, {1, 3, 2, 24}, torch::kLong);
  auto mask = torch::ones({1, 3, 2}, torch::kBool);
  EXPECT_TRUE(torch::equal(module->forward(tokens, nb, mask), (*opened)->module()->forward(tokens, nb, mask)));
  EXPECT_TRUE(torch::equal((*opened)->module()->forward(tokens, torch::Tensor(), torch::Tensor()),
                           (*opened)->base().module()->forward(tokens)));

  // A changed weight file under base/ is refused.
  const std::string weights = (retro / kRetroBaseDir / "model.safetensors").string();
  auto stored = ReadFile(weights);
  RAG_ASSERT_OK(stored.status());
  std::string flipped = *stored;
  flipped[flipped.size() - 7] ^= 0x01;
  RAG_ASSERT_OK(WriteFileAtomic(weights, flipped));
  EXPECT_EQ(RetroModel::Open(retro.string()).status().code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace rag::lm

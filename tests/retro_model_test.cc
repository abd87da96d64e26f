// The RETRO model directory (save, open, hashes, refusal of corrupt or
// unfinished ones).
#include "lm/retro_model.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <random>

#include "common/file_util.h"
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

}  // namespace
}  // namespace rag::lm

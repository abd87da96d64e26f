#include "lm/language_model.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "tests/status_matchers.h"
#include "tests/lm_test_util.h"
#include "tests/test_util.h"

namespace rag::lm {
namespace {

namespace fs = std::filesystem;

std::unique_ptr<LanguageModel> MakeModel() { return testing::MakeTinyLanguageModel(); }

TEST(LanguageModelTest, SaveThenOpenGivesBitwiseEqualLogits) {
  testing::TempDir dir;
  auto model = MakeModel();
  RAG_ASSERT_OK(model->Save(dir.path(), R"({"note": "test"})"));
  EXPECT_EQ(model->content_hash().size(), 16u);
  auto loaded = LanguageModel::Open(dir.path());
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ((*loaded)->content_hash(), model->content_hash());
  EXPECT_EQ((*loaded)->tokenizer().Hash(), model->tokenizer().Hash());
  torch::NoGradGuard no_grad;
  model->module()->eval();
  auto tokens = torch::randint(0, model->config().vocab_size, {2, 30}, torch::kLong);
  EXPECT_TRUE(torch::equal(model->module()->forward(tokens), (*loaded)->module()->forward(tokens)));
}

TEST(LanguageModelTest, MissingDirectoryOrUnfinishedModelIsNotFound) {
  testing::TempDir dir;
  EXPECT_EQ(LanguageModel::Open(dir / "nope").status().code(), absl::StatusCode::kNotFound);
  auto model = MakeModel();
  RAG_ASSERT_OK(model->Save(dir.path()));
  fs::remove(dir / kInfoFile);  // as if training died before the end
  auto opened = LanguageModel::Open(dir.path());
  EXPECT_EQ(opened.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(opened.status().message().find("--resume"), std::string::npos);
}

TEST(LanguageModelTest, CorruptOrTruncatedWeightsAreDataLoss) {
  testing::TempDir dir;
  auto model = MakeModel();
  RAG_ASSERT_OK(model->Save(dir.path()));
  const std::string weights = dir / kWeightsFile;
  const auto size = fs::file_size(weights);
  {
    // Flip one byte in the middle.
    std::fstream f(weights, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(static_cast<std::streamoff>(size / 2));
    char c;
    f.read(&c, 1);
    c = static_cast<char>(c ^ 0x5a);
    f.seekp(static_cast<std::streamoff>(size / 2));
    f.write(&c, 1);
  }
  auto flipped = LanguageModel::Open(dir.path());
  EXPECT_EQ(flipped.status().code(), absl::StatusCode::kDataLoss) << flipped.status();
  fs::resize_file(weights, size / 3);
  EXPECT_EQ(LanguageModel::Open(dir.path()).status().code(), absl::StatusCode::kDataLoss);
}

TEST(LanguageModelTest, EditedRecordIsDataLossButAVersionOneRecordStillOpens) {
  testing::TempDir dir;
  auto model = MakeModel();
  RAG_ASSERT_OK(model->Save(dir.path(), R"({"note": "test"})"));
  const std::string info_path = dir / kInfoFile;
  auto info = nlohmann::json::parse(std::ifstream(info_path));
  ASSERT_EQ(info["format_version"], 2);
  ASSERT_TRUE(info.contains("self_checksum"));
  // A field no hash covers: only the record's own checksum sees the change.
  info["note"] = "tesT";
  std::ofstream(info_path, std::ios::trunc) << info.dump(2);
  auto edited = LanguageModel::Open(dir.path());
  EXPECT_EQ(edited.status().code(), absl::StatusCode::kDataLoss) << edited.status();
  EXPECT_NE(edited.status().message().find("self_checksum"), std::string::npos) << edited.status();
  // A record written before self checksums (format 1) opens: its hashes are checked.
  info.erase("self_checksum");
  info["format_version"] = 1;
  std::ofstream(info_path, std::ios::trunc) << info.dump(2);
  RAG_EXPECT_OK(LanguageModel::Open(dir.path()).status());
}

TEST(LanguageModelTest, WeightsThatMatchTheHashButNotTheFormatAreDataLoss) {
  // A garbage model.pt whose hash was recorded (e.g. a user replaced files
  // and re-hashed): loading must still fail cleanly, not crash.
  testing::TempDir dir;
  auto model = MakeModel();
  RAG_ASSERT_OK(model->Save(dir.path()));
  {
    std::ofstream f(dir / kWeightsFile, std::ios::binary | std::ios::trunc);
    f << "this is not a torch archive";
  }
  auto hash = ComputeContentHash(dir.path());
  ASSERT_TRUE(hash.ok());
  {
    std::ofstream f(dir / kInfoFile, std::ios::trunc);
    f << R"({"content_hash": ")" << *hash << R"("})";
  }
  auto opened = LanguageModel::Open(dir.path());
  EXPECT_EQ(opened.status().code(), absl::StatusCode::kDataLoss) << opened.status();
}

}  // namespace
}  // namespace rag::lm

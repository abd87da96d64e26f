// The safetensors reader on checkpoints that transformers wrote
// (tests/data/hf_reference) and on files damaged on purpose.
#include "lm/hf/safetensors.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "common/file_util.h"

namespace rag::lm::hf {
namespace {

namespace fs = std::filesystem;

const std::string kRef = std::string(RAG_TEST_DATA_DIR) + "/hf_reference/";

torch::Tensor AsFloat(const TensorView& v) {
  std::vector<int64_t> shape(v.shape.begin(), v.shape.end());
  auto type = v.dtype == Dtype::kF32 ? torch::kFloat32 : v.dtype == Dtype::kF16 ? torch::kFloat16 : torch::kBFloat16;
  return torch::from_blob(const_cast<uint8_t*>(v.data), shape, type).to(torch::kFloat32);
}

TEST(SafetensorsTest, ReadsGpt2AsTransformersSavedIt) {
  auto f = SafetensorsFile::Open(kRef + "gpt2-lmhead-float32/model.safetensors");
  ASSERT_TRUE(f.ok()) << f.status();
  // wte, wpe, ln_f (2) and 12 per block for 2 blocks; the tied lm_head is not stored.
  EXPECT_EQ((*f)->names().size(), 28u);
  EXPECT_FALSE((*f)->Has("lm_head.weight"));
  auto qkv = (*f)->Get("transformer.h.1.attn.c_attn.weight");
  ASSERT_TRUE(qkv.ok()) << qkv.status();
  EXPECT_EQ(qkv->dtype, Dtype::kF32);
  EXPECT_EQ(qkv->shape, (std::vector<int64_t>{64, 192}));  // Conv1D: [in, out]
  EXPECT_EQ(qkv->bytes, 64u * 192 * 4);
  EXPECT_EQ((*f)->metadata().at("format"), "pt");
}

TEST(SafetensorsTest, HalfAndBfloatFilesHoldTheSameTensors) {
  auto f32 = SafetensorsFile::Open(kRef + "gpt2-lmhead-float32/model.safetensors");
  auto f16 = SafetensorsFile::Open(kRef + "gpt2-lmhead-float16/model.safetensors");
  auto bf16 = SafetensorsFile::Open(kRef + "gpt2-lmhead-bfloat16/model.safetensors");
  // Saved last, from the model after its bf16 cast: its fp32 values are the bf16 file's exactly.
  auto base = SafetensorsFile::Open(kRef + "gpt2-base-float32/model.safetensors");
  ASSERT_TRUE(f32.ok() && f16.ok() && bf16.ok() && base.ok());
  ASSERT_EQ((*f16)->names(), (*f32)->names());
  for (const auto& name : (*f32)->names()) {
    auto a = *(*f32)->Get(name);
    auto h = *(*f16)->Get(name);
    auto b = *(*bf16)->Get(name);
    EXPECT_EQ(h.dtype, Dtype::kF16) << name;
    EXPECT_EQ(b.dtype, Dtype::kBF16) << name;
    EXPECT_EQ(h.shape, a.shape) << name;
    EXPECT_TRUE(torch::allclose(AsFloat(h), AsFloat(a), 1e-3, 1e-4)) << name;
    const std::string bare = name.substr(std::strlen("transformer."));
    auto exact = (*base)->Get(bare);
    ASSERT_TRUE(exact.ok()) << exact.status();
    EXPECT_TRUE(torch::equal(AsFloat(b), AsFloat(*exact))) << name;
  }
}

TEST(SafetensorsTest, ShardedWeightsReadAsOneFile) {
  auto sharded = SafetensorsWeights::Open(kRef + "neox-sharded-float32");
  auto single = SafetensorsWeights::Open(kRef + "neox-parallel-float32");  // same seed, same weights
  ASSERT_TRUE(sharded.ok()) << sharded.status();
  ASSERT_TRUE(single.ok()) << single.status();
  EXPECT_EQ((*sharded)->files().size(), 8u);
  EXPECT_EQ((*single)->files().size(), 1u);
  ASSERT_EQ((*sharded)->names(), (*single)->names());
  EXPECT_TRUE((*sharded)->Has("embed_out.weight"));
  for (const auto& name : (*single)->names()) {
    auto a = *(*sharded)->Get(name);
    auto b = *(*single)->Get(name);
    ASSERT_EQ(a.bytes, b.bytes) << name;
    EXPECT_EQ(std::memcmp(a.data, b.data, a.bytes), 0) << name;
  }
  auto missing = (*sharded)->Get("gpt_neox.layers.7.mlp.dense_h_to_4h.weight");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("gpt_neox.layers.7"), std::string::npos);
}

// ------------------------------------------------------------ damaged files

class DamagedSafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("safetensors_test_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
    auto bytes = ReadFile(kRef + "gpt2-lmhead-float32/model.safetensors");
    ASSERT_TRUE(bytes.ok());
    good_ = *bytes;
    std::memcpy(&header_bytes_, good_.data(), 8);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string Write(const std::string& name, const std::string& bytes) {
    const std::string p = (dir_ / name).string();
    std::ofstream(p, std::ios::binary) << bytes;
    return p;
  }
  std::string Header() const { return good_.substr(8, header_bytes_); }
  std::string WithHeader(const std::string& header) const {
    std::string out(8, '\0');
    const uint64_t n = header.size();
    std::memcpy(out.data(), &n, 8);
    return out + header + good_.substr(8 + header_bytes_);
  }
  // Opens `bytes` as a file and expects `code` with `needle` in the message.
  void ExpectError(const std::string& bytes, absl::StatusCode code, const std::string& needle) {
    const std::string p = Write("bad.safetensors", bytes);
    auto f = SafetensorsFile::Open(p);
    ASSERT_FALSE(f.ok()) << needle;
    EXPECT_EQ(f.status().code(), code) << f.status();
    EXPECT_NE(f.status().message().find(p), std::string::npos) << f.status();
    EXPECT_NE(f.status().message().find(needle), std::string::npos) << f.status();
  }

  fs::path dir_;
  std::string good_;
  uint64_t header_bytes_ = 0;
};

TEST_F(DamagedSafetensorsTest, TruncatedAnywhereIsDataLoss) {
  int tried = 0;
  for (size_t keep : {size_t{0}, size_t{5}, size_t{8}, size_t{8 + header_bytes_ / 2}, size_t{8 + header_bytes_ + 100},
                      good_.size() - 1}) {
    const std::string p = Write("cut.safetensors", good_.substr(0, keep));
    auto f = SafetensorsFile::Open(p);
    ASSERT_FALSE(f.ok()) << "kept " << keep << " bytes";
    EXPECT_EQ(f.status().code(), absl::StatusCode::kDataLoss) << f.status();
    EXPECT_NE(f.status().message().find(p), std::string::npos) << f.status();
    ++tried;
  }
  EXPECT_EQ(tried, 6);
}

TEST_F(DamagedSafetensorsTest, BadHeadersNameTheFileAndTensor) {
  std::string huge = good_;
  const uint64_t n = uint64_t{1} << 40;
  std::memcpy(huge.data(), &n, 8);
  ExpectError(huge, absl::StatusCode::kDataLoss, "runs past the end");

  std::string not_json = Header();
  not_json[0] = '[';
  not_json[1] = '{';
  ExpectError(WithHeader(not_json), absl::StatusCode::kDataLoss, "not JSON");

  std::string h = Header();
  const std::string f32 = "\"dtype\":\"F32\"";
  const size_t at = h.find(f32);
  ASSERT_NE(at, std::string::npos) << h.substr(0, 200);
  std::string fp8 = h;
  fp8.replace(at, f32.size(), "\"dtype\":\"F8_E4M3\"");
  // Offsets count from the header's end, so a header of another length still fits the data.
  ExpectError(WithHeader(fp8), absl::StatusCode::kInvalidArgument, "F8_E4M3");

  std::string f16 = h;
  f16.replace(at, f32.size(), "\"dtype\":\"F16\"");
  ExpectError(WithHeader(f16), absl::StatusCode::kDataLoss, "shape and dtype need");
}

TEST_F(DamagedSafetensorsTest, MissingFilesAndShardsAreClear) {
  auto none = SafetensorsFile::Open((dir_ / "absent.safetensors").string());
  EXPECT_EQ(none.status().code(), absl::StatusCode::kNotFound);

  auto empty_dir = SafetensorsWeights::Open(dir_.string());
  EXPECT_EQ(empty_dir.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(empty_dir.status().message().find("model.safetensors.index.json"), std::string::npos);

  Write("model-00001-of-00001.safetensors", good_);
  Write("model.safetensors.index.json",
        R"({"weight_map": {"transformer.wte.weight": "model-00001-of-00001.safetensors", "extra.weight": "model-00001-of-00001.safetensors"}})");
  auto lacking = SafetensorsWeights::Open(dir_.string());
  EXPECT_EQ(lacking.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(lacking.status().message().find("extra.weight"), std::string::npos) << lacking.status();

  Write("model.safetensors.index.json", R"({"weight_map": {"transformer.wte.weight": "model-00002-of-00002.safetensors"}})");
  auto absent_shard = SafetensorsWeights::Open(dir_.string());
  EXPECT_EQ(absent_shard.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(absent_shard.status().message().find("model-00002-of-00002.safetensors"), std::string::npos);

  Write("model.safetensors.index.json", R"({"weight_map": {"transformer.wte.weight": "../elsewhere.safetensors"}})");
  EXPECT_EQ(SafetensorsWeights::Open(dir_.string()).status().code(), absl::StatusCode::kDataLoss);

  Write("model.safetensors.index.json", "{not json");
  EXPECT_EQ(SafetensorsWeights::Open(dir_.string()).status().code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace rag::lm::hf

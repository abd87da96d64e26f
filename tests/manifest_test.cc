// manifest.json: round trip, self-checksum, version and type checks.
#include "retriever/manifest.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "tests/status_matchers.h"

namespace rag::retriever {
namespace {

Manifest Sample() {
  Manifest m;
  m.documents = 3;
  m.tokens = 300;
  m.chunk_tokens = 64;
  m.continuation_tokens = 64;
  m.chunks = 5;
  m.vectors = 5;
  m.dim = 16;
  m.model_hash = "0123456789abcdef";
  m.tokenizer_hash = "fedcba9876543210";
  m.embedder_hash = "0123456789abcdef";
  m.index_factory = "Flat";
  m.corpus_path = "/data/corpus.jsonl";
  m.checksums["chunks.faiss"] = "00ff";
  return m;
}

TEST(ManifestTest, RoundTripsAndCarriesASelfChecksum) {
  const std::string json = Sample().ToJson();
  auto back = Manifest::FromJson(json);
  RAG_ASSERT_OK(back.status());
  EXPECT_EQ(back->ToJson(), json);
  EXPECT_NE(json.find("\"self_checksum\""), std::string::npos);
  // A changed byte in a field nothing else checks is caught.
  std::string damaged = json;
  damaged[damaged.find("/data/") + 1] = 'D';
  EXPECT_EQ(Manifest::FromJson(damaged).status().code(), absl::StatusCode::kDataLoss);
  // A manifest written before self-checksums (none) still loads.
  auto j = nlohmann::json::parse(json);
  j.erase("self_checksum");
  j["corpus"]["path"] = "/elsewhere";
  RAG_EXPECT_OK(Manifest::FromJson(j.dump()).status());
}

TEST(ManifestTest, CarriesTheShardAndTheTrainedIndexHash) {
  Manifest m = Sample();
  m.shard_id = 2;
  m.shard_count = 4;
  m.trained_index_hash = "00112233445566ff";
  auto back = Manifest::FromJson(m.ToJson());
  RAG_ASSERT_OK(back.status());
  EXPECT_EQ(back->shard_id, 2);
  EXPECT_EQ(back->shard_count, 4);
  EXPECT_EQ(back->trained_index_hash, "00112233445566ff");
  // A whole index (0 of 1, its own training) reads back as one.
  auto whole = Manifest::FromJson(Sample().ToJson());
  RAG_ASSERT_OK(whole.status());
  EXPECT_EQ(whole->shard_count, 1);
  EXPECT_EQ(whole->trained_index_hash, "");
  // A shard outside its count is damage, not a shard.
  auto j = nlohmann::json::parse(m.ToJson());
  j.erase("self_checksum");
  j["shard_id"] = 4;
  EXPECT_EQ(Manifest::FromJson(j.dump()).status().code(), absl::StatusCode::kDataLoss);
}

// Found by fuzz_manifest: a float where a count belongs was converted to an
// integer unchecked (undefined behaviour under UBSan).
TEST(ManifestTest, NonIntegerCountsAreDataLossNotUndefinedBehaviour) {
  auto j = nlohmann::json::parse(Sample().ToJson());
  j.erase("self_checksum");
  for (const char* where : {"documents", "tokens", "bytes"}) {
    auto bad = j;
    bad["corpus"][where] = 1.11111e33;
    const auto s = Manifest::FromJson(bad.dump()).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << where << ": " << s;
    EXPECT_NE(s.message().find("must be an integer"), std::string::npos) << s;
  }
  auto bad = j;
  bad["format_version"] = 1.5;
  EXPECT_EQ(Manifest::FromJson(bad.dump()).status().code(), absl::StatusCode::kDataLoss);
  bad = j;
  bad["format_version"] = 99;
  EXPECT_EQ(Manifest::FromJson(bad.dump()).status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace rag::retriever

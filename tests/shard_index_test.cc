// FAISS-level sharding (issue 22), no LM: vectors split over N shards by
// ShardOfDocument, each added to a copy of ONE trained index, give the
// single index's answers, both searched shard by shard and merged by
// (distance, global id), and merged into one index by VectorIndex::MergeFrom.
// A shard trained on its own is refused. Clustered data with exact
// duplicates, so ties at the k-th distance happen and must be handled.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "retriever/shard.h"
#include "retriever/vector_index.h"
#include "tests/status_matchers.h"

namespace rag::retriever {
namespace {

constexpr int kDim = 32;
constexpr int64_t kVectors = 4000;
constexpr int64_t kQueries = 40;

// n vectors around 40 cluster centres (fixed seed); every 7th vector is an
// exact copy of an earlier one, so distances tie exactly.
std::vector<float> MakeClustered(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> centres(40 * kDim);
  for (float& c : centres) c = 4.0f * normal(rng);
  std::vector<float> x(static_cast<size_t>(n) * kDim);
  for (int64_t i = 0; i < n; ++i) {
    float* row = x.data() + i * kDim;
    if (i > 10 && i % 7 == 0) {
      const int64_t src = static_cast<int64_t>(rng() % static_cast<uint64_t>(i));
      std::copy(x.data() + src * kDim, x.data() + (src + 1) * kDim, row);
      continue;
    }
    const float* c = centres.data() + (rng() % 40) * kDim;
    for (int j = 0; j < kDim; ++j) row[j] = c[j] + normal(rng);
  }
  return x;
}

std::string DocId(int64_t i) { return "doc-" + std::to_string(i); }

// One result: distance, then the id in the single index's numbering.
using Hit = std::pair<float, int64_t>;

// The canonical top-k of one query against `index`: ordered by (distance,
// id) after `to_global` maps the index's ids, and fetched deep enough that
// the group tied at the k-th distance is complete (else which duplicates
// make the cut would be FAISS's choice).
std::vector<Hit> CanonicalTopK(const VectorIndex& index, const float* query, int k, int nprobe,
                               const std::vector<int64_t>& to_global) {
  for (int fetch = k;; fetch = std::min(2 * fetch, VectorIndex::kMaxK)) {
    std::vector<float> d;
    std::vector<int64_t> ids;
    EXPECT_TRUE(index.Search(query, 1, fetch, nprobe, &d, &ids).ok());
    std::vector<Hit> hits;
    for (int j = 0; j < fetch; ++j) {
      if (ids[j] >= 0) hits.emplace_back(d[j], to_global[static_cast<size_t>(ids[j])]);
    }
    std::sort(hits.begin(), hits.end());
    const bool complete = static_cast<int>(hits.size()) < fetch || fetch == VectorIndex::kMaxK ||
                          (static_cast<int>(hits.size()) > k && hits[k].first > hits[k - 1].first);
    if (complete) {
      if (static_cast<int>(hits.size()) > k) hits.resize(static_cast<size_t>(k));
      return hits;
    }
  }
}

// Merges per-shard canonical lists by (distance, global id), keeps k.
std::vector<Hit> MergeHits(std::vector<std::vector<Hit>> lists, int k) {
  std::vector<Hit> all;
  for (auto& l : lists) all.insert(all.end(), l.begin(), l.end());
  std::sort(all.begin(), all.end());
  if (static_cast<int>(all.size()) > k) all.resize(static_cast<size_t>(k));
  return all;
}

class ShardIndexTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("rag_shard_index_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) + "_" +
            std::to_string(reinterpret_cast<uintptr_t>(this)));
    std::filesystem::create_directories(dir_);
    x_ = MakeClustered(kVectors, 42);
    queries_ = MakeClustered(kQueries, 43);
    // Some queries are exactly stored vectors: distance 0, tied duplicates.
    for (int64_t q = 0; q < kQueries; q += 4) {
      std::copy(x_.begin() + q * 11 * kDim, x_.begin() + (q * 11 + 1) * kDim, queries_.begin() + q * kDim);
    }
    auto trained = VectorIndex::Create(kDim, GetParam());
    ASSERT_TRUE(trained.ok()) << trained.status();
    RAG_ASSERT_OK((*trained)->Train(x_.data(), kVectors, 1234));
    trained_path_ = (dir_ / "trained.faiss").string();
    RAG_ASSERT_OK((*trained)->Save(trained_path_));
    single_ = CopyOfTrained();
    RAG_ASSERT_OK(single_->Add(x_.data(), kVectors));
    identity_.resize(kVectors);
    for (int64_t i = 0; i < kVectors; ++i) identity_[static_cast<size_t>(i)] = i;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::unique_ptr<VectorIndex> CopyOfTrained() {
    auto index = VectorIndex::Open(trained_path_);
    EXPECT_TRUE(index.ok()) << index.status();
    return index.ok() ? std::move(index).value() : nullptr;
  }

  // Shard s of n: a copy of the trained index holding the vectors whose
  // document hashes to s, in corpus order; (*global)[local id] = global id.
  std::unique_ptr<VectorIndex> BuildShard(int s, int n, std::vector<int64_t>* global) {
    global->clear();
    std::vector<float> mine;
    for (int64_t i = 0; i < kVectors; ++i) {
      if (ShardOfDocument(DocId(i), n) != s) continue;
      global->push_back(i);
      mine.insert(mine.end(), x_.begin() + i * kDim, x_.begin() + (i + 1) * kDim);
    }
    auto index = CopyOfTrained();
    EXPECT_TRUE(index->Add(mine.data(), static_cast<int64_t>(global->size())).ok());
    return index;
  }

  std::filesystem::path dir_;
  std::vector<float> x_, queries_;
  std::string trained_path_;
  std::unique_ptr<VectorIndex> single_;
  std::vector<int64_t> identity_;
};

TEST_P(ShardIndexTest, ShardsSearchedAndMergedEqualTheSingleIndex) {
  for (int n : {1, 2, 4}) {
    std::vector<std::unique_ptr<VectorIndex>> shards(n);
    std::vector<std::vector<int64_t>> global(n);
    int64_t total = 0;
    for (int s = 0; s < n; ++s) {
      shards[s] = BuildShard(s, n, &global[s]);
      total += shards[s]->size();
      if (n > 1) {
        EXPECT_GT(shards[s]->size(), kVectors / n / 2) << "shard " << s << " of " << n;
      }
    }
    ASSERT_EQ(total, kVectors);
    int tied_at_cut = 0;
    for (int k : {1, 5, 17, 64}) {
      for (int nprobe : {1, 3, 16}) {
        for (int64_t q = 0; q < kQueries; ++q) {
          const float* query = queries_.data() + q * kDim;
          const std::vector<Hit> want = CanonicalTopK(*single_, query, k, nprobe, identity_);
          std::vector<std::vector<Hit>> per_shard;
          for (int s = 0; s < n; ++s) per_shard.push_back(CanonicalTopK(*shards[s], query, k, nprobe, global[s]));
          ASSERT_EQ(MergeHits(per_shard, k), want) << "N=" << n << " k=" << k << " nprobe=" << nprobe << " q=" << q;
          if (k > 1 && static_cast<int>(want.size()) == k && want[k - 1].first == want[k - 2].first) ++tied_at_cut;
        }
      }
    }
    // The data must exercise the tie rule, or the test proves less.
    EXPECT_GT(tied_at_cut, 0);
  }
}

TEST_P(ShardIndexTest, MergeFromReproducesTheSingleIndex) {
  for (int n : {2, 4}) {
    std::vector<std::vector<int64_t>> global(n);
    std::vector<std::unique_ptr<VectorIndex>> shards(n);
    for (int s = 0; s < n; ++s) shards[s] = BuildShard(s, n, &global[s]);
    // The merged index numbers shard 0's vectors first, then shard 1's...
    std::vector<int64_t> merged_to_global;
    std::vector<float> in_merged_order;
    for (int s = 0; s < n; ++s) {
      for (int64_t g : global[s]) {
        merged_to_global.push_back(g);
        in_merged_order.insert(in_merged_order.end(), x_.begin() + g * kDim, x_.begin() + (g + 1) * kDim);
      }
    }
    std::unique_ptr<VectorIndex> merged = std::move(shards[0]);
    for (int s = 1; s < n; ++s) {
      RAG_ASSERT_OK(merged->MergeFrom(*shards[s]));
      EXPECT_EQ(shards[s]->size(), 0);
    }
    ASSERT_EQ(merged->size(), kVectors);
    // Byte for byte the index one build adding the vectors in that order makes.
    auto added = CopyOfTrained();
    RAG_ASSERT_OK(added->Add(in_merged_order.data(), kVectors));
    for (int nprobe : {1, 4}) {
      std::vector<float> dm, da;
      std::vector<int64_t> im, ia;
      RAG_ASSERT_OK(merged->Search(queries_.data(), kQueries, 20, nprobe, &dm, &im));
      RAG_ASSERT_OK(added->Search(queries_.data(), kQueries, 20, nprobe, &da, &ia));
      EXPECT_EQ(im, ia) << "nprobe " << nprobe;
      EXPECT_EQ(dm, da) << "nprobe " << nprobe;
      // And the single index's canonical answers.
      for (int64_t q = 0; q < kQueries; ++q) {
        const float* query = queries_.data() + q * kDim;
        EXPECT_EQ(CanonicalTopK(*merged, query, 20, nprobe, merged_to_global),
                  CanonicalTopK(*single_, query, 20, nprobe, identity_))
            << "N=" << n << " nprobe=" << nprobe << " q=" << q;
      }
    }
    auto trained_hash = CopyOfTrained()->TrainedStateHash();
    auto merged_hash = merged->TrainedStateHash();
    ASSERT_TRUE(trained_hash.ok() && merged_hash.ok());
    EXPECT_EQ(*merged_hash, *trained_hash);
  }
}

TEST_P(ShardIndexTest, SeparatelyTrainedShardIsRefused) {
  std::vector<int64_t> global0, global1;
  auto shard0 = BuildShard(0, 2, &global0);
  auto own = VectorIndex::Create(kDim, GetParam());
  ASSERT_TRUE(own.ok());
  // Another sample (3000 rows drawn with seed 99) trains other centroids.
  RAG_ASSERT_OK((*own)->Train(x_.data(), kVectors, 99, 3000));
  RAG_ASSERT_OK((*own)->Add(x_.data(), 100));
  // Saved and reopened, as `rag merge` reads every shard.
  const std::string own_path = (dir_ / "own.faiss").string();
  RAG_ASSERT_OK((*own)->Save(own_path));
  own = VectorIndex::Open(own_path);
  ASSERT_TRUE(own.ok()) << own.status();
  const int64_t before = shard0->size();
  const absl::Status s = shard0->MergeFrom(**own);
  if ((*own)->TrainedStateHash().value() == CopyOfTrained()->TrainedStateHash().value()) {
    // Flat: nothing to train, so "trained separately" is the same index.
    EXPECT_EQ(GetParam(), "Flat");
    RAG_EXPECT_OK(s);
    return;
  }
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(std::string(s.message()).find("trained separately"), std::string::npos) << s;
  EXPECT_EQ(shard0->size(), before);
  EXPECT_EQ((*own)->size(), 100);
}

TEST_P(ShardIndexTest, MergeRefusesAnotherFactory) {
  std::vector<int64_t> global;
  auto shard0 = BuildShard(0, 2, &global);
  auto other = VectorIndex::Create(kDim, GetParam() == "Flat" ? "IVF4,Flat" : "Flat");
  ASSERT_TRUE(other.ok());
  RAG_ASSERT_OK((*other)->Train(x_.data(), kVectors));
  RAG_ASSERT_OK((*other)->Add(x_.data(), 10));
  EXPECT_EQ(shard0->MergeFrom(**other).code(), absl::StatusCode::kFailedPrecondition);
}

INSTANTIATE_TEST_SUITE_P(Factories, ShardIndexTest, ::testing::Values("IVF16,PQ8", "IVF16,Flat", "Flat"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           std::string name;
                           for (char c : info.param) name += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
                           return name;
                         });

}  // namespace
}  // namespace rag::retriever

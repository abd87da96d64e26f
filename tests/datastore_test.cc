// Tests for retriever::Datastore: fp16 conversion, search against an fp32
// brute force, IVF-PQ with exact re-ranking, document exclusion, canonical
// ties at the k-th place, factories. Writing, resuming, damaged files and
// added keys: datastore_writer_test.cc.
#include "retriever/datastore.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/file_util.h"
#include "common/progress.h"
#include "retriever/vector_index.h"
#include "tests/status_matchers.h"
#include "tests/test_util.h"

#include "tests/datastore_test_util.h"

namespace rag::retriever {
namespace {

namespace fs = std::filesystem;
using namespace datastore_test;  // NOLINT: the helpers of both datastore test files

// --- fp16 ---

float Bits(uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof(f));
  return f;
}

TEST(Fp16Test, EveryHalfRoundTrips) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = HalfToFloat(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(HalfToFloat(FloatToHalf(f)))) << h;
    } else {
      ASSERT_EQ(FloatToHalf(f), h) << "half " << h << " = " << f;
    }
  }
}

TEST(Fp16Test, SpecialValues) {
  EXPECT_EQ(FloatToHalf(0.0f), 0x0000);
  EXPECT_EQ(FloatToHalf(-0.0f), 0x8000);
  EXPECT_EQ(FloatToHalf(1.0f), 0x3c00);
  EXPECT_EQ(FloatToHalf(-2.0f), 0xc000);
  EXPECT_EQ(FloatToHalf(std::numeric_limits<float>::infinity()), 0x7c00);
  EXPECT_EQ(FloatToHalf(-std::numeric_limits<float>::infinity()), 0xfc00);
  const uint16_t nan = FloatToHalf(std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(nan & 0x7c00, 0x7c00);
  EXPECT_NE(nan & 0x03ff, 0);
  EXPECT_TRUE(std::isnan(HalfToFloat(nan)));
  EXPECT_TRUE(std::isnan(HalfToFloat(FloatToHalf(Bits(0x7f800001u)))));  // signalling NaN stays NaN
  // Largest finite half, and where rounding goes to inf (65520 is the tie,
  // and 65504's mantissa is odd).
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7bff);
  EXPECT_EQ(FloatToHalf(65519.996f), 0x7bff);
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7c00);
  EXPECT_EQ(FloatToHalf(1e10f), 0x7c00);
  EXPECT_EQ(FloatToHalf(-1e10f), 0xfc00);
  EXPECT_EQ(HalfToFloat(0x7bff), 65504.0f);
  EXPECT_TRUE(std::isinf(HalfToFloat(0x7c00)));
  // Ties to even in the normal range: 1 + 2^-11 is halfway to 1 + 2^-10.
  EXPECT_EQ(FloatToHalf(1.0f + std::ldexp(1.0f, -11)), 0x3c00);
  EXPECT_EQ(FloatToHalf(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);
  EXPECT_EQ(FloatToHalf(std::nextafter(1.0f + std::ldexp(1.0f, -11), 2.0f)), 0x3c01);
  // Subnormals: the smallest is 2^-24; 2^-25 is a tie that goes to 0.
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -14)), 0x0400);  // smallest normal
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(FloatToHalf(-std::ldexp(1.0f, -24)), 0x8001);
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -25)), 0x0000);
  EXPECT_EQ(FloatToHalf(std::nextafter(std::ldexp(1.0f, -25), 1.0f)), 0x0001);
  EXPECT_EQ(FloatToHalf(3 * std::ldexp(1.0f, -25)), 0x0002);  // 1.5 ulps: tie to even
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -30)), 0x0000);
  EXPECT_EQ(FloatToHalf(1e-30f), 0x0000);
  EXPECT_EQ(FloatToHalf(std::numeric_limits<float>::denorm_min()), 0x0000);
  EXPECT_EQ(FloatToHalf(1023.5f * std::ldexp(1.0f, -24)), 0x0400);  // largest subnormal + half: rounds up
  EXPECT_EQ(HalfToFloat(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(HalfToFloat(0x03ff), 1023 * std::ldexp(1.0f, -24));
  EXPECT_EQ(HalfToFloat(0x8000), 0.0f);
  EXPECT_TRUE(std::signbit(HalfToFloat(0x8000)));
}

// Every float of a seeded sample over the whole fp16 range converts to its
// nearest half (ties aside), within the format's error bound.
TEST(Fp16Test, NearestHalfWithinErrorBound) {
  std::mt19937_64 rng(42);
  std::uniform_real_distribution<float> exponent(-27.0f, 16.0f);
  std::uniform_real_distribution<float> mantissa(1.0f, 2.0f);
  for (int i = 0; i < 200000; ++i) {
    float x = std::ldexp(mantissa(rng), static_cast<int>(std::floor(exponent(rng))));
    if (x >= 65504.0f) continue;
    if (i % 2) x = -x;
    const uint16_t h = FloatToHalf(x);
    const float y = HalfToFloat(h);
    const double err = std::fabs(static_cast<double>(y) - x);
    if (std::fabs(x) >= std::ldexp(1.0f, -14)) {
      ASSERT_LE(err, std::ldexp(1.0, -11) * std::fabs(x)) << x;  // half an ulp, relative
    } else {
      ASSERT_LE(err, std::ldexp(1.0, -25)) << x;  // half the subnormal spacing
    }
    // No neighbouring half is closer.
    for (int delta : {-1, 1}) {
      const uint16_t other = static_cast<uint16_t>(h + delta);
      const float z = HalfToFloat(other);
      if (std::isnan(z) || std::signbit(z) != std::signbit(y)) continue;
      ASSERT_LE(err, std::fabs(static_cast<double>(z) - x)) << x;
    }
#if defined(__FLT16_MAX__)
    const _Float16 ref = static_cast<_Float16>(x);
    uint16_t ref_bits;
    std::memcpy(&ref_bits, &ref, sizeof(ref_bits));
    ASSERT_EQ(h, ref_bits) << x;
#endif
  }
}


// --- Flat datastore ---

class FlatDatastoreTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new testing::TempDir();
    rows_ = new Rows(MakeRows(GaussianKeys(3000, kDim, /*seed=*/1), kDim));
    // Uneven batches, one of a single row.
    auto writer = DatastoreWriter::Create(dir_->path(), kDim, false);
    ASSERT_TRUE(writer.ok()) << writer.status();
    for (auto [b, e] : std::vector<std::pair<int64_t, int64_t>>{{0, 1}, {1, 1000}, {1000, 2000}, {2000, 3000}}) {
      RAG_ASSERT_OK(AppendRange(writer->get(), *rows_, b, e));
    }
    EXPECT_EQ((*writer)->rows(), 3000);
    auto info = (*writer)->Finish(Factory("Flat"));
    ASSERT_TRUE(info.ok()) << info.status();
    info_ = new DatastoreInfo(*info);
  }
  static void TearDownTestSuite() {
    delete info_;
    delete rows_;
    delete dir_;
  }
  void SetUp() override {
    ASSERT_NE(info_, nullptr);
    auto ds = Datastore::Open(dir_->path());
    ASSERT_TRUE(ds.ok()) << ds.status();
    ds_ = std::move(ds).value();
  }

  static testing::TempDir* dir_;
  static Rows* rows_;
  static DatastoreInfo* info_;
  std::unique_ptr<Datastore> ds_;
};

testing::TempDir* FlatDatastoreTest::dir_ = nullptr;
Rows* FlatDatastoreTest::rows_ = nullptr;
DatastoreInfo* FlatDatastoreTest::info_ = nullptr;

TEST_F(FlatDatastoreTest, InfoAndAccessors) {
  EXPECT_EQ(info_->rows, 3000);
  EXPECT_EQ(info_->dim, kDim);
  EXPECT_EQ(info_->index_factory, "Flat");
  EXPECT_EQ(info_->train_rows, 0);
  for (const char* name : {kDatastoreKeysFile, kDatastoreValuesFile, kDatastoreDocsFile, kDatastoreIndexFile}) {
    auto it = info_->checksums.find(name);
    ASSERT_NE(it, info_->checksums.end()) << name;
    auto hex = HashFileHex(dir_->path() + "/" + name);
    ASSERT_TRUE(hex.ok());
    EXPECT_EQ(it->second, *hex) << name;
  }
  EXPECT_EQ(fs::file_size(*dir_ / kDatastoreKeysFile), 64u + 3000u * kDim * 2);
  EXPECT_EQ(fs::file_size(*dir_ / kDatastoreValuesFile), 64u + 3000u * 4);
  EXPECT_EQ(ds_->size(), 3000);
  EXPECT_EQ(ds_->dim(), kDim);
  EXPECT_EQ(ds_->factory(), "Flat");
  // fp16 key 64 + value 4 + doc 4 + Flat code 128 bytes, plus headers.
  EXPECT_GT(ds_->bytes_per_key(), 2.0 * kDim + 8 + 4.0 * kDim);
  EXPECT_LT(ds_->bytes_per_key(), 2.0 * kDim + 8 + 4.0 * kDim + 1.0);
  std::vector<float> key(kDim);
  for (int64_t id : {0, 1, 999, 1000, 2999}) {
    ds_->Key(id, key.data());
    for (int j = 0; j < kDim; ++j) {
      const float x = rows_->keys[id * kDim + j];
      EXPECT_NEAR(key[j], x, std::ldexp(1.0f, -11) * std::fabs(x) + 1e-7f);
    }
    EXPECT_EQ(ds_->value(id), rows_->values[id]);
    EXPECT_EQ(ds_->doc(id), rows_->docs[id]);
  }
}

TEST_F(FlatDatastoreTest, StoredKeyIsItsOwnNearestNeighbour) {
  const int64_t nq = 200;
  std::vector<float> queries(rows_->keys.begin(), rows_->keys.begin() + nq * kDim);
  for (bool exact : {false, true}) {
    std::vector<std::vector<DatastoreNeighbour>> res;
    RAG_ASSERT_OK(ds_->Search(queries.data(), nq, 5, 0, {}, exact, &res));
    ASSERT_EQ(res.size(), static_cast<size_t>(nq));
    for (int64_t q = 0; q < nq; ++q) {
      ASSERT_EQ(res[q].size(), 5u);
      EXPECT_EQ(res[q][0].key_id, q) << "exact " << exact;
      EXPECT_EQ(res[q][0].value, rows_->values[q]);
      EXPECT_EQ(res[q][0].doc, rows_->docs[q]);
      EXPECT_NEAR(res[q][0].distance, 0.0f, 1e-3f);  // typical distances are ~64
      EXPECT_GT(res[q][1].distance, 1.0f);
      for (int j = 1; j < 5; ++j) EXPECT_LE(res[q][j - 1].distance, res[q][j].distance);
    }
  }
}

TEST_F(FlatDatastoreTest, Fp16KeysReproduceFp32Neighbours) {
  const int64_t nq = 100;
  const int k = 10;
  const std::vector<float> queries = GaussianKeys(nq, kDim, /*seed=*/99);
  const std::vector<int64_t> truth = BruteForce(*rows_, queries, k);
  for (bool exact : {false, true}) {
    std::vector<std::vector<DatastoreNeighbour>> res;
    RAG_ASSERT_OK(ds_->Search(queries.data(), nq, k, 0, {}, exact, &res));
    const double recall = RecallAtK(Ids(res, k), truth, nq, k);
    EXPECT_GE(recall, 0.95) << "exact " << exact;
    // Exact distances are those of the fp16 keys.
    std::vector<float> key(kDim);
    for (int64_t q = 0; q < nq; ++q) {
      for (const DatastoreNeighbour& nb : res[q]) {
        ds_->Key(nb.key_id, key.data());
        const double want = SquaredL2(queries.data() + q * kDim, key.data(), kDim);
        EXPECT_NEAR(nb.distance, want, 1e-4 * want);
      }
    }
  }
}

TEST_F(FlatDatastoreTest, KLargerThanDatastoreAndEmptyBatch) {
  std::vector<std::vector<DatastoreNeighbour>> res;
  RAG_ASSERT_OK(ds_->Search(rows_->keys.data(), 0, 5, 0, {}, false, &res));
  EXPECT_TRUE(res.empty());
  RAG_ASSERT_OK(ds_->Search(rows_->keys.data(), 1, VectorIndex::kMaxK, 0, {}, true, &res));
  ASSERT_EQ(res.size(), 1u);
  EXPECT_EQ(res[0].size(), static_cast<size_t>(VectorIndex::kMaxK < 3000 ? VectorIndex::kMaxK : 3000));
}

TEST_F(FlatDatastoreTest, InvalidSearchArguments) {
  std::vector<std::vector<DatastoreNeighbour>> res;
  EXPECT_EQ(ds_->Search(rows_->keys.data(), 1, 0, 0, {}, false, &res).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ds_->Search(rows_->keys.data(), 1, VectorIndex::kMaxK + 1, 0, {}, false, &res).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ds_->Search(nullptr, 1, 5, 0, {}, false, &res).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ds_->Search(rows_->keys.data(), 2, 5, 0, {3}, false, &res).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(FlatDatastoreTest, ExcludedDocsAreNeverReturned) {
  // Queries are stored keys; excluding their own document removes the key
  // itself and its 29 siblings.
  const int k = 10;
  std::vector<float> queries;
  std::vector<int32_t> exclude;
  std::vector<int64_t> query_ids;
  for (int64_t id = 0; id < 3000; id += 37) {
    queries.insert(queries.end(), rows_->keys.begin() + id * kDim, rows_->keys.begin() + (id + 1) * kDim);
    exclude.push_back(id % 2 == 0 ? rows_->docs[id] : -1);
    query_ids.push_back(id);
  }
  const int64_t nq = static_cast<int64_t>(exclude.size());
  const std::vector<int64_t> truth = BruteForce(*rows_, queries, k, exclude);
  for (bool exact : {false, true}) {
    std::vector<std::vector<DatastoreNeighbour>> res;
    RAG_ASSERT_OK(ds_->Search(queries.data(), nq, k, 0, exclude, exact, &res));
    for (int64_t q = 0; q < nq; ++q) {
      ASSERT_EQ(res[q].size(), static_cast<size_t>(k));
      for (const DatastoreNeighbour& nb : res[q]) {
        EXPECT_NE(nb.doc, exclude[q]);
        EXPECT_EQ(nb.doc, rows_->docs[nb.key_id]);
      }
      if (exclude[q] < 0) {
        EXPECT_EQ(res[q][0].key_id, query_ids[q]) << "the query key itself comes first";
      }
    }
    EXPECT_GE(RecallAtK(Ids(res, k), truth, nq, k), 0.95);
  }
}

// Every key of one clustered document sits nearer the query than any other:
// the search must over-retrieve several rounds to find k eligible keys.
TEST(DatastoreExclusionTest, OverRetrievesPastAWholeDocument) {
  testing::TempDir dir;
  const int d = 16;
  const int per_doc = 200;
  std::vector<float> keys = GaussianKeys(2000, d, 5);
  for (int64_t i = 0; i < per_doc; ++i) {
    for (int j = 0; j < d; ++j) keys[i * d + j] = 0.01f * keys[i * d + j];  // doc 0 clusters at the origin
  }
  Rows r = MakeRows(std::move(keys), d, per_doc);
  auto info = WriteDatastore(dir.path(), r, 500, Factory("Flat"));
  ASSERT_TRUE(info.ok()) << info.status();
  auto ds = Datastore::Open(dir.path());
  ASSERT_TRUE(ds.ok()) << ds.status();
  std::vector<float> query(d, 0.0f);
  std::vector<std::vector<DatastoreNeighbour>> res;
  RAG_ASSERT_OK((*ds)->Search(query.data(), 1, 10, 0, {0}, false, &res));
  ASSERT_EQ(res[0].size(), 10u);
  for (const DatastoreNeighbour& nb : res[0]) EXPECT_NE(nb.doc, 0);
  EXPECT_EQ(Ids(res, 10), BruteForce(r, query, 10, {0}));
  // Excluding every document but one leaves fewer than k.
  Rows tiny = MakeRows(GaussianKeys(12, d, 6), d, /*rows_per_doc=*/10);
  testing::TempDir dir2;
  ASSERT_TRUE(WriteDatastore(dir2.path(), tiny, 12, Factory("Flat")).ok());
  auto ds2 = Datastore::Open(dir2.path());
  ASSERT_TRUE(ds2.ok()) << ds2.status();
  RAG_ASSERT_OK((*ds2)->Search(query.data(), 1, 5, 0, {0}, true, &res));
  ASSERT_EQ(res[0].size(), 2u);
  for (const DatastoreNeighbour& nb : res[0]) EXPECT_EQ(nb.doc, 1);
}

TEST_F(FlatDatastoreTest, ConcurrentSearchMatchesSerial) {
  const int64_t nq = 50;
  const std::vector<float> queries = GaussianKeys(nq, kDim, 123);
  std::vector<int32_t> exclude(nq);
  for (int64_t q = 0; q < nq; ++q) exclude[q] = static_cast<int32_t>(q % 100);
  std::vector<std::vector<DatastoreNeighbour>> serial;
  RAG_ASSERT_OK(ds_->Search(queries.data(), nq, 8, 0, exclude, true, &serial));
  std::vector<std::thread> threads;
  std::vector<bool> same(4, false);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::vector<std::vector<DatastoreNeighbour>> res;
      if (!ds_->Search(queries.data(), nq, 8, 0, exclude, true, &res).ok()) return;
      same[t] = Ids(res, 8) == Ids(serial, 8);
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < 4; ++t) EXPECT_TRUE(same[t]) << t;
}

// --- IVF-PQ ---

TEST(DatastoreIvfTest, IvfPqWithExactReRanking) {
  testing::TempDir dir;
  const int64_t n = 20000;
  Rows r = MakeRows(LatentKeys(n, kDim, /*seed=*/11), kDim);
  DatastoreFinishOptions options = Factory("IVF64,PQ8");
  options.max_train = 10000;  // PQ training dominates; just over PQ's 39 * 256
  options.batch_rows = 3000;  // several add batches, the last one partial
  auto info = WriteDatastore(dir.path(), r, 4096, options);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->index_factory, "IVF64,PQ8");
  EXPECT_TRUE(info->factory_note.empty()) << info->factory_note;
  EXPECT_EQ(info->train_rows, 10000);
  auto opened = Datastore::Open(dir.path());
  ASSERT_TRUE(opened.ok()) << opened.status();
  const Datastore& ds = **opened;
  EXPECT_EQ(ds.factory(), "IVF64,PQ8");
  EXPECT_EQ(ds.size(), n);
  // 2D + 8 bytes of data, PQ8 codes + 8-byte ids in the lists, and the
  // centroids and codebooks (40 KB) spread over the keys.
  EXPECT_GT(ds.bytes_per_key(), 2.0 * kDim + 8 + 8 + 8);
  EXPECT_LT(ds.bytes_per_key(), 2.0 * kDim + 8 + 8 + 8 + 4);

  const int64_t nq = 100;
  const int k = 10;
  const std::vector<float> queries = LatentKeys(nq, kDim, /*seed=*/12);
  const std::vector<int64_t> truth = BruteForce(r, queries, k);
  std::vector<std::vector<DatastoreNeighbour>> approx, exact;
  RAG_ASSERT_OK(ds.Search(queries.data(), nq, k, 16, {}, false, &approx));
  RAG_ASSERT_OK(ds.Search(queries.data(), nq, k, 16, {}, true, &exact));
  std::vector<float> key(kDim);
  double max_rel_fp16 = 0, max_rel_fp32 = 0;
  for (int64_t q = 0; q < nq; ++q) {
    ASSERT_EQ(exact[q].size(), static_cast<size_t>(k));
    // Re-ranking reorders the same candidates.
    std::vector<int64_t> a, b;
    for (int j = 0; j < k; ++j) {
      a.push_back(approx[q][j].key_id);
      b.push_back(exact[q][j].key_id);
    }
    std::sort(a.begin(), a.end());
    std::sort(b.begin(), b.end());
    EXPECT_EQ(a, b);
    for (int j = 0; j < k; ++j) {
      const DatastoreNeighbour& nb = exact[q][j];
      if (j > 0) {
        EXPECT_LE(exact[q][j - 1].distance, nb.distance);
      }
      EXPECT_EQ(nb.value, r.values[nb.key_id]);
      ds.Key(nb.key_id, key.data());
      const double fp16 = SquaredL2(queries.data() + q * kDim, key.data(), kDim);
      const double fp32 = SquaredL2(queries.data() + q * kDim, r.keys.data() + nb.key_id * kDim, kDim);
      max_rel_fp16 = std::max(max_rel_fp16, std::fabs(nb.distance - fp16) / fp16);
      max_rel_fp32 = std::max(max_rel_fp32, std::fabs(nb.distance - fp32) / fp32);
    }
  }
  // Against the stored keys the re-ranked distances are exact; against the
  // original fp32 keys they carry fp16's rounding (2^-11 per component),
  // measured 7.8e-4 at worst here.
  EXPECT_LT(max_rel_fp16, 1e-6);
  EXPECT_LT(max_rel_fp32, 2e-3);
  const double recall_approx = RecallAtK(Ids(approx, k), truth, nq, k);
  const double recall_exact = RecallAtK(Ids(exact, k), truth, nq, k);
  // Same candidate set, so the same recall; PQ8 on 32 dims is coarse.
  EXPECT_DOUBLE_EQ(recall_approx, recall_exact);
  EXPECT_GE(recall_exact, 0.3);
  // Rank 1 after re-ranking is at least as often the true nearest.
  int top1_approx = 0, top1_exact = 0;
  for (int64_t q = 0; q < nq; ++q) {
    top1_approx += approx[q][0].key_id == truth[q * k];
    top1_exact += exact[q][0].key_id == truth[q * k];
  }
  EXPECT_GE(top1_exact, top1_approx);
  std::cerr << "IVF64,PQ8 nprobe 16: recall@10 " << recall_exact << ", top-1 approx " << top1_approx << " exact "
            << top1_exact << " of " << nq << ", max rel. distance error vs fp32 " << max_rel_fp32 << ", bytes/key "
            << ds.bytes_per_key() << "\n";
}

// --- canonical ties (retriever/topk.h) ---

// 200 gaussian keys, then five copies of one more key K with values
// `copy_values` in that order (documents 100, 101, ...).
Rows RowsWithCopies(const std::vector<int32_t>& copy_values, std::vector<float>* k_out) {
  Rows r = MakeRows(GaussianKeys(200, kDim, /*seed=*/21), kDim);
  const std::vector<float> k = GaussianKeys(1, kDim, /*seed=*/22);
  for (size_t i = 0; i < copy_values.size(); ++i) {
    r.keys.insert(r.keys.end(), k.begin(), k.end());
    r.values.push_back(copy_values[i]);
    r.docs.push_back(100 + static_cast<int32_t>(i));
  }
  *k_out = k;
  return r;
}

std::vector<int32_t> Values(const std::vector<DatastoreNeighbour>& row) {
  std::vector<int32_t> v;
  for (const auto& nb : row) v.push_back(nb.value);
  return v;
}

// Five keys at one distance, k = 3: the kept ones are those with the
// smallest values, whichever order they were written in. Written largest
// value first, FAISS's first fetch (3, ties by id) holds the values 50, 40
// and 30 only: the answer needs the tie completed by a second fetch.
TEST(DatastoreTiesTest, TieAtTheKthPlaceKeepsTheSmallestValuesWhateverTheOrder) {
  std::vector<std::vector<std::pair<int32_t, float>>> answers;
  for (const std::vector<int32_t>& order : {std::vector<int32_t>{50, 40, 30, 20, 10},
                                            std::vector<int32_t>{10, 20, 30, 40, 50},
                                            std::vector<int32_t>{30, 50, 10, 40, 20}}) {
    testing::TempDir dir;
    std::vector<float> query;
    const Rows r = RowsWithCopies(order, &query);
    RAG_ASSERT_OK(WriteDatastore(dir.path(), r, 64, Factory("Flat")).status());
    auto ds = Datastore::Open(dir.path());
    RAG_ASSERT_OK(ds.status());
    for (bool exact : {false, true}) {
      std::vector<std::vector<DatastoreNeighbour>> res;
      RAG_ASSERT_OK((*ds)->Search(query.data(), 1, 3, 0, {}, exact, &res));
      ASSERT_EQ(res[0].size(), 3u);
      EXPECT_EQ(Values(res[0]), (std::vector<int32_t>{10, 20, 30})) << "exact " << exact;
      for (const auto& nb : res[0]) {
        EXPECT_EQ(nb.distance, res[0][0].distance);
        EXPECT_EQ(r.values[static_cast<size_t>(nb.key_id)], nb.value);
      }
      if (!exact) {
        std::vector<std::pair<int32_t, float>> a;
        for (const auto& nb : res[0]) a.push_back({nb.value, nb.distance});
        answers.push_back(a);
      }
      // Excluding the document of value 10 moves the cut one further.
      const int32_t doc10 = res[0][0].doc;
      RAG_ASSERT_OK((*ds)->Search(query.data(), 1, 3, 0, {doc10}, exact, &res));
      EXPECT_EQ(Values(res[0]), (std::vector<int32_t>{20, 30, 40})) << "exact " << exact;
    }
  }
  ASSERT_EQ(answers.size(), 3u);
  EXPECT_EQ(answers[0], answers[1]);
  EXPECT_EQ(answers[0], answers[2]);
}

// The same for keys added to a served datastore (searched exactly, outside
// keys.faiss): added largest value first, the exact search's first fetch
// (ties by insertion order) misses 20 and 10.
TEST(DatastoreTiesTest, TieAmongAddedKeysIsCompletedToo) {
  testing::TempDir dir;
  const Rows built = MakeRows(GaussianKeys(200, kDim, /*seed=*/21), kDim);
  RAG_ASSERT_OK(WriteDatastore(dir.path(), built, 64, Factory("Flat")).status());
  auto ds = Datastore::Open(dir.path());
  RAG_ASSERT_OK(ds.status());
  const std::vector<float> k = GaussianKeys(1, kDim, /*seed=*/22);
  int32_t doc = 100;
  for (int32_t value : {50, 40, 30, 20, 10}) {
    RAG_ASSERT_OK(
        (*ds)->AddDocumentKeys("copy-" + std::to_string(value), k.data(), &value, doc++, 1, /*durable=*/false));
  }
  for (bool exact : {false, true}) {
    std::vector<std::vector<DatastoreNeighbour>> res;
    // Two queries, so the second fetch searches only the one still open.
    std::vector<float> queries = GaussianKeys(1, kDim, /*seed=*/23);
    queries.insert(queries.end(), k.begin(), k.end());
    RAG_ASSERT_OK((*ds)->Search(queries.data(), 2, 3, 0, {}, exact, &res));
    ASSERT_EQ(res[1].size(), 3u);
    EXPECT_EQ(Values(res[1]), (std::vector<int32_t>{10, 20, 30})) << "exact " << exact;
    for (const auto& nb : res[1]) {
      EXPECT_GE(nb.key_id, 200);
      EXPECT_EQ(nb.distance, res[1][0].distance);
    }
    EXPECT_EQ(res[0].size(), 3u);
    RAG_ASSERT_OK((*ds)->Search(queries.data(), 2, 3, 0, {200, 104}, exact, &res));  // 104: the value 10
    EXPECT_EQ(Values(res[1]), (std::vector<int32_t>{20, 30, 40})) << "exact " << exact;
  }
}

TEST(DatastoreFactoryTest, DefaultAndAdaptedFactories) {
  testing::TempDir dir;
  Rows r = MakeRows(GaussianKeys(500, 8, 3), 8);
  auto info = WriteDatastore(dir.path(), r, 500, {});
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->requested_factory, "");
  EXPECT_EQ(info->index_factory, "Flat");
  // IVF with too few points shrinks nlist, and the note says so.
  testing::TempDir dir2;
  auto info2 = WriteDatastore(dir2.path(), r, 500, Factory("IVF64,Flat"));
  ASSERT_TRUE(info2.ok()) << info2.status();
  EXPECT_EQ(info2->index_factory, "IVF12,Flat");
  EXPECT_FALSE(info2->factory_note.empty());
  auto ds = Datastore::Open(dir2.path());
  ASSERT_TRUE(ds.ok()) << ds.status();
  std::vector<std::vector<DatastoreNeighbour>> res;
  RAG_ASSERT_OK((*ds)->Search(r.keys.data(), 1, 3, 12, {}, false, &res));
  ASSERT_EQ(res[0].size(), 3u);
  EXPECT_EQ(res[0][0].key_id, 0);
  // A factory FAISS cannot build for the dim.
  testing::TempDir dir3;
  auto bad = WriteDatastore(dir3.path(), r, 500, Factory("PQ7"));
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument) << bad.status();
}

TEST(DatastoreFactoryTest, EmptyDatastore) {
  testing::TempDir dir;
  auto writer = DatastoreWriter::Create(dir.path(), 4, false);
  ASSERT_TRUE(writer.ok()) << writer.status();
  auto info = (*writer)->Finish();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->rows, 0);
  auto ds = Datastore::Open(dir.path());
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ((*ds)->size(), 0);
  EXPECT_EQ((*ds)->bytes_per_key(), 0.0);
  std::vector<float> q(8, 0.0f);
  std::vector<std::vector<DatastoreNeighbour>> res;
  RAG_ASSERT_OK((*ds)->Search(q.data(), 2, 3, 0, {-1, 0}, true, &res));
  ASSERT_EQ(res.size(), 2u);
  EXPECT_TRUE(res[0].empty());
  EXPECT_TRUE(res[1].empty());
}

}  // namespace
}  // namespace rag::retriever

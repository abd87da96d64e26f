// Tests for retriever::Datastore and DatastoreWriter: fp16 conversion, search
// against an fp32 brute force, IVF-PQ with exact re-ranking, document
// exclusion, canonical ties at the k-th place, resumed writes, and corrupt or
// unfinished datastores.
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

namespace rag::retriever {
namespace {

namespace fs = std::filesystem;

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

// --- helpers ---

// n gaussian keys of dimension d (scale ~1 per component).
std::vector<float> GaussianKeys(int64_t n, int d, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n) * d);
  for (float& v : x) v = normal(rng);
  return x;
}

// Keys shaped like hidden states: a low-dimensional gaussian latent mapped
// linearly into d dims plus noise, so PQ and IVF behave as on real data.
std::vector<float> LatentKeys(int64_t n, int d, uint64_t seed, int latent = 8) {
  std::mt19937_64 brng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> basis(static_cast<size_t>(latent) * d);
  for (float& b : basis) b = normal(brng);
  std::mt19937_64 rng(seed);
  std::vector<float> x(static_cast<size_t>(n) * d);
  std::vector<float> z(latent);
  for (int64_t i = 0; i < n; ++i) {
    for (float& v : z) v = normal(rng);
    for (int j = 0; j < d; ++j) {
      float v = 0.3f * normal(rng);
      for (int l = 0; l < latent; ++l) v += z[l] * basis[l * d + j];
      x[i * d + j] = v;
    }
  }
  return x;
}

struct Rows {
  int dim = 0;
  std::vector<float> keys;
  std::vector<int32_t> values, docs;
  int64_t n() const { return static_cast<int64_t>(values.size()); }
};

Rows MakeRows(std::vector<float> keys, int dim, int rows_per_doc = 30) {
  Rows r;
  r.dim = dim;
  r.keys = std::move(keys);
  const int64_t n = static_cast<int64_t>(r.keys.size()) / dim;
  for (int64_t i = 0; i < n; ++i) {
    r.values.push_back(static_cast<int32_t>((i * 7919) % 50257));
    r.docs.push_back(static_cast<int32_t>(i / rows_per_doc));
  }
  return r;
}

absl::Status AppendRange(DatastoreWriter* w, const Rows& r, int64_t begin, int64_t end) {
  return w->Append(r.keys.data() + begin * r.dim, r.values.data() + begin, r.docs.data() + begin, end - begin);
}

// Writes `r` in batches of `batch` rows and finishes with `options`.
absl::StatusOr<DatastoreInfo> WriteDatastore(const std::string& dir, const Rows& r, int64_t batch,
                                             const DatastoreFinishOptions& options) {
  auto writer = DatastoreWriter::Create(dir, r.dim, /*resume=*/false);
  if (!writer.ok()) return writer.status();
  for (int64_t b = 0; b < r.n(); b += batch) {
    absl::Status s = AppendRange(writer->get(), r, b, std::min(r.n(), b + batch));
    if (!s.ok()) return s;
  }
  return (*writer)->Finish(options);
}

DatastoreFinishOptions Factory(const std::string& factory) {
  DatastoreFinishOptions o;
  o.factory = factory;
  return o;
}

double SquaredL2(const float* a, const float* b, int d) {
  double s = 0;
  for (int j = 0; j < d; ++j) {
    const double diff = static_cast<double>(a[j]) - b[j];
    s += diff * diff;
  }
  return s;
}

// Exact fp32 top-k ids of each query over `keys`, skipping rows whose doc is
// `exclude[q]` when given; nq x k, row-major.
std::vector<int64_t> BruteForce(const Rows& r, const std::vector<float>& queries, int k,
                                const std::vector<int32_t>& exclude = {}) {
  const int64_t nq = static_cast<int64_t>(queries.size()) / r.dim;
  std::vector<int64_t> out;
  std::vector<std::pair<double, int64_t>> all;
  for (int64_t q = 0; q < nq; ++q) {
    all.clear();
    for (int64_t i = 0; i < r.n(); ++i) {
      if (!exclude.empty() && r.docs[i] == exclude[q]) continue;
      all.push_back({SquaredL2(queries.data() + q * r.dim, r.keys.data() + i * r.dim, r.dim), i});
    }
    std::partial_sort(all.begin(), all.begin() + k, all.end());
    for (int j = 0; j < k; ++j) out.push_back(all[j].second);
  }
  return out;
}

std::vector<int64_t> Ids(const std::vector<std::vector<DatastoreNeighbour>>& res, int k) {
  std::vector<int64_t> ids;
  for (const auto& row : res) {
    for (int j = 0; j < k; ++j) ids.push_back(j < static_cast<int>(row.size()) ? row[j].key_id : -1);
  }
  return ids;
}

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

constexpr int kDim = 32;

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

// --- writing, resuming ---

TEST(DatastoreWriterTest, RejectsBadInputWithoutWriting) {
  testing::TempDir dir;
  EXPECT_EQ(DatastoreWriter::Create(dir.path(), 0, false).status().code(), absl::StatusCode::kInvalidArgument);
  auto writer = DatastoreWriter::Create(dir.path(), 2, false);
  ASSERT_TRUE(writer.ok()) << writer.status();
  DatastoreWriter& w = **writer;
  const int32_t ok_value[2] = {1, 2}, ok_doc[2] = {0, 0}, neg[2] = {1, -1};
  const float good[4] = {1, 2, 3, 4};
  const float nan[4] = {1, 2, std::nanf(""), 4};
  const float inf[4] = {1, std::numeric_limits<float>::infinity(), 3, 4};
  const float big[4] = {1, 2, 3, 70000.0f};
  for (const float* keys : {nan, inf, big}) {
    EXPECT_EQ(w.Append(keys, ok_value, ok_doc, 2).code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(w.Append(good, neg, ok_doc, 2).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(w.Append(good, ok_value, neg, 2).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(w.Append(nullptr, ok_value, ok_doc, 2).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(w.Append(good, ok_value, ok_doc, -1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(w.rows(), 0);
  EXPECT_EQ(fs::file_size(dir / kDatastoreKeysFile), 64u);
  RAG_EXPECT_OK(w.Append(good, ok_value, ok_doc, 2));
  RAG_EXPECT_OK(w.Append(good, ok_value, ok_doc, 0));
  EXPECT_EQ(w.rows(), 2);
  RAG_ASSERT_OK(w.Finish());
  EXPECT_EQ(w.Append(good, ok_value, ok_doc, 2).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(w.Sync().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(w.Finish().status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(DatastoreWriterTest, ResumeGivesTheSameDatastoreAsAStraightWrite) {
  const int d = 24;
  Rows r = MakeRows(GaussianKeys(3000, d, 21), d);
  testing::TempDir straight_dir, resumed_dir;
  auto straight = WriteDatastore(straight_dir.path(), r, 700, Factory("Flat"));
  ASSERT_TRUE(straight.ok()) << straight.status();

  {
    auto w = DatastoreWriter::Create(resumed_dir.path(), d, false);
    ASSERT_TRUE(w.ok()) << w.status();
    RAG_ASSERT_OK(AppendRange(w->get(), r, 0, 1000));
    RAG_ASSERT_OK(AppendRange(w->get(), r, 1000, 1700));
    RAG_ASSERT_OK((*w)->Sync());
    RAG_ASSERT_OK(AppendRange(w->get(), r, 1700, 2100));  // never synced: lost
    EXPECT_EQ((*w)->rows(), 2100);
  }
  // A killed writer may also leave a partial row behind.
  {
    std::ofstream out(resumed_dir / kDatastoreKeysFile, std::ios::binary | std::ios::app);
    out.write("partial row", 11);
  }
  // Creating afresh over it, resuming a finished one or with another dim fail.
  EXPECT_EQ(DatastoreWriter::Create(resumed_dir.path(), d, false).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(DatastoreWriter::Create(resumed_dir.path(), d + 1, true).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DatastoreWriter::Create(straight_dir.path(), d, true).status().code(),
            absl::StatusCode::kFailedPrecondition);
  // An unfinished datastore does not open.
  EXPECT_EQ(Datastore::Open(resumed_dir.path()).status().code(), absl::StatusCode::kFailedPrecondition);

  {
    auto w = DatastoreWriter::Create(resumed_dir.path(), d, true);
    ASSERT_TRUE(w.ok()) << w.status();
    EXPECT_EQ((*w)->rows(), 1700);
    RAG_ASSERT_OK(AppendRange(w->get(), r, 1700, 2500));
    RAG_ASSERT_OK((*w)->Sync());
  }
  auto w = DatastoreWriter::Create(resumed_dir.path(), d, true);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ((*w)->rows(), 2500);
  RAG_ASSERT_OK(AppendRange(w->get(), r, 2500, 3000));
  auto resumed = (*w)->Finish("Flat", /*seed=*/1234, /*show_progress=*/true);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->rows, 3000);
  EXPECT_EQ(resumed->checksums, straight->checksums);
  EXPECT_EQ(resumed->checksums.size(), 4u);
  auto ds = Datastore::Open(resumed_dir.path());
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ((*ds)->size(), 3000);
}

// IndexInBackground: the index is the same whether the background thread
// got far or nowhere before Finish, and after the writer was dropped part-way
// (a killed build) and resumed.
TEST(DatastoreWriterTest, BackgroundIndexingGivesTheSameIndexHoweverFarItGot) {
  const int d = 16;
  const int64_t n = 48000, batch = 4000;
  Rows r = MakeRows(LatentKeys(n, d, 41), d);
  DatastoreFinishOptions o = Factory("IVF16,PQ4");
  o.max_train = 10000;  // trains on the first max(4 * 10000, n / 4) rows, before the last is written
  o.batch_rows = 3000;
  const int64_t trains_after = 40000;

  // Appends [begin, end) in synced batches; with `patient`, waits after
  // each batch until the background thread has indexed it (or, before
  // `trains_after` rows, until it says it cannot train yet: once they are
  // there, that status only means the thread has not woken up).
  auto append = [&](DatastoreWriter* w, int64_t begin, int64_t end, bool patient) {
    for (int64_t b = begin; b < end; b += batch) {
      const int64_t e = std::min(end, b + batch);
      RAG_ASSERT_OK(AppendRange(w, r, b, e));
      RAG_ASSERT_OK(w->Sync());
      const std::string caught_up = HumanCount(static_cast<double>(e)) + " keys indexed";
      for (int i = 0; patient && i < 3000; ++i) {
        const std::string status = w->IndexingStatus();
        if (status == caught_up || (e < trains_after && status.find("trains after") != std::string::npos)) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    }
  };
  testing::TempDir straight_dir, patient_dir, resumed_dir;
  // Finish as soon as the last row is written.
  {
    auto w = DatastoreWriter::Create(straight_dir.path(), d, false);
    ASSERT_TRUE(w.ok()) << w.status();
    RAG_ASSERT_OK((*w)->IndexInBackground(o, n));
    EXPECT_EQ((*w)->IndexInBackground(o, n).code(), absl::StatusCode::kFailedPrecondition);
    append(w->get(), 0, n, false);
    EXPECT_EQ((*w)->Finish(Factory("IVF16,PQ4")).status().code(), absl::StatusCode::kInvalidArgument);
  }
  auto w2 = DatastoreWriter::Create(straight_dir.path(), d, true);  // the failed Finish left it resumable
  ASSERT_TRUE(w2.ok()) << w2.status();
  RAG_ASSERT_OK((*w2)->IndexInBackground(o, n));
  auto straight = (*w2)->Finish(o);
  ASSERT_TRUE(straight.ok()) << straight.status();
  EXPECT_EQ(straight->index_factory, "IVF16,PQ4");
  EXPECT_EQ(straight->train_rows, 10000);

  // Let the thread train and index every batch before the next one.
  auto p = DatastoreWriter::Create(patient_dir.path(), d, false);
  ASSERT_TRUE(p.ok()) << p.status();
  RAG_ASSERT_OK((*p)->IndexInBackground(o, n));
  EXPECT_NE((*p)->IndexingStatus().find("trains after 40.0k"), std::string::npos) << (*p)->IndexingStatus();
  append(p->get(), 0, n, true);
  EXPECT_EQ((*p)->IndexingStatus(), "48.0k keys indexed");
  auto patient = (*p)->Finish(o);
  ASSERT_TRUE(patient.ok()) << patient.status();
  EXPECT_EQ(patient->checksums, straight->checksums);

  // Dropped (cancelled) while indexing, then resumed.
  {
    auto k = DatastoreWriter::Create(resumed_dir.path(), d, false);
    ASSERT_TRUE(k.ok()) << k.status();
    RAG_ASSERT_OK((*k)->IndexInBackground(o, n));
    append(k->get(), 0, 44000, true);
  }
  auto resumed_writer = DatastoreWriter::Create(resumed_dir.path(), d, true);
  ASSERT_TRUE(resumed_writer.ok()) << resumed_writer.status();
  EXPECT_EQ((*resumed_writer)->rows(), 44000);
  EXPECT_EQ((*resumed_writer)->IndexInBackground(o, 43999).code(), absl::StatusCode::kInvalidArgument);
  RAG_ASSERT_OK((*resumed_writer)->IndexInBackground(o, n));
  append(resumed_writer->get(), 44000, n, false);
  auto resumed = (*resumed_writer)->Finish(o);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->checksums, straight->checksums);

  // The index finds stored keys.
  auto ds = Datastore::Open(resumed_dir.path());
  ASSERT_TRUE(ds.ok()) << ds.status();
  std::vector<std::vector<DatastoreNeighbour>> res;
  RAG_ASSERT_OK((*ds)->Search(r.keys.data() + 123 * d, 1, 5, 16, {}, /*exact=*/true, &res));
  ASSERT_FALSE(res[0].empty());
  EXPECT_EQ(res[0][0].key_id, 123);
}

TEST(DatastoreWriterTest, ResumeWithNothingThereStartsAfresh) {
  testing::TempDir dir;
  auto w = DatastoreWriter::Create(dir / "sub/store", 4, true);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ((*w)->rows(), 0);
}

// --- corrupt and missing files ---

TEST(DatastoreFileTest, CorruptOrTruncatedFilesGiveDataLoss) {
  testing::TempDir base;
  const int d = 8;
  Rows r = MakeRows(GaussianKeys(500, d, 31), d);
  ASSERT_TRUE(WriteDatastore(base / "good", r, 200, Factory("Flat")).ok());
  RAG_ASSERT_OK(Datastore::Open(base / "good"));

  int case_no = 0;
  // Applies `damage` to a fresh copy of the good datastore and opens it.
  auto open_damaged = [&](const std::function<void(const std::string&)>& damage,
                          const DatastoreOpenOptions& options = {}) {
    const std::string dir = base / ("case" + std::to_string(case_no++));
    fs::copy(base / "good", dir, fs::copy_options::recursive);
    damage(dir);
    return Datastore::Open(dir, options).status();
  };
  auto flip = [](const std::string& path, size_t offset) {
    std::string bytes = ReadBytes(path);
    bytes[offset] = static_cast<char>(bytes[offset] ^ 0x10);
    WriteBytes(path, bytes);
  };
  auto truncate = [](const std::string& path, size_t size) { fs::resize_file(path, size); };
  const std::string keys = std::string("/") + kDatastoreKeysFile;
  const std::string values = std::string("/") + kDatastoreValuesFile;
  const std::string docs = std::string("/") + kDatastoreDocsFile;
  const std::string index = std::string("/") + kDatastoreIndexFile;
  const size_t keys_size = 64 + 500 * d * 2;

  struct Case {
    const char* what;
    std::function<void(const std::string&)> damage;
    absl::StatusCode code;
  };
  const std::vector<Case> cases = {
      {"flipped keys payload byte", [&](const std::string& dir) { flip(dir + keys, 64 + 3001); },
       absl::StatusCode::kDataLoss},
      {"flipped last keys byte", [&](const std::string& dir) { flip(dir + keys, keys_size - 1); },
       absl::StatusCode::kDataLoss},
      {"flipped keys header (rows)", [&](const std::string& dir) { flip(dir + keys, 16); },
       absl::StatusCode::kDataLoss},
      {"flipped keys magic", [&](const std::string& dir) { flip(dir + keys, 0); }, absl::StatusCode::kDataLoss},
      {"reserved header byte set", [&](const std::string& dir) { flip(dir + keys, 50); }, absl::StatusCode::kDataLoss},
      {"flipped values payload", [&](const std::string& dir) { flip(dir + values, 64 + 17); },
       absl::StatusCode::kDataLoss},
      {"flipped docs payload", [&](const std::string& dir) { flip(dir + docs, 64 + 400); },
       absl::StatusCode::kDataLoss},
      {"truncated values", [&](const std::string& dir) { truncate(dir + values, 64 + 499 * 4); },
       absl::StatusCode::kDataLoss},
      {"values cut inside a row", [&](const std::string& dir) { truncate(dir + values, 64 + 250 * 4 + 2); },
       absl::StatusCode::kDataLoss},
      {"values cut in the header", [&](const std::string& dir) { truncate(dir + values, 10); },
       absl::StatusCode::kDataLoss},
      {"empty docs", [&](const std::string& dir) { truncate(dir + docs, 0); }, absl::StatusCode::kDataLoss},
      {"truncated keys", [&](const std::string& dir) { truncate(dir + keys, keys_size - 16); },
       absl::StatusCode::kDataLoss},
      {"trailing keys bytes", [&](const std::string& dir) { truncate(dir + keys, keys_size + 2); },
       absl::StatusCode::kDataLoss},
      {"missing docs", [&](const std::string& dir) { fs::remove(dir + docs); }, absl::StatusCode::kDataLoss},
      {"values cut to 100 rows",
       [&](const std::string& dir) {
         std::string v = ReadBytes(dir + values);
         WriteBytes(dir + values, v.substr(0, 64 + 100 * 4));  // header still says 500 rows
       },
       absl::StatusCode::kDataLoss},
      {"docs file in place of values",
       [&](const std::string& dir) { fs::copy_file(dir + docs, dir + values, fs::copy_options::overwrite_existing); },
       absl::StatusCode::kDataLoss},
      {"truncated index", [&](const std::string& dir) { truncate(dir + index, fs::file_size(dir + index) / 2); },
       absl::StatusCode::kDataLoss},
      {"flipped index byte", [&](const std::string& dir) { flip(dir + index, fs::file_size(dir + index) - 5); },
       absl::StatusCode::kDataLoss},
      {"missing index", [&](const std::string& dir) { fs::remove(dir + index); },
       absl::StatusCode::kFailedPrecondition},
  };
  for (const Case& c : cases) {
    absl::Status s = open_damaged(c.damage);
    EXPECT_EQ(s.code(), c.code) << c.what << ": " << s;
  }

  // Files from another datastore: each is consistent in itself, but the row
  // counts disagree.
  {
    testing::TempDir other;
    Rows r2 = MakeRows(GaussianKeys(400, d, 32), d);
    ASSERT_TRUE(WriteDatastore(other.path(), r2, 400, Factory("Flat")).ok());
    for (const std::string& name : {index, values, keys}) {
      absl::Status s = open_damaged([&](const std::string& dir) {
        fs::copy_file(other.path() + name, dir + name, fs::copy_options::overwrite_existing);
      });
      EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << name << ": " << s;
    }
  }
  // Without checksum verification a payload flip goes unnoticed (by design),
  // but sizes and headers are still checked.
  DatastoreOpenOptions no_verify;
  no_verify.verify_checksums = false;
  RAG_EXPECT_OK(open_damaged([&](const std::string& dir) { flip(dir + keys, 64 + 3001); }, no_verify));
  EXPECT_EQ(open_damaged([&](const std::string& dir) { truncate(dir + values, 64 + 499 * 4); }, no_verify).code(),
            absl::StatusCode::kDataLoss);
  // No datastore at all.
  EXPECT_EQ(Datastore::Open(base / "nothing").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace rag::retriever

namespace rag::retriever {
namespace {

// Keys of documents added after the build: searchable at once, exact, merged
// with the built keys, durable in added.log (a torn last record is dropped and
// overwritten), filtered at open by the documents the index holds.
TEST(DatastoreAddedTest, AddedKeysAreSearchableDurableAndSurviveATornAppend) {
  testing::TempDir dir;
  const Rows built = MakeRows(GaussianKeys(500, kDim, /*seed=*/4), kDim);
  RAG_ASSERT_OK(WriteDatastore(dir.path(), built, 100, Factory("Flat")).status());
  const Rows extra = MakeRows(GaussianKeys(20, kDim, /*seed=*/5), kDim, /*rows_per_doc=*/10);
  {
    auto ds = Datastore::Open(dir.path());
    RAG_ASSERT_OK(ds.status());
    EXPECT_EQ((*ds)->size(), 500);
    RAG_ASSERT_OK((*ds)->AddDocumentKeys("new-a", extra.keys.data(), extra.values.data(), 40, 10, true));
    RAG_ASSERT_OK((*ds)->AddDocumentKeys("new-b", extra.keys.data() + 10 * kDim, extra.values.data() + 10, 41, 10,
                                         /*durable=*/false));
    EXPECT_EQ((*ds)->size(), 520);
    EXPECT_EQ((*ds)->added_size(), 20);
    EXPECT_TRUE((*ds)->HasAddedDocument("new-a"));
    EXPECT_EQ((*ds)->AddDocumentKeys("new-a", extra.keys.data(), extra.values.data(), 40, 1, true).code(),
              absl::StatusCode::kInvalidArgument);
    std::vector<float> bad(kDim, std::nanf(""));
    EXPECT_EQ((*ds)->AddDocumentKeys("bad", bad.data(), extra.values.data(), 42, 1, true).code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_FALSE((*ds)->HasAddedDocument("bad"));
    // An added key is its own nearest neighbour (fp16 rounding only), with
    // its value and document; excluding its document skips all ten.
    std::vector<std::vector<DatastoreNeighbour>> res;
    RAG_ASSERT_OK((*ds)->Search(extra.keys.data() + 3 * kDim, 1, 5, 0, {}, false, &res));
    ASSERT_EQ(res[0].size(), 5u);
    EXPECT_EQ(res[0][0].key_id, 503);
    EXPECT_EQ(res[0][0].value, extra.values[3]);
    EXPECT_EQ(res[0][0].doc, 40);
    EXPECT_LT(res[0][0].distance, 1e-3);
    for (size_t j = 1; j < res[0].size(); ++j) EXPECT_GE(res[0][j].distance, res[0][j - 1].distance);
    RAG_ASSERT_OK((*ds)->Search(extra.keys.data() + 3 * kDim, 1, 5, 0, {40}, false, &res));
    for (const auto& nb : res[0]) EXPECT_NE(nb.doc, 40);
    // Merged with the built keys: the same top-k as a brute force over both.
    Rows both = built;
    for (int64_t i = 0; i < 20; ++i) {
      std::vector<float> key(extra.keys.begin() + i * kDim, extra.keys.begin() + (i + 1) * kDim);
      for (float& x : key) x = HalfToFloat(FloatToHalf(x));
      both.keys.insert(both.keys.end(), key.begin(), key.end());
      both.values.push_back(extra.values[static_cast<size_t>(i)]);
      both.docs.push_back(i < 10 ? 40 : 41);
    }
    const std::vector<float> queries = GaussianKeys(8, kDim, /*seed=*/6);
    RAG_ASSERT_OK((*ds)->Search(queries.data(), 8, 10, 0, {}, false, &res));
    EXPECT_EQ(Ids(res, 10), BruteForce(both, queries, 10));
    float key[kDim];
    (*ds)->Key(515, key);
    EXPECT_EQ(key[0], both.keys[515 * kDim]);
    EXPECT_EQ((*ds)->value(515), extra.values[15]);
    EXPECT_EQ((*ds)->doc(515), 41);
  }
  // Reopened: the durable document is back, the other was memory only.
  const std::string log = dir.path() + "/" + kDatastoreAddedFile;
  const std::string one_record = ReadBytes(log);
  {
    auto ds = Datastore::Open(dir.path());
    RAG_ASSERT_OK(ds.status());
    EXPECT_EQ((*ds)->added_size(), 10);
    EXPECT_TRUE((*ds)->HasAddedDocument("new-a"));
    EXPECT_FALSE((*ds)->HasAddedDocument("new-b"));
    RAG_ASSERT_OK((*ds)->AddDocumentKeys("new-c", extra.keys.data() + 10 * kDim, extra.values.data() + 10, 41, 10, true));
  }
  // A crash in the middle of the second record: it is ignored, and the next
  // append overwrites it.
  const std::string two_records = ReadBytes(log);
  ASSERT_GT(two_records.size(), one_record.size());
  WriteBytes(log, two_records.substr(0, two_records.size() - 37));
  {
    auto ds = Datastore::Open(dir.path());
    RAG_ASSERT_OK(ds.status());
    EXPECT_EQ((*ds)->added_size(), 10);
    EXPECT_FALSE((*ds)->HasAddedDocument("new-c"));
    RAG_ASSERT_OK((*ds)->AddDocumentKeys("new-c", extra.keys.data() + 10 * kDim, extra.values.data() + 10, 41, 10, true));
  }
  EXPECT_EQ(ReadBytes(log), two_records);
  // A flipped bit in a record's keys fails its checksum: it and what follows are dropped.
  std::string flipped = two_records;
  flipped[one_record.size() + 100] ^= 0x10;
  WriteBytes(log, flipped);
  {
    auto ds = Datastore::Open(dir.path());
    RAG_ASSERT_OK(ds.status());
    EXPECT_EQ((*ds)->added_size(), 10);
  }
  // Documents the index does not hold are not loaded.
  WriteBytes(log, two_records);
  DatastoreOpenOptions o;
  o.keep_added = [](const std::string& id) { return id != "new-a"; };
  auto ds = Datastore::Open(dir.path(), o);
  RAG_ASSERT_OK(ds.status());
  EXPECT_FALSE((*ds)->HasAddedDocument("new-a"));
  EXPECT_TRUE((*ds)->HasAddedDocument("new-c"));
  EXPECT_EQ((*ds)->size(), 510);
}

}  // namespace
}  // namespace rag::retriever

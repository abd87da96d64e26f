// Helpers of the datastore tests (datastore_test.cc, datastore_writer_test.cc):
// synthetic keys and rows, writing them, brute-force neighbours, raw file
// bytes.
#pragma once

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "retriever/datastore.h"

namespace rag::retriever::datastore_test {


// n gaussian keys of dimension d (scale ~1 per component).
inline std::vector<float> GaussianKeys(int64_t n, int d, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n) * d);
  for (float& v : x) v = normal(rng);
  return x;
}

// Keys shaped like hidden states: a low-dimensional gaussian latent mapped
// linearly into d dims plus noise, so PQ and IVF behave as on real data.
inline std::vector<float> LatentKeys(int64_t n, int d, uint64_t seed, int latent = 8) {
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

inline Rows MakeRows(std::vector<float> keys, int dim, int rows_per_doc = 30) {
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

inline absl::Status AppendRange(DatastoreWriter* w, const Rows& r, int64_t begin, int64_t end) {
  return w->Append(r.keys.data() + begin * r.dim, r.values.data() + begin, r.docs.data() + begin, end - begin);
}

// Writes `r` in batches of `batch` rows and finishes with `options`.
inline absl::StatusOr<DatastoreInfo> WriteDatastore(const std::string& dir, const Rows& r, int64_t batch,
                                             const DatastoreFinishOptions& options) {
  auto writer = DatastoreWriter::Create(dir, r.dim, /*resume=*/false);
  if (!writer.ok()) return writer.status();
  for (int64_t b = 0; b < r.n(); b += batch) {
    absl::Status s = AppendRange(writer->get(), r, b, std::min(r.n(), b + batch));
    if (!s.ok()) return s;
  }
  return (*writer)->Finish(options);
}

inline DatastoreFinishOptions Factory(const std::string& factory) {
  DatastoreFinishOptions o;
  o.factory = factory;
  return o;
}

inline double SquaredL2(const float* a, const float* b, int d) {
  double s = 0;
  for (int j = 0; j < d; ++j) {
    const double diff = static_cast<double>(a[j]) - b[j];
    s += diff * diff;
  }
  return s;
}

// Exact fp32 top-k ids of each query over `keys`, skipping rows whose doc is
// `exclude[q]` when given; nq x k, row-major.
inline std::vector<int64_t> BruteForce(const Rows& r, const std::vector<float>& queries, int k,
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

inline std::vector<int64_t> Ids(const std::vector<std::vector<DatastoreNeighbour>>& res, int k) {
  std::vector<int64_t> ids;
  for (const auto& row : res) {
    for (int j = 0; j < k; ++j) ids.push_back(j < static_cast<int>(row.size()) ? row[j].key_id : -1);
  }
  return ids;
}

inline std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

constexpr int kDim = 32;

}  // namespace rag::retriever::datastore_test

// FAISS-only cost of one index size, for the cost-against-corpus-size study
// (bench/bench_growth.sh, issue 23): builds the project's VectorIndex over n
// synthetic vectors and prints one JSON line with the training and adding
// seconds, the bytes on disk, the resident memory the index adds and the
// single-query search latency at a fixed nprobe.
//
//   build/bench/bench_faiss_growth --n 1000000 [--dim 64] [--nlist-per-sqrt 1]
//       [--pq-m 16] [--nprobe 8] [--queries 500] [--k 10] [--seed 1] [--tmp DIR]
//
// The vectors are a mixture of 1,024 Gaussian clusters (centres N(0, 1), each
// point its centre plus N(0, 0.5^2) noise), so IVF lists are uneven as they
// are on real embeddings; queries are fresh draws from the same mixture. The
// factory is IVF{nlist},PQ{m} with nlist = round(c * sqrt(n)): the builder's
// own default (VectorIndex::DefaultFactory) is 4 sqrt(n) rounded to a power
// of two, whose k-means on 256 points per list would take hours on 2 cores
// at 10^7; search cost per query is nprobe * n / nlist either way, so both
// grow as sqrt(n). Run one size per process so the memory figure holds only
// this index.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include <faiss/utils/random.h>
#include <nlohmann/json.hpp>

#include "bench/proc_status.h"
#include "retriever/vector_index.h"

namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// Rows [first, first + count) of the synthetic set, deterministic in (seed,
// row range): the same n and seed give the same vectors in any batching.
class Mixture {
 public:
  static constexpr int kClusters = 1024;

  Mixture(int dim, int64_t seed) : dim_(dim), seed_(seed), centres_(static_cast<size_t>(kClusters) * dim) {
    faiss::float_randn(centres_.data(), centres_.size(), seed);
  }

  void Rows(int64_t first, int64_t count, int64_t stream, std::vector<float>* out) const {
    out->resize(static_cast<size_t>(count) * dim_);
    // One seed per (stream, batch start): batches are independent draws.
    const int64_t batch_seed = seed_ * 1000003 + stream * 7919 + first;
    faiss::float_randn(out->data(), out->size(), batch_seed);
    std::vector<int> cluster(count);
    faiss::RandomGenerator rng(batch_seed + 1);
    for (auto& c : cluster) c = rng.rand_int(kClusters);
    for (int64_t i = 0; i < count; ++i) {
      float* row = out->data() + i * dim_;
      const float* centre = centres_.data() + static_cast<size_t>(cluster[i]) * dim_;
      for (int j = 0; j < dim_; ++j) row[j] = centre[j] + 0.5f * row[j];
    }
  }

 private:
  int dim_;
  int64_t seed_;
  std::vector<float> centres_;
};

}  // namespace

int main(int argc, char** argv) {
  int64_t n = 0;
  int dim = 64, pq_m = 16, nprobe = 8, queries = 500, k = 10;
  double nlist_per_sqrt = 1.0;
  int64_t seed = 1;
  std::string tmp = std::filesystem::temp_directory_path().string();
  CLI::App app{"bench_faiss_growth: FAISS build and query cost of one synthetic index size"};
  app.add_option("--n", n, "vectors in the index")->required()->check(CLI::Range(int64_t{1000}, int64_t{1} << 31));
  app.add_option("--dim", dim, "vector dimension")->capture_default_str()->check(CLI::Range(8, 4096));
  app.add_option("--nlist-per-sqrt", nlist_per_sqrt, "nlist = round(c * sqrt(n))")->capture_default_str()
      ->check(CLI::Range(0.01, 64.0));
  app.add_option("--pq-m", pq_m, "PQ sub-quantizers (must divide --dim)")->capture_default_str();
  app.add_option("--nprobe", nprobe, "IVF lists visited per query")->capture_default_str();
  app.add_option("--queries", queries, "single-vector searches timed")->capture_default_str();
  app.add_option("--k", k, "neighbours per query")->capture_default_str();
  app.add_option("--seed", seed, "seed of the synthetic set")->capture_default_str();
  app.add_option("--tmp", tmp, "directory for the saved index (deleted after)")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (dim % pq_m != 0) {
    std::fprintf(stderr, "bench_faiss_growth: --pq-m %d does not divide --dim %d\n", pq_m, dim);
    return 2;
  }
  using rag::retriever::VectorIndex;
  const int64_t nlist = std::max<int64_t>(1, std::llround(nlist_per_sqrt * std::sqrt(static_cast<double>(n))));
  const std::string factory = "IVF" + std::to_string(nlist) + ",PQ" + std::to_string(pq_m);
  const Mixture mixture(dim, seed);
  const double rss_before = rag::bench::ProcStatusBytes("RssAnon:");

  auto index = VectorIndex::Create(dim, factory);
  if (!index.ok()) {
    std::fprintf(stderr, "bench_faiss_growth: %s\n", index.status().ToString().c_str());
    return 1;
  }
  VectorIndex& ix = **index;
  const int64_t train_n = ix.TrainingSampleSize(n);
  std::vector<float> batch;
  mixture.Rows(0, train_n, /*stream=*/1, &batch);
  auto t = Clock::now();
  if (auto s = ix.Train(batch.data(), train_n, 1234, train_n); !s.ok()) {
    std::fprintf(stderr, "bench_faiss_growth: train: %s\n", s.ToString().c_str());
    return 1;
  }
  const double train_s = SecondsSince(t);
  std::fprintf(stderr, "bench_faiss_growth: n=%lld %s trained on %lld in %.1f s\n", static_cast<long long>(n),
               factory.c_str(), static_cast<long long>(train_n), train_s);

  // Generation is not timed: only Add is.
  constexpr int64_t kBatch = 1 << 17;
  double add_s = 0;
  ix.Reserve(n);
  for (int64_t first = 0; first < n; first += kBatch) {
    const int64_t count = std::min(kBatch, n - first);
    mixture.Rows(first, count, /*stream=*/0, &batch);
    t = Clock::now();
    if (auto s = ix.Add(batch.data(), count); !s.ok()) {
      std::fprintf(stderr, "bench_faiss_growth: add: %s\n", s.ToString().c_str());
      return 1;
    }
    add_s += SecondsSince(t);
  }
  std::vector<float>().swap(batch);
  const double rss_index = rag::bench::ProcStatusBytes("RssAnon:") - rss_before;

  const std::string path = tmp + "/bench_faiss_growth_" + std::to_string(n) + ".faiss";
  t = Clock::now();
  if (auto s = ix.Save(path); !s.ok()) {
    std::fprintf(stderr, "bench_faiss_growth: save: %s\n", s.ToString().c_str());
    return 1;
  }
  const double save_s = SecondsSince(t);
  const auto disk_bytes = static_cast<double>(std::filesystem::file_size(path));
  std::filesystem::remove(path);

  std::vector<float> q;
  mixture.Rows(0, queries, /*stream=*/2, &q);
  std::vector<float> distances;
  std::vector<int64_t> ids;
  std::vector<double> ms;
  for (int i = -20; i < queries; ++i) {  // 20 untimed warm-up searches
    const float* row = q.data() + static_cast<size_t>(std::max(i, 0)) * dim;
    t = Clock::now();
    if (auto s = ix.Search(row, 1, k, static_cast<int>(nprobe), &distances, &ids); !s.ok()) {
      std::fprintf(stderr, "bench_faiss_growth: search: %s\n", s.ToString().c_str());
      return 1;
    }
    if (i >= 0) ms.push_back(1000.0 * SecondsSince(t));
  }
  std::sort(ms.begin(), ms.end());
  nlohmann::json out = {
      {"n", n},
      {"dim", dim},
      {"factory", factory},
      {"nlist", nlist},
      {"nprobe", nprobe},
      {"train_rows", train_n},
      {"train_seconds", train_s},
      {"add_seconds", add_s},
      {"save_seconds", save_s},
      {"disk_bytes", disk_bytes},
      {"disk_bytes_per_vector", disk_bytes / static_cast<double>(n)},
      {"rss_anon_bytes", rss_index},
      {"rss_anon_bytes_per_vector", rss_index / static_cast<double>(n)},
      {"query_p50_ms", ms[ms.size() / 2]},
      {"query_p99_ms", ms[std::min(ms.size() - 1, ms.size() * 99 / 100)]},
      {"queries", queries},
  };
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

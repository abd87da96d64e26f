// VectorIndex's training (retriever/vector_index.h): the sample rules, the
// PQ codebook settings, and IVF-PQ's two-step training on a sample the
// caller hands over, so that nothing the size of the sample is copied.
#include <faiss/IndexIVFPQ.h>
#include <faiss/IndexPQ.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <unordered_set>
#include <vector>

#include "common/status.h"
#include "retriever/internal/faiss_calls.h"
#include "retriever/vector_index.h"

namespace rag::retriever {
namespace {

using internal::CoreOf;
using internal::CurrentExceptionToStatus;
using internal::FaissThreads;
using internal::NlistOf;

// index_factory turns on polysemous training for every "PQ" it builds. It
// only serves polysemous (Hamming-filtered) search, which this wrapper never
// enables, and it is by far the slowest part of training: measured 100+ s
// of a 105 s "IVF64,PQ16" training on 20000 x 64 on this project's machine.
// PQ codebook training, which dominated IVF-PQ training here (Debian's FAISS
// is built for baseline x86-64, and k-means over 8-dimensional sub-vectors
// gets little from BLAS):
//  - polysemous training is off: it only serves polysemous search, never
//    enabled here, and took over 90% of the training time;
//  - each sub-quantizer's k-means uses at most 64 points per centroid and
//    10 iterations (FAISS: 256 and 25; it asks for at least 39 points and
//    uses 10 iterations for its own IVF k-means). On the Brown datastore keys
//    (IVF1024,PQ32, 65k training keys) training took 18 s instead of 95 s;
//    recall@64 stayed 0.821 and the mean relative error of the PQ distances
//    went from 0.171 to 0.179 (docs/results.md).
constexpr int kPqTrainPointsPerCentroid = 64;
constexpr int kPqTrainIterations = 10;

// A bare IVF-PQ on residuals (trained in two steps by TrainOwnedSample).
faiss::IndexIVFPQ* ResidualIvfPqOf(faiss::Index* index) {
  auto* ivfpq = dynamic_cast<faiss::IndexIVFPQ*>(index);
  return ivfpq != nullptr && ivfpq->by_residual ? ivfpq : nullptr;
}

void ConfigurePqTraining(faiss::Index* index) {
  index = CoreOf(index);
  faiss::ProductQuantizer* pq = nullptr;
  if (auto* ivfpq = dynamic_cast<faiss::IndexIVFPQ*>(index)) {
    ivfpq->do_polysemous_training = false;
    pq = &ivfpq->pq;
  }
  if (auto* flat_pq = dynamic_cast<faiss::IndexPQ*>(index)) {
    flat_pq->do_polysemous_training = false;
    pq = &flat_pq->pq;
  }
  if (pq != nullptr) {
    pq->cp.max_points_per_centroid = kPqTrainPointsPerCentroid;
    pq->cp.niter = kPqTrainIterations;
  }
}

}  // namespace

// rng() % range instead of
// std::uniform_int_distribution, whose output differs between standard
// libraries; the modulo bias is below 2^-40 for any realistic n.
std::vector<int64_t> VectorIndex::SampleRows(int64_t n, int64_t m, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::unordered_set<int64_t> chosen;
  chosen.reserve(static_cast<size_t>(m) * 2);
  for (int64_t j = n - m; j < n; ++j) {
    int64_t t = static_cast<int64_t>(rng() % static_cast<uint64_t>(j + 1));
    if (!chosen.insert(t).second) chosen.insert(j);
  }
  std::vector<int64_t> rows(chosen.begin(), chosen.end());
  std::sort(rows.begin(), rows.end());
  return rows;
}

int64_t VectorIndex::TrainingSampleSize(int64_t n, int64_t max_train, const TrainingSampleRule& rule) const {
  const int64_t cap = max_train > 0 ? max_train : std::max(rule.per_list * NlistOf(index_.get()), rule.minimum);
  return std::min(n, cap);
}

absl::Status VectorIndex::CheckTrainable(int64_t n) const {
  const std::string context = "training index '" + factory_ + "'";
  if (read_only_) return absl::FailedPreconditionError(context + ": index is read-only (opened with mmap)");
  const int64_t nlist = NlistOf(index_.get());
  if (!index_->is_trained && n < std::max<int64_t>(nlist, 1)) {
    return absl::InvalidArgumentError(context + ": needs at least " + std::to_string(std::max<int64_t>(nlist, 1)) +
                                      " training vectors, got " + std::to_string(n) +
                                      " (VectorIndex::AdaptFactory picks a factory that fits)");
  }
  return absl::OkStatus();
}

absl::Status VectorIndex::Train(const float* x, int64_t n, uint64_t seed, int64_t max_train) {
  const std::string context = "training index '" + factory_ + "'";
  if (n < 0 || max_train < 0) return absl::InvalidArgumentError(context + ": negative n or max_train");
  if (x == nullptr && n > 0) return absl::InvalidArgumentError(context + ": null data");
  RAG_RETURN_IF_ERROR(CheckTrainable(n));
  if (index_->is_trained) return absl::OkStatus();
  const int64_t m = TrainingSampleSize(n, max_train);
  const size_t d = static_cast<size_t>(index_->d);
  // Only a residual IVF-PQ reorders its sample: others train on `x` itself.
  if (m == n && ResidualIvfPqOf(index_.get()) == nullptr) return TrainInFaiss(x, n);
  std::vector<float> sample(static_cast<size_t>(m) * d);
  if (m == n) {
    std::memcpy(sample.data(), x, sample.size() * sizeof(float));
  } else {
    const std::vector<int64_t> rows = SampleRows(n, m, seed);
    for (size_t i = 0; i < rows.size(); ++i) {
      std::memcpy(sample.data() + i * d, x + static_cast<size_t>(rows[i]) * d, d * sizeof(float));
    }
  }
  return TrainOwnedSample(std::move(sample), seed);
}

absl::Status VectorIndex::TrainOnSample(std::vector<float> sample, uint64_t seed) {
  const size_t d = static_cast<size_t>(index_->d);
  if (sample.size() % d != 0) {
    return absl::InvalidArgumentError("training index '" + factory_ + "': sample is not whole rows");
  }
  RAG_RETURN_IF_ERROR(CheckTrainable(static_cast<int64_t>(sample.size() / d)));
  if (index_->is_trained) return absl::OkStatus();
  return TrainOwnedSample(std::move(sample), seed);
}

absl::Status VectorIndex::TrainInFaiss(const float* x, int64_t n) {
  FaissThreads threads;
  try {
    ConfigurePqTraining(index_.get());
    index_->train(n, x);
  } catch (...) {
    return CurrentExceptionToStatus(absl::StatusCode::kInvalidArgument,
                                    "training index '" + factory_ + "' on " + std::to_string(n) + " vectors");
  }
  return absl::OkStatus();
}

absl::Status VectorIndex::TrainOwnedSample(std::vector<float> sample, uint64_t seed) {
  const size_t d = static_cast<size_t>(index_->d);
  const int64_t n = static_cast<int64_t>(sample.size() / d);
  faiss::IndexIVFPQ* ivfpq = ResidualIvfPqOf(index_.get());
  if (ivfpq == nullptr) return TrainInFaiss(sample.data(), n);
  FaissThreads threads;
  try {
    ConfigurePqTraining(index_.get());
    // FAISS 1.7.3's IndexIVF::train is train_q1 (the coarse k-means) then
    // train_residual, which copies a subsample of at most
    // max_points_per_centroid * ksub rows for the PQ and then their
    // residuals. Run the same steps in this buffer instead (the sample is
    // ours to overwrite): the PQ subsample moved to its front, then turned
    // into residuals in place. Same codebooks; two copies fewer at the
    // build's training peak (docs/results.md, issue 24).
    ivfpq->train_q1(n, sample.data(), ivfpq->verbose, ivfpq->metric_type);
    const int64_t pq_rows = std::min<int64_t>(n, int64_t{ivfpq->pq.cp.max_points_per_centroid} *
                                                     static_cast<int64_t>(ivfpq->pq.ksub));
    if (pq_rows < n) {
      // Sorted rows r_0 < r_1 < ...: r_i >= i, so slot i never holds a row
      // still to be moved.
      const std::vector<int64_t> rows = SampleRows(n, pq_rows, seed + 1);
      for (size_t i = 0; i < rows.size(); ++i) {
        if (rows[i] == static_cast<int64_t>(i)) continue;
        std::memcpy(sample.data() + i * d, sample.data() + static_cast<size_t>(rows[i]) * d, d * sizeof(float));
      }
    }
    std::vector<faiss::Index::idx_t> list(static_cast<size_t>(pq_rows));
    ivfpq->quantizer->assign(pq_rows, sample.data(), list.data());
    std::vector<float> residual(d);
    for (int64_t i = 0; i < pq_rows; ++i) {
      float* row = sample.data() + static_cast<size_t>(i) * d;
      ivfpq->quantizer->compute_residual(row, residual.data(), list[static_cast<size_t>(i)]);
      std::memcpy(row, residual.data(), d * sizeof(float));
    }
    ivfpq->pq.train(pq_rows, sample.data());
    ivfpq->precompute_table();  // as train_residual ends; a no-op once DropSearchTables ran
    ivfpq->is_trained = true;
  } catch (...) {
    return CurrentExceptionToStatus(absl::StatusCode::kInvalidArgument,
                                    "training index '" + factory_ + "' on " + std::to_string(n) + " vectors");
  }
  return absl::OkStatus();
}

void VectorIndex::DropSearchTables() {
  // -1: FAISS's "no table" (IndexIVFPQ.h); training then skips it and
  // search computes the same terms per query.
  if (auto* ivfpq = dynamic_cast<faiss::IndexIVFPQ*>(CoreOf(index_.get()))) {
    ivfpq->use_precomputed_table = -1;
    ivfpq->precomputed_table.resize(0);
  }
}

int64_t VectorIndex::search_table_bytes() const {
  if (auto* ivfpq = dynamic_cast<faiss::IndexIVFPQ*>(CoreOf(index_.get()))) {
    return static_cast<int64_t>(ivfpq->precomputed_table.size() * sizeof(float));
  }
  return 0;
}

}  // namespace rag::retriever

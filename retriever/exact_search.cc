// Brute-force search and recall (declared in retriever/vector_index.h): the
// ground truth that approximate indexes are measured against, and the
// exact search of the datastore's added keys.
#include <faiss/utils/distances.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "retriever/internal/faiss_calls.h"
#include "retriever/vector_index.h"

namespace rag::retriever {

using internal::CurrentExceptionToStatus;
using internal::FaissThreads;

absl::Status ExactSearchL2(const float* queries, int64_t nq, const float* vectors, int64_t n, int dim, int k,
                           const int32_t* labels, const int32_t* exclude_label, std::vector<float>* distances,
                           std::vector<int64_t>* ids) {
  const std::string context = "exact search";
  if (dim <= 0) return absl::InvalidArgumentError(context + ": dim must be positive");
  if (k < 1 || k > VectorIndex::kMaxK) {
    return absl::InvalidArgumentError(context + ": k must be in [1, " + std::to_string(VectorIndex::kMaxK) + "], got " +
                                      std::to_string(k));
  }
  if (nq < 0 || n < 0) return absl::InvalidArgumentError(context + ": negative nq or n");
  if ((queries == nullptr && nq > 0) || (vectors == nullptr && n > 0) ||
      (exclude_label != nullptr && labels == nullptr)) {
    return absl::InvalidArgumentError(context + ": null data");
  }
  const size_t kk = static_cast<size_t>(k);
  distances->assign(static_cast<size_t>(nq) * kk, std::numeric_limits<float>::infinity());
  ids->assign(static_cast<size_t>(nq) * kk, -1);
  if (nq == 0 || n == 0) return absl::OkStatus();
  const size_t nn = static_cast<size_t>(n);
  std::vector<float> d2;
  try {
    d2.resize(static_cast<size_t>(nq) * nn);  // [nq, n]
    FaissThreads threads;
    faiss::pairwise_L2sqr(dim, nq, queries, n, vectors, d2.data());
  } catch (...) {
    return CurrentExceptionToStatus(absl::StatusCode::kInternal, context);
  }
  const int64_t take = std::min<int64_t>(k, n);
  std::vector<int64_t> order(nn);
  for (int64_t q = 0; q < nq; ++q) {
    float* row = d2.data() + static_cast<size_t>(q) * nn;
    for (size_t i = 0; i < nn; ++i) {
      if (exclude_label != nullptr && labels[i] == exclude_label[q]) {
        row[i] = std::numeric_limits<float>::infinity();
      } else if (row[i] < 0) {
        row[i] = 0;  // rounding of |q|^2 + |x|^2 - 2 q.x
      }
    }
    for (size_t i = 0; i < nn; ++i) order[i] = static_cast<int64_t>(i);
    std::partial_sort(order.begin(), order.begin() + take, order.end(),
                      [row](int64_t a, int64_t b) { return row[a] < row[b] || (row[a] == row[b] && a < b); });
    for (int64_t j = 0; j < take; ++j) {
      const float d = row[order[static_cast<size_t>(j)]];
      if (!std::isfinite(d)) break;
      (*distances)[static_cast<size_t>(q) * kk + static_cast<size_t>(j)] = d;
      (*ids)[static_cast<size_t>(q) * kk + static_cast<size_t>(j)] = order[static_cast<size_t>(j)];
    }
  }
  return absl::OkStatus();
}

double RecallAtK(const std::vector<int64_t>& approx, const std::vector<int64_t>& exact, int64_t nq, int k) {
  if (nq < 0 || k <= 0) return std::nan("");
  const size_t need = static_cast<size_t>(nq) * static_cast<size_t>(k);
  if (approx.size() < need || exact.size() < need) return std::nan("");
  double sum = 0;
  int64_t counted = 0;
  std::vector<int64_t> row;
  for (int64_t q = 0; q < nq; ++q) {
    const size_t base = static_cast<size_t>(q) * static_cast<size_t>(k);
    row.assign(approx.begin() + base, approx.begin() + base + k);
    std::sort(row.begin(), row.end());
    int found = 0, valid = 0;
    for (int j = 0; j < k; ++j) {
      const int64_t id = exact[base + j];
      if (id < 0) continue;
      ++valid;
      if (std::binary_search(row.begin(), row.end(), id)) ++found;
    }
    if (valid == 0) continue;
    sum += static_cast<double>(found) / valid;
    ++counted;
  }
  return counted == 0 ? 0.0 : sum / counted;
}

}  // namespace rag::retriever

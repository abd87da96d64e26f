// How the retriever calls FAISS (retriever/vector_index*.cc,
// retriever/exact_search.cc): with every core (or one, among concurrent calls), with FAISS's exceptions
// turned into a Status (a call cancelled through VectorIndex::CancelScope
// into CANCELLED), and what it looks up in a FAISS index's structure.
#pragma once

#include <omp.h>

#include <atomic>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "common/call_share.h"

namespace faiss {
struct Index;
}  // namespace faiss

namespace rag::retriever::internal {

// nlist of the IVF inside `index` (through pre-transforms and refines), 0
// when it is not an IVF.
int64_t NlistOf(const faiss::Index* index);

// The index inside a pre-transform (OPQ, PCA) or a refine wrapper.
faiss::Index* CoreOf(faiss::Index* index);

// FAISS parallelizes with OpenMP, whose thread count belongs to the calling
// thread: LibTorch's set_num_threads (lm/runtime.h) sets it, to 1 under the
// pthreads OpenBLAS, which cost kNN-LM scoring half its speed. FAISS's
// parallel loops are coarse (a query or an inverted list each), so it gets
// every core back for the call, or one while it serves one of several
// concurrent server calls (common/call_share.h).
class FaissThreads {
 public:
  FaissThreads() : saved_(omp_get_max_threads()) { omp_set_num_threads(ThreadsNow(omp_get_num_procs())); }
  ~FaissThreads() { omp_set_num_threads(saved_); }
  FaissThreads(const FaissThreads&) = delete;
  FaissThreads& operator=(const FaissThreads&) = delete;

 private:
  int saved_;
};

// The cancel flag of the calling thread's VectorIndex::CancelScope, if any
// (the scope sets and restores it; FAISS's interrupt hook reads it).
extern thread_local const std::atomic<bool>* t_cancel;

// Converts the exception in flight (call only inside a catch block) to a
// Status: FAISS's own errors get `faiss_code` (CANCELLED when the thread's
// cancel flag is set), allocation failures ResourceExhausted, anything else
// Internal.
absl::Status CurrentExceptionToStatus(absl::StatusCode faiss_code, const std::string& context);

}  // namespace rag::retriever::internal

// How a server's concurrent calls share the cores. A call's LibTorch,
// OpenBLAS (the OpenMP build) and FAISS loops each open an OpenMP team on
// the calling thread, and a gRPC server serves each call on its own handler
// thread: N calls at C threads each put N x C threads on C cores, whose idle
// members spin on the cores the others need (on the OpenMP OpenBLAS, 32
// clients got 3.6 calls/s, and 111.8 with one thread per call:
// bench/bench_blas_load.py). So while more than one call computes, each runs
// on one thread; a call alone keeps every thread it was given. In-process
// use (no call scope) is never limited.
#pragma once

#include <atomic>

namespace rag {

namespace internal {
inline std::atomic<int> computing_calls{0};
inline thread_local bool in_call = false;
}  // namespace internal

// Marks the calling thread as serving one call until destroyed. Nesting on
// one thread counts once.
class ScopedCall {
 public:
  ScopedCall() : outer_(internal::in_call) {
    if (!outer_) internal::computing_calls.fetch_add(1, std::memory_order_relaxed);
    internal::in_call = true;
  }
  ~ScopedCall() {
    internal::in_call = outer_;
    if (!outer_) internal::computing_calls.fetch_sub(1, std::memory_order_relaxed);
  }
  ScopedCall(const ScopedCall&) = delete;
  ScopedCall& operator=(const ScopedCall&) = delete;

 private:
  bool outer_;
};

// The threads a parallel loop on this thread may use out of `threads`: 1
// while this thread serves a call and another call computes too.
inline int ThreadsNow(int threads) {
  if (internal::in_call && internal::computing_calls.load(std::memory_order_relaxed) > 1) return 1;
  return threads;
}

}  // namespace rag

// Process-wide settings for LibTorch work on CPU. Call once from main()
// before any tensor work; not thread-safe.
#pragma once

#include <string>

#include "common/call_share.h"

namespace rag::lm {

// Sets LibTorch's intra-op threads (0 = DefaultThreads()) and keeps large
// freed blocks in the malloc heap: by default glibc returns every big
// tensor's memory to the OS and page-faults it back in on the next step,
// which cost a third of the training throughput here (bench_trainer).
void ConfigureRuntime(int threads);

// How the OpenBLAS behind libblas.so.3 (Debian's alternatives, or
// LD_LIBRARY_PATH) runs its threads: "pthread", "openmp", "sequential", or
// "unknown" when the loaded BLAS is not OpenBLAS.
std::string BlasThreading();

// LibTorch's intra-op threads when none are asked for, by BLAS build:
//  - OpenMP OpenBLAS (libopenblas0-openmp, which scripts/setup.sh selects):
//    every core, or OMP_NUM_THREADS when it is set. OpenBLAS then takes its
//    thread count from the calling thread's OpenMP setting, and LibTorch,
//    OpenBLAS and FAISS share libgomp's one pool (bench/bench_blas_pool.py
//    measures the builds against each other);
//  - pthread OpenBLAS (libopenblas0-pthread: RAG_BLAS=pthread
//    scripts/setup.sh, or LD_LIBRARY_PATH for one process): 1. The matrix
//    products, where the time goes, run in OpenBLAS's own pool, which
//    already uses every core; an OpenMP pool as large again spins on the
//    same cores between regions (on 2 cores, 2 threads scored a validation
//    split 36% slower than 1: 61.0 s vs 44.9 s).
int DefaultThreads();

// Under the OpenMP OpenBLAS every LibTorch op opens an OpenMP team over
// every core, and libgomp's idle team members spin before they sleep (its
// default): two processes side by side then spin on each other's cores
// (retro_probes_study_test trains two seeds at once: 601.8 s, against 55.3 s
// with OMP_WAIT_POLICY=passive and 47.7 s on the pthreads build;
// bench/bench_blas_procs.py). libgomp
// reads the policy only when it loads, so this starts the program again
// (execv of /proc/self/exe, same arguments) with OMP_WAIT_POLICY=passive
// when the OpenMP build is loaded and neither OMP_WAIT_POLICY nor
// GOMP_SPINCOUNT is set. Otherwise, or if the exec fails, it returns. Call
// it first in main(); a library's host process (Python) sets the variable
// itself.
void RestartWithPassiveOpenMP(char** argv);

// OMP_WAIT_POLICY as this process started with it ("" when unset).
std::string OpenMPWaitPolicy();

// One server call on the calling thread (common/call_share.h): while another
// call computes too, this thread's LibTorch and OpenBLAS (OpenMP build) loops
// run on one thread; alone, on the process's count (ConfigureRuntime).
// Restores the thread's count when destroyed.
class CallThreads {
 public:
  CallThreads();
  ~CallThreads();
  CallThreads(const CallThreads&) = delete;
  CallThreads& operator=(const CallThreads&) = delete;

 private:
  ScopedCall call_;
  int saved_;
};

}  // namespace rag::lm

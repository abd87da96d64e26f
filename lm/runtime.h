// Process-wide settings for LibTorch work on CPU. Call once from main()
// before any tensor work; not thread-safe.
#pragma once

#include <string>

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
//  - pthread OpenBLAS (libopenblas0-pthread): 1. The matrix products, where
//    the time goes, run in OpenBLAS's own pool, which already uses every
//    core; an OpenMP pool as large again spins on the same cores between
//    regions (on 2 cores, 2 threads scored a validation split 36% slower
//    than 1: 61.0 s vs 44.9 s);
//  - OpenMP OpenBLAS (libopenblas0-openmp: RAG_BLAS=openmp scripts/setup.sh,
//    or LD_LIBRARY_PATH for one process): every core, or OMP_NUM_THREADS
//    when it is set. OpenBLAS then takes its
//    thread count from the calling thread's OpenMP setting, and LibTorch,
//    OpenBLAS and FAISS share libgomp's one pool (bench/bench_blas_pool.py
//    measures the two builds against each other).
int DefaultThreads();

}  // namespace rag::lm

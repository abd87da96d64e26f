// Process-wide settings for LibTorch work on CPU. Call once from main()
// before any tensor work; not thread-safe.
#pragma once

namespace rag::lm {

// Sets LibTorch's intra-op threads (0 = kDefaultThreads) and keeps large
// freed blocks in the malloc heap: by default glibc returns every big
// tensor's memory to the OS and page-faults it back in on the next step,
// which cost a third of the training throughput here (bench_trainer).
void ConfigureRuntime(int threads);

// One OpenMP thread for LibTorch's own kernels: the matrix products, where
// the time goes, run in OpenBLAS's pthreads pool, which already uses every
// core. An OpenMP pool as large again spins on the same cores between
// regions: on 2 cores, 2 threads scored a validation split 36% slower than
// 1 (61.0 s vs 44.9 s), a trainer step 3% slower, and a short probe
// sentence 2.5x slower.
inline constexpr int kDefaultThreads = 1;

}  // namespace rag::lm

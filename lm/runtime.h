// Process-wide settings for LibTorch work on CPU. Call once from main()
// before any tensor work; not thread-safe.
#pragma once

namespace rag::lm {

// Sets LibTorch's intra-op threads (0 = one per core) and keeps large freed
// blocks in the malloc heap: by default glibc returns every big tensor's
// memory to the OS and page-faults it back in on the next step, which cost
// a third of the training throughput here (bench_trainer).
void ConfigureRuntime(int threads);

}  // namespace rag::lm

#include "lm/runtime.h"

#include <dlfcn.h>
#include <malloc.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdlib>
#include <thread>

namespace rag::lm {

void ConfigureRuntime(int threads) {
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  torch::set_num_threads(threads > 0 ? threads : DefaultThreads());
}

std::string BlasThreading() {
  // OpenBLAS's own query, looked up rather than linked: LibTorch and FAISS
  // reach BLAS through libblas.so.3, whichever build that is.
  using GetParallel = int (*)();
  auto get = reinterpret_cast<GetParallel>(dlsym(RTLD_DEFAULT, "openblas_get_parallel"));
  if (get == nullptr) return "unknown";
  switch (get()) {
    case 0:
      return "sequential";
    case 1:
      return "pthread";
    case 2:
      return "openmp";
    default:
      return "unknown";
  }
}

int DefaultThreads() {
  if (BlasThreading() != "openmp") return 1;
  // A launcher that sets OMP_NUM_THREADS (one rank per core) is obeyed.
  if (const char* env = std::getenv("OMP_NUM_THREADS")) {
    const int n = std::atoi(env);
    if (n > 0) return n;
  }
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

}  // namespace rag::lm

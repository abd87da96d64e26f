#include "lm/runtime.h"

#include <dlfcn.h>
#include <malloc.h>
#include <omp.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
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

void RestartWithPassiveOpenMP(char** argv) {
  if (BlasThreading() != "openmp") return;
  if (std::getenv("OMP_WAIT_POLICY") != nullptr || std::getenv("GOMP_SPINCOUNT") != nullptr) return;
  setenv("OMP_WAIT_POLICY", "passive", 1);
  execv("/proc/self/exe", argv);
  std::fprintf(stderr, "warning: could not restart with OMP_WAIT_POLICY=passive (%s); idle OpenMP threads spin\n",
               std::strerror(errno));
}

std::string OpenMPWaitPolicy() {
  const char* policy = std::getenv("OMP_WAIT_POLICY");
  return policy != nullptr ? policy : "";
}

// LibTorch sets a thread's OpenMP count to the process's on the thread's
// first parallel call (at::internal::lazy_init_num_threads), which would undo
// a count set before it: get_num_threads runs that first.
CallThreads::CallThreads() : saved_(torch::get_num_threads()) { omp_set_num_threads(ThreadsNow(saved_)); }

CallThreads::~CallThreads() { omp_set_num_threads(saved_); }

}  // namespace rag::lm

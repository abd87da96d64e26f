// LibTorch on Debian links libblas.so.3, which falls back to the reference
// BLAS (20x slower, platform-notes.md) unless OpenBLAS is installed and
// selected. This fails loudly when that happens, and checks that the
// runtime's thread count follows the OpenBLAS build really loaded
// (lm/runtime.h). ctest runs it once per installed build (LD_LIBRARY_PATH,
// RAG_EXPECT_BLAS names the build the run must see).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>

#include "lm/runtime.h"

namespace {

// The BLAS libraries this process mapped, one path per line.
std::string MappedBlas() {
  auto a = torch::randn({64, 64});
  (void)torch::mm(a, a);  // make sure the BLAS library is in use
  std::ifstream maps("/proc/self/maps");
  std::string line, out;
  while (std::getline(maps, line)) {
    if (line.find("blas") != std::string::npos) out += line.substr(line.rfind(' ') + 1) + "\n";
  }
  return out;
}

TEST(BlasTest, OpenBlasIsLoadedNotTheReferenceBlas) {
  const std::string mapped = MappedBlas();
  EXPECT_NE(mapped.find("openblas"), std::string::npos)
      << "libblas.so.3 is not OpenBLAS; run scripts/setup.sh (installs libopenblas0-openmp).\n"
      << "BLAS libraries mapped:\n"
      << mapped;
  // LibTorch maps libopenblas.so.0 as well, so OpenBLAS shows up even when
  // libblas.so.3 is the reference build: that one must be absent.
  EXPECT_EQ(mapped.find("/blas/libblas.so"), std::string::npos) << "the reference BLAS is mapped:\n" << mapped;
}

TEST(BlasTest, ThreadingIsTheMappedBuilds) {
  const std::string mapped = MappedBlas();
  const std::string threading = rag::lm::BlasThreading();
  if (mapped.find("/openblas-pthread/") != std::string::npos) {
    EXPECT_EQ(threading, "pthread") << mapped;
  } else if (mapped.find("/openblas-openmp/") != std::string::npos) {
    EXPECT_EQ(threading, "openmp") << mapped;
  } else {
    ADD_FAILURE() << "neither Debian OpenBLAS build is mapped:\n" << mapped;
  }
  if (const char* expect = std::getenv("RAG_EXPECT_BLAS")) {
    EXPECT_EQ(threading, expect) << mapped;
  }
}

TEST(BlasTest, DefaultThreadsFollowTheBuild) {
  const bool openmp = rag::lm::BlasThreading() == "openmp";
  const int cores = static_cast<int>(std::thread::hardware_concurrency());
  unsetenv("OMP_NUM_THREADS");
  EXPECT_EQ(rag::lm::DefaultThreads(), openmp ? cores : 1);
  rag::lm::ConfigureRuntime(0);
  EXPECT_EQ(torch::get_num_threads(), openmp ? cores : 1);
  rag::lm::ConfigureRuntime(3);
  EXPECT_EQ(torch::get_num_threads(), 3);
  // A launcher's one-thread-per-rank setting wins under the OpenMP build.
  setenv("OMP_NUM_THREADS", "1", 1);
  EXPECT_EQ(rag::lm::DefaultThreads(), 1);
  setenv("OMP_NUM_THREADS", "5", 1);
  EXPECT_EQ(rag::lm::DefaultThreads(), openmp ? 5 : 1);
  unsetenv("OMP_NUM_THREADS");
}

}  // namespace

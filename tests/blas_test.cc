// LibTorch on Debian links libblas.so.3, which falls back to the reference
// BLAS (20x slower, platform-notes.md) unless OpenBLAS is installed and
// selected. This fails loudly when that happens.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>
#include <string>

namespace {

TEST(BlasTest, OpenBlasIsLoadedNotTheReferenceBlas) {
  auto a = torch::randn({64, 64});
  (void)torch::mm(a, a);  // make sure the BLAS library is in use
  std::ifstream maps("/proc/self/maps");
  std::string line, blas_lines;
  bool openblas = false;
  while (std::getline(maps, line)) {
    if (line.find("blas") != std::string::npos) {
      blas_lines += line.substr(line.rfind(' ') + 1) + "\n";
      if (line.find("openblas") != std::string::npos) openblas = true;
    }
  }
  EXPECT_TRUE(openblas) << "libblas.so.3 is not OpenBLAS; run scripts/setup.sh (installs libopenblas0-pthread).\n"
                        << "BLAS libraries mapped:\n" << blas_lines;
}

}  // namespace

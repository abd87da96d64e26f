#include "lm/runtime.h"

#include <malloc.h>
#include <torch/torch.h>


namespace rag::lm {

void ConfigureRuntime(int threads) {
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  torch::set_num_threads(threads > 0 ? threads : kDefaultThreads);
}

}  // namespace rag::lm

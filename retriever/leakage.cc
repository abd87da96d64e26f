#include "retriever/leakage.h"

#include <algorithm>
#include <unordered_map>

namespace rag::retriever {

bool SharesTokenRun(const lm::TokenId* a, int64_t na, const lm::TokenId* b, int64_t nb, int64_t run) {
  if (run < 1 || na < run || nb < run) return false;
  // Rolling polynomial hash of each window of `run` tokens (mod 2^64).
  constexpr uint64_t kBase = 1000003;
  uint64_t top = 1;  // kBase^(run - 1)
  for (int64_t i = 1; i < run; ++i) top *= kBase;
  auto hashes = [&](const lm::TokenId* s, int64_t n) {
    std::vector<uint64_t> out;
    out.reserve(static_cast<size_t>(n - run + 1));
    uint64_t h = 0;
    for (int64_t i = 0; i < n; ++i) {
      if (i >= run) h -= top * static_cast<uint64_t>(s[i - run]);
      h = h * kBase + static_cast<uint64_t>(s[i]);
      if (i >= run - 1) out.push_back(h);
    }
    return out;
  };
  std::unordered_multimap<uint64_t, int64_t> starts;  // hash -> start in a
  const std::vector<uint64_t> ha = hashes(a, na);
  for (size_t i = 0; i < ha.size(); ++i) starts.emplace(ha[i], static_cast<int64_t>(i));
  const std::vector<uint64_t> hb = hashes(b, nb);
  for (size_t j = 0; j < hb.size(); ++j) {
    auto [lo, hi] = starts.equal_range(hb[j]);
    for (auto it = lo; it != hi; ++it) {
      if (std::equal(a + it->second, a + it->second + run, b + j)) return true;
    }
  }
  return false;
}

int64_t LongestCommonRun(const lm::TokenId* a, int64_t na, const lm::TokenId* b, int64_t nb) {
  // ending[j]: the run shared by a[..i] and b[..j] that ends at both.
  std::vector<int64_t> ending(static_cast<size_t>(nb) + 1, 0);
  int64_t best = 0;
  for (int64_t i = 0; i < na; ++i) {
    for (int64_t j = nb; j >= 1; --j) {
      ending[j] = a[i] == b[j - 1] ? ending[j - 1] + 1 : 0;
      best = std::max(best, ending[j]);
    }
  }
  return best;
}

bool SharesTokenRun(const std::vector<lm::TokenId>& a, const std::vector<lm::TokenId>& b, int64_t run) {
  return SharesTokenRun(a.data(), static_cast<int64_t>(a.size()), b.data(), static_cast<int64_t>(b.size()), run);
}

}  // namespace rag::retriever

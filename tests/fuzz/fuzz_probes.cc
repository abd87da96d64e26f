// libFuzzer target: the LAMA probe reader on arbitrary JSONL: probes or an
// error naming the source and line, never a crash; every parsed probe has a sentence with
// exactly one [MASK] and its object among its candidates.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "eval/probes.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  auto probes = rag::eval::ParseProbes(input, "fuzz");
  if (!probes.ok()) {
    // Every error names the source (and, for a bad line, "fuzz:LINE:").
    if (probes.status().message().rfind("fuzz:", 0) != 0) std::abort();
    return 0;
  }
  for (const auto& p : *probes) {
    if (p.sentences.empty()) std::abort();
    for (const auto& s : p.sentences) {
      const size_t at = s.find(rag::eval::kMask);
      if (at == std::string::npos || s.find(rag::eval::kMask, at + 1) != std::string::npos) std::abort();
    }
    if (std::find(p.candidates.begin(), p.candidates.end(), p.object) == p.candidates.end()) std::abort();
  }
  return 0;
}

// One field of this process's /proc/self/status, in bytes, for the benches'
// memory figures: "VmRSS:" (resident set), "RssAnon:" (heap: weights, a
// loaded FAISS index), "RssFile:" (mapped file pages, reclaimable page cache).
// 0 when the field is absent. Header-only; thread-safe.
#pragma once

#include <fstream>
#include <string>

namespace rag::bench {

inline double ProcStatusBytes(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field, 0) == 0) return 1024.0 * std::stod(line.substr(field.size()));
  }
  return 0;
}

}  // namespace rag::bench

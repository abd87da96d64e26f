// What every bench's JSON result file records besides its own figures
// (issue 24): the machine (cores, CPU model, BLAS, LibTorch), the git commit
// it was built from, and per-arm statistics over rounds (median, min, max).
// docs/results.md tables are generated from these files by
// bench/results_tables.py. Header-only; the helpers read /proc and run git,
// so call them once per run, not per round.
#pragma once

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

namespace rag::bench {

inline double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// {"rounds": [...], "median": m, "min": lo, "max": hi}: the raw figures of
// every round next to their summary, so a reader can recompute either.
inline nlohmann::json RoundsJson(const std::vector<double>& v) {
  nlohmann::json j = {{"rounds", v}, {"median", Median(v)}};
  if (!v.empty()) {
    j["min"] = *std::min_element(v.begin(), v.end());
    j["max"] = *std::max_element(v.begin(), v.end());
  }
  return j;
}

// First line of a command's stdout, "" when it fails.
inline std::string CommandLine(const std::string& command) {
  std::string out;
  if (FILE* f = popen((command + " 2>/dev/null").c_str(), "r")) {
    char buf[512];
    if (fgets(buf, sizeof(buf), f) != nullptr) out = buf;
    if (pclose(f) != 0) out.clear();
  }
  while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
  return out;
}

inline std::string CpuModel() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(' ', colon + 1));
    }
  }
  return "";
}

// The BLAS library this process mapped (its real path, which names the
// build: openblas-pthread or openblas-openmp), "none" before any is loaded.
// LD_LIBRARY_PATH can override Debian's alternatives, so the symlink alone
// does not say which one runs.
inline std::string LoadedBlas() {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    const size_t slash = line.find('/');
    if (slash == std::string::npos) continue;
    const std::string path = line.substr(slash);
    const std::string name = std::filesystem::path(path).filename().string();
    if (name.rfind("libopenblas", 0) == 0 || name.rfind("libblas", 0) == 0) return path;
  }
  return "none";
}

// The machine and the build: cores, CPU model, the BLAS behind libblas.so.3
// (Debian's alternatives) and the one really mapped, the git commit of the
// working tree (with "-dirty" when tracked files differ from it).
inline nlohmann::json MachineJson() {
  std::error_code ec;
  const auto blas = std::filesystem::canonical("/usr/lib/x86_64-linux-gnu/libblas.so.3", ec);
  std::string commit = CommandLine("git rev-parse HEAD");
  if (!commit.empty() && !CommandLine("git status --porcelain --untracked-files=no | head -1").empty()) {
    commit += "-dirty";
  }
  return {{"cores", std::thread::hardware_concurrency()},
          {"cpu", CpuModel()},
          {"blas", ec ? std::string("unknown") : blas.string()},
          {"blas_loaded", LoadedBlas()},
          {"kernel", CommandLine("uname -r")},
          {"git_commit", commit}};
}

// Writes `j` to `path` (pretty-printed); false when it cannot.
inline bool WriteJson(const std::string& path, const nlohmann::json& j) {
  std::ofstream out(path);
  out << j.dump(2) << "\n";
  return static_cast<bool>(out);
}

}  // namespace rag::bench

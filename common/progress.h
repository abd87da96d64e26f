// Progress reporting for long jobs: one line on stderr, redrawn at most a few
// times a second, with count, rate and ETA. Not thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace rag {

class Progress {
 public:
  // `total` may be 0 when unknown (then no ETA). `unit` names what is
  // counted ("tokens", "steps", "docs").
  Progress(std::string label, int64_t total, std::string unit);
  ~Progress();

  // Sets the absolute count done; `extra` is appended to the line (e.g. "loss 3.21").
  void Update(int64_t done, const std::string& extra = "");
  // Prints the final line and a newline.
  void Finish(const std::string& extra = "");

  double ElapsedSeconds() const;

 private:
  void Print(bool final_line, const std::string& extra);

  std::string label_;
  int64_t total_;
  std::string unit_;
  int64_t done_ = 0;
  int64_t start_done_ = -1;
  bool finished_ = false;
  bool tty_;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_print_;
};

// "1.2k", "3.4M" style.
std::string HumanCount(double x);
// "1h02m", "3m05s", "12s".
std::string HumanDuration(double seconds);

}  // namespace rag

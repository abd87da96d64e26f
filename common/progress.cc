#include "common/progress.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>

namespace rag {

std::string HumanCount(double x) {
  char buf[32];
  if (x >= 1e9) std::snprintf(buf, sizeof(buf), "%.2fG", x / 1e9);
  else if (x >= 1e6) std::snprintf(buf, sizeof(buf), "%.2fM", x / 1e6);
  else if (x >= 1e4) std::snprintf(buf, sizeof(buf), "%.1fk", x / 1e3);
  else if (x >= 100) std::snprintf(buf, sizeof(buf), "%.0f", x);
  else if (x == std::floor(x)) std::snprintf(buf, sizeof(buf), "%.0f", x);
  else std::snprintf(buf, sizeof(buf), "%.2f", x);
  return buf;
}

std::string HumanDuration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  long s = std::lround(seconds);
  char buf[32];
  if (s >= 3600) std::snprintf(buf, sizeof(buf), "%ldh%02ldm", s / 3600, (s % 3600) / 60);
  else if (s >= 60) std::snprintf(buf, sizeof(buf), "%ldm%02lds", s / 60, s % 60);
  else std::snprintf(buf, sizeof(buf), "%lds", s);
  return buf;
}

Progress::Progress(std::string label, int64_t total, std::string unit)
    : label_(std::move(label)),
      total_(total),
      unit_(std::move(unit)),
      tty_(::isatty(STDERR_FILENO) != 0),
      start_(std::chrono::steady_clock::now()),
      last_print_(start_) {}

Progress::~Progress() {
  if (!finished_ && done_ > 0) Finish();
}

double Progress::ElapsedSeconds() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void Progress::Update(int64_t done, const std::string& extra) {
  if (start_done_ < 0) start_done_ = done;  // a resumed job starts part-way
  done_ = done;
  auto now = std::chrono::steady_clock::now();
  // Redraw a terminal line 4x/s; a log file gets a line every 5 s.
  double min_gap = tty_ ? 0.25 : 5.0;
  if (std::chrono::duration<double>(now - last_print_).count() < min_gap) return;
  last_print_ = now;
  Print(false, extra);
}

void Progress::Finish(const std::string& extra) {
  if (finished_) return;
  finished_ = true;
  Print(true, extra);
}

void Progress::Print(bool final_line, const std::string& extra) {
  double elapsed = ElapsedSeconds();
  double rate = elapsed > 0 ? static_cast<double>(done_ - std::max<int64_t>(start_done_, 0)) / elapsed : 0.0;
  std::string line = label_ + ": " + HumanCount(static_cast<double>(done_));
  if (total_ > 0) {
    char pct[16];
    std::snprintf(pct, sizeof(pct), " (%.1f%%)", 100.0 * done_ / total_);
    line += "/" + HumanCount(static_cast<double>(total_)) + " " + unit_ + pct;
  } else {
    line += " " + unit_;
  }
  line += ", " + HumanCount(rate) + " " + unit_ + "/s";
  if (final_line) {
    line += ", took " + HumanDuration(elapsed);
  } else if (total_ > 0 && rate > 0) {
    line += ", ETA " + HumanDuration(static_cast<double>(total_ - done_) / rate);
  }
  if (!extra.empty()) line += ", " + extra;
  if (tty_) std::fprintf(stderr, "\r\033[K%s%s", line.c_str(), final_line ? "\n" : "");
  else std::fprintf(stderr, "%s\n", line.c_str());
  std::fflush(stderr);
}

}  // namespace rag

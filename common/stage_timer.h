// Where a request's time goes, by stage, for the per-stage timings every
// response carries. The engine installs a StageRecorder for the length of a
// call on the thread that serves it; the code of each stage (the embedder,
// FAISS, the stores, the LM forward, the fusion) opens a StageTimer. Timers
// nest and are exclusive: an inner timer pauses the outer one, so a kNN-LM
// search inside a generation step counts as search, not as forward, and the
// stages add up to at most the call's wall time. Without a recorder (the
// builder, benches, in-process library use) a timer costs two clock reads.
// Per thread: work another thread does on the call's behalf counts in the
// stage of whoever waits for it (the embedding batcher's forward in embed).
#pragma once

#include <array>
#include <chrono>
#include <cstdint>

namespace rag {

// kOther is time inside a stage that belongs to none (streaming a token to
// the client from inside a generation step): taken out, never reported.
enum class Stage : int { kEmbed = 0, kSearch, kDatastore, kForward, kFusion, kOther };
inline constexpr int kNumStages = 6;

// Microseconds per stage, indexed by Stage.
using StageMicros = std::array<int64_t, kNumStages>;

class StageTimer;

namespace internal {
struct StageSink {
  std::array<int64_t, kNumStages> nanos{};  // summed in ns: a stage may run in many sub-microsecond pieces
};
inline thread_local StageSink* current_stage_sink = nullptr;
inline thread_local StageTimer* current_stage_timer = nullptr;
}  // namespace internal

// Collects this thread's stage times until destroyed (nesting restores the
// outer recorder).
class StageRecorder {
 public:
  StageRecorder() : previous_(internal::current_stage_sink), start_(std::chrono::steady_clock::now()) {
    internal::current_stage_sink = &sink_;
  }
  ~StageRecorder() { internal::current_stage_sink = previous_; }
  StageRecorder(const StageRecorder&) = delete;
  StageRecorder& operator=(const StageRecorder&) = delete;

  StageMicros micros() const {
    StageMicros us{};
    for (int i = 0; i < kNumStages; ++i) us[i] = sink_.nanos[i] / 1000;
    return us;
  }
  int64_t total_micros() const {
    return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  internal::StageSink sink_;
  internal::StageSink* previous_;
  std::chrono::steady_clock::time_point start_;
};

// Adds the time until destroyed, less that of timers opened inside it, to
// `stage` of this thread's recorder (if any).
class StageTimer {
 public:
  explicit StageTimer(Stage stage)
      : stage_(stage), outer_(internal::current_stage_timer), start_(std::chrono::steady_clock::now()) {
    if (outer_ != nullptr) outer_->Stop(start_);
    internal::current_stage_timer = this;
  }
  ~StageTimer() {
    const auto now = std::chrono::steady_clock::now();
    Stop(now);
    internal::current_stage_timer = outer_;
    if (outer_ != nullptr) outer_->start_ = now;
  }
  StageTimer(const StageTimer&) = delete;
  StageTimer& operator=(const StageTimer&) = delete;

 private:
  void Stop(std::chrono::steady_clock::time_point now) {
    if (internal::current_stage_sink != nullptr) {
      internal::current_stage_sink->nanos[static_cast<int>(stage_)] +=
          std::chrono::duration_cast<std::chrono::nanoseconds>(now - start_).count();
    }
    start_ = now;
  }

  Stage stage_;
  StageTimer* outer_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace rag

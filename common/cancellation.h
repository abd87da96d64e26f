// Cooperative cancellation of the request a thread is serving. The gRPC
// handler installs a check (client gone or deadline passed) for the length
// of the call; long loops (scoring windows, generation steps) ask
// Cancelled() between units of work and stop early, so a request nobody
// waits for no longer keeps a core busy. Per thread: a handler runs its
// engine call on its own thread.
#pragma once

#include <chrono>
#include <functional>
#include <optional>
#include <utility>

namespace rag {

namespace internal {
inline thread_local const std::function<bool()>* current_cancellation = nullptr;
inline thread_local std::optional<std::chrono::system_clock::time_point> current_deadline;
}  // namespace internal

// The deadline of the call this thread serves, if it has one: what a
// sharded front gives the calls it makes to its shards on the call's behalf.
inline std::optional<std::chrono::system_clock::time_point> CurrentDeadline() { return internal::current_deadline; }

// Installs `deadline` as this thread's until destroyed (nesting restores the
// outer one).
class ScopedDeadline {
 public:
  explicit ScopedDeadline(std::optional<std::chrono::system_clock::time_point> deadline)
      : previous_(internal::current_deadline) {
    internal::current_deadline = deadline;
  }
  ~ScopedDeadline() { internal::current_deadline = previous_; }
  ScopedDeadline(const ScopedDeadline&) = delete;
  ScopedDeadline& operator=(const ScopedDeadline&) = delete;

 private:
  std::optional<std::chrono::system_clock::time_point> previous_;
};

// True when the call this thread serves was cancelled; false when none is
// installed (in-process use).
inline bool Cancelled() {
  const auto* check = internal::current_cancellation;
  return check != nullptr && (*check)();
}

// Installs `check` as this thread's cancellation test until destroyed
// (nesting restores the outer one).
class ScopedCancellation {
 public:
  explicit ScopedCancellation(std::function<bool()> check)
      : check_(std::move(check)), previous_(internal::current_cancellation) {
    internal::current_cancellation = &check_;
  }
  ~ScopedCancellation() { internal::current_cancellation = previous_; }
  ScopedCancellation(const ScopedCancellation&) = delete;
  ScopedCancellation& operator=(const ScopedCancellation&) = delete;

 private:
  std::function<bool()> check_;
  const std::function<bool()>* previous_;
};

}  // namespace rag

// StageTimer: nested timers are exclusive, and nothing is recorded without
// a recorder on the thread.
#include "common/stage_timer.h"

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

namespace rag {
namespace {

void Sleep(int ms) { std::this_thread::sleep_for(std::chrono::milliseconds(ms)); }

TEST(StageTimerTest, AnInnerTimerPausesTheOuterOne) {
  const StageRecorder recorder;
  {
    const StageTimer forward(Stage::kForward);
    {
      const StageTimer search(Stage::kSearch);
      Sleep(40);
    }
  }
  const StageMicros us = recorder.micros();
  EXPECT_GE(us[static_cast<int>(Stage::kSearch)], 40000);
  EXPECT_LT(us[static_cast<int>(Stage::kForward)], 20000);  // the 40 ms are search's, not forward's too
  EXPECT_EQ(us[static_cast<int>(Stage::kEmbed)], 0);
  EXPECT_GE(recorder.total_micros(), us[static_cast<int>(Stage::kSearch)] + us[static_cast<int>(Stage::kForward)]);
}

TEST(StageTimerTest, TheOuterTimerResumesAfterTheInnerOne) {
  const StageRecorder recorder;
  {
    const StageTimer forward(Stage::kForward);
    { const StageTimer fusion(Stage::kFusion); }
    Sleep(30);
  }
  EXPECT_GE(recorder.micros()[static_cast<int>(Stage::kForward)], 30000);
}

TEST(StageTimerTest, RecordersAreThreadLocalAndNest) {
  const StageRecorder outer;
  {
    const StageRecorder inner;
    std::thread other([] {
      const StageTimer t(Stage::kEmbed);  // no recorder on this thread: recorded nowhere
      Sleep(20);
    });
    other.join();
    { const StageTimer t(Stage::kDatastore); Sleep(10); }
    EXPECT_EQ(inner.micros()[static_cast<int>(Stage::kEmbed)], 0);
    EXPECT_GE(inner.micros()[static_cast<int>(Stage::kDatastore)], 10000);
  }
  EXPECT_EQ(outer.micros()[static_cast<int>(Stage::kDatastore)], 0);  // the inner recorder took it
  { const StageTimer t(Stage::kDatastore); Sleep(10); }
  EXPECT_GE(outer.micros()[static_cast<int>(Stage::kDatastore)], 10000);  // restored
}

}  // namespace
}  // namespace rag

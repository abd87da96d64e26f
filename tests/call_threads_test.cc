// Concurrent server calls share the cores (common/call_share.h): while two
// calls compute, each thread's LibTorch and OpenBLAS loops (lm::CallThreads)
// and FAISS loops (FaissThreads) run on one thread; a call alone, and
// in-process use, keep every thread. Each call runs on its own std::thread,
// as a gRPC handler does, so LibTorch's per-thread start-up is exercised.
#include <gtest/gtest.h>
#include <omp.h>
#include <torch/torch.h>

#include <future>
#include <thread>

#include "common/call_share.h"
#include "lm/runtime.h"
#include "retriever/internal/faiss_calls.h"

namespace {

using rag::retriever::internal::FaissThreads;

// The size of an OpenMP team this thread opens now.
int TeamSize() {
  int n = 0;
#pragma omp parallel
  {
#pragma omp single
    n = omp_get_num_threads();
  }
  return n;
}

struct Seen {
  int torch_threads = 0;  // LibTorch's count after a tensor op
  int team = 0;           // an OpenMP team opened in the call
  int faiss = 0;          // FAISS's count inside the call
  int after = 0;          // the thread's count once the call ended
};

// One call on a fresh thread, as a gRPC handler serves it.
Seen Call() {
  return std::async(std::launch::async,
                    [] {
                      Seen s;
                      {
                        const rag::lm::CallThreads threads;
                        // A LibTorch op on a new thread sets its OpenMP count once;
                        // the call's count must survive it.
                        (void)torch::randn({256, 256}).mm(torch::randn({256, 256})).sum().item<float>();
                        s.torch_threads = torch::get_num_threads();
                        s.team = TeamSize();
                        const FaissThreads faiss;
                        s.faiss = omp_get_max_threads();
                      }
                      s.after = omp_get_max_threads();
                      return s;
                    })
      .get();
}

class CallThreadsTest : public ::testing::Test {
 protected:
  void SetUp() override { torch::set_num_threads(2); }
};

TEST_F(CallThreadsTest, ACallAloneKeepsEveryThread) {
  const Seen s = Call();
  EXPECT_EQ(s.torch_threads, 2);
  EXPECT_EQ(s.team, 2);
  EXPECT_EQ(s.faiss, omp_get_num_procs());
  EXPECT_EQ(s.after, 2);
}

TEST_F(CallThreadsTest, ConcurrentCallsGetOneThreadEach) {
  std::promise<void> entered, done;
  auto other = std::async(std::launch::async, [&] {
    const rag::ScopedCall call;  // another call computing
    entered.set_value();
    done.get_future().wait();
  });
  entered.get_future().wait();
  const Seen s = Call();
  done.set_value();
  other.get();
  EXPECT_EQ(s.torch_threads, 1);
  EXPECT_EQ(s.team, 1);
  EXPECT_EQ(s.faiss, 1);
  EXPECT_EQ(s.after, 2) << "the thread's count was not restored";
  EXPECT_EQ(rag::internal::computing_calls.load(), 0);
}

TEST_F(CallThreadsTest, InProcessUseIsNeverLimited) {
  const rag::ScopedCall elsewhere;  // a call on this thread ...
  int faiss = 0;
  std::thread([&] {  // ... does not limit a thread that serves none
    const FaissThreads threads;
    faiss = omp_get_max_threads();
  })
      .join();
  EXPECT_EQ(faiss, omp_get_num_procs());
  EXPECT_EQ(rag::ThreadsNow(4), 4) << "one call alone is not limited";
}

TEST_F(CallThreadsTest, NestedScopesCountOnce) {
  const rag::ScopedCall outer;
  const rag::ScopedCall inner;
  EXPECT_EQ(rag::internal::computing_calls.load(), 1);
  EXPECT_EQ(rag::ThreadsNow(4), 4);
}

}  // namespace

// A server's life on loopback: listening but NOT_SERVING while the engine
// loads, SERVING once it is set, and a drain that lets a call in flight
// finish (or cancels it when the grace period is over) while new calls are
// refused. A real gRPC server, client and (tiny, untrained) model.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include "services/client.h"
#include "services/engine.h"
#include "services/server.h"
#include "tests/health_probe.h"
#include "tests/lm_test_util.h"
#include "tests/status_matchers.h"
#include "tests/test_util.h"

namespace rag::services {
namespace {

namespace fs = std::filesystem;

class ServerLifecycleTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto model = testing::MakeTinyLanguageModelFor(testing::MakeCorpus(4, 5, 10), 3);
    RAG_ASSERT_OK(model->Save(ModelDir()));
    EngineOptions o;
    o.model_dir = ModelDir();
    auto engine = Engine::Open(o);
    RAG_ASSERT_OK(engine.status());
    engine_ = std::move(*engine);
  }

  std::string ModelDir() const { return (fs::path(dir_.path()) / "model").string(); }

  testing::TempDir dir_;
  std::unique_ptr<Engine> engine_;  // outlives the servers below
};

TEST_F(ServerLifecycleTest, NotServingUntilTheEngineIsReady) {
  ServerOptions so;
  so.listen = "127.0.0.1:0";
  auto server = Server::Start(nullptr, so);
  RAG_ASSERT_OK(server.status());
  const int port = (*server)->port();
  EXPECT_EQ(testing::HealthCheckReply(port), testing::kHealthNotServing);
  auto client = GrpcBackend::Connect("127.0.0.1:" + std::to_string(port));
  RAG_ASSERT_OK(client.status());
  v1::ScoreRequest score;
  score.set_text("the cat");
  auto early = (*client)->Score(score);
  EXPECT_EQ(early.status().code(), absl::StatusCode::kUnavailable) << early.status();
  EXPECT_NE(early.status().message().find("loading"), std::string::npos) << early.status();

  RAG_ASSERT_OK(engine_->WarmUp());
  (*server)->SetReady(engine_.get());
  EXPECT_EQ(testing::HealthCheckReply(port), testing::kHealthServing);
  RAG_EXPECT_OK((*client)->Score(score).status());
}

// A Score long enough to be in flight when a drain starts: the text is
// doubled until scoring it in-process takes at least `seconds`.
v1::ScoreRequest SlowScore(Engine& engine, double seconds) {
  v1::ScoreRequest score;
  std::string text;
  for (const auto& d : testing::MakeCorpus(4, 5, 10)) text += d.text + " ";
  for (;;) {
    score.set_text(text);
    const auto t0 = std::chrono::steady_clock::now();
    EXPECT_TRUE(engine.Score(score).ok());
    if (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() >= seconds ||
        2 * text.size() > EngineLimits().max_text_bytes) {
      return score;
    }
    text += text;
  }
}

// Drains with a Score in flight: it finishes within the grace period, and
// a call made during the drain is refused.
TEST_F(ServerLifecycleTest, ADrainLetsACallInFlightFinish) {
  const v1::ScoreRequest slow = SlowScore(*engine_, 1.0);
  ServerOptions so;
  so.listen = "127.0.0.1:0";
  auto server = Server::Start(engine_.get(), so);
  RAG_ASSERT_OK(server.status());
  const std::string address = "127.0.0.1:" + std::to_string((*server)->port());
  auto client = GrpcBackend::Connect(address);
  RAG_ASSERT_OK(client.status());

  absl::StatusOr<v1::ScoreResponse> done;
  std::chrono::steady_clock::time_point returned;
  std::thread call([&] {
    done = (*client)->Score(slow);
    returned = std::chrono::steady_clock::now();
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const auto drain_started = std::chrono::steady_clock::now();
  std::thread drain([&] { (*server)->Shutdown(/*grace_seconds=*/60); });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  // New calls are refused while the running one goes on.
  auto fresh = GrpcBackend::Connect(address, /*connect_timeout_s=*/2);
  if (fresh.ok()) {
    v1::ScoreRequest score;
    score.set_text("the cat");
    EXPECT_FALSE((*fresh)->Score(score).ok());
  }
  call.join();
  drain.join();
  RAG_ASSERT_OK(done.status());
  EXPECT_GT(done->tokens(), 1000);
  EXPECT_GT(returned, drain_started) << "the call had finished before the drain began: the test shows nothing";
}

// Past the grace period a call in flight is cancelled, not waited for.
TEST_F(ServerLifecycleTest, ADrainCancelsWhatOutlivesTheGracePeriod) {
  const v1::ScoreRequest slow = SlowScore(*engine_, 2.0);
  ServerOptions so;
  so.listen = "127.0.0.1:0";
  auto server = Server::Start(engine_.get(), so);
  RAG_ASSERT_OK(server.status());
  auto client = GrpcBackend::Connect("127.0.0.1:" + std::to_string((*server)->port()));
  RAG_ASSERT_OK(client.status());
  absl::StatusOr<v1::ScoreResponse> done;
  std::thread call([&] { done = (*client)->Score(slow); });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  (*server)->Shutdown(/*grace_seconds=*/0.2);
  call.join();
  EXPECT_FALSE(done.ok()) << "a call longer than the grace period finished anyway";
}

}  // namespace
}  // namespace rag::services

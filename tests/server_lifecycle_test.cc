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

// A Score on its own thread, in flight when the constructor returns (it
// waits 200 ms); `returned` is when the server's answer came back.
class ScoreInFlight {
 public:
  ScoreInFlight(GrpcBackend& client, v1::ScoreRequest request)
      : thread_([this, &client, request = std::move(request)] {
          result = client.Score(request);
          returned = std::chrono::steady_clock::now();
        }) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  ~ScoreInFlight() { Join(); }
  void Join() {
    if (thread_.joinable()) thread_.join();
  }

  absl::StatusOr<v1::ScoreResponse> result;
  std::chrono::steady_clock::time_point returned;

 private:
  std::thread thread_;  // last: starts once the fields above exist
};

class ServerDrainTest : public ServerLifecycleTest {
 protected:
  // A server over engine_ on a free loopback port, and a client of it.
  void StartServer() {
    ServerOptions so;
    so.listen = "127.0.0.1:0";
    auto server = Server::Start(engine_.get(), so);
    RAG_ASSERT_OK(server.status());
    server_ = std::move(*server);
    address_ = "127.0.0.1:" + std::to_string(server_->port());
    auto client = GrpcBackend::Connect(address_);
    RAG_ASSERT_OK(client.status());
    client_ = std::move(*client);
  }

  std::unique_ptr<Server> server_;
  std::string address_;
  std::unique_ptr<GrpcBackend> client_;
};

// Drains with a Score in flight: it finishes within the grace period, and
// a call made during the drain is refused.
TEST_F(ServerDrainTest, ADrainLetsACallInFlightFinish) {
  const v1::ScoreRequest slow = SlowScore(*engine_, 1.0);
  ASSERT_NO_FATAL_FAILURE(StartServer());
  ScoreInFlight call(*client_, slow);
  const auto drain_started = std::chrono::steady_clock::now();
  std::thread drain([&] { server_->Shutdown(/*grace_seconds=*/60); });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  // New calls are refused while the running one goes on.
  auto fresh = GrpcBackend::Connect(address_, /*connect_timeout_s=*/2);
  if (fresh.ok()) {
    v1::ScoreRequest score;
    score.set_text("the cat");
    EXPECT_FALSE((*fresh)->Score(score).ok());
  }
  call.Join();
  drain.join();
  RAG_ASSERT_OK(call.result.status());
  EXPECT_GT(call.result->tokens(), 1000);
  EXPECT_GT(call.returned, drain_started) << "the call had finished before the drain began: the test shows nothing";
}

// Past the grace period a call in flight is cancelled, not waited for.
TEST_F(ServerDrainTest, ADrainCancelsWhatOutlivesTheGracePeriod) {
  const v1::ScoreRequest slow = SlowScore(*engine_, 2.0);
  ASSERT_NO_FATAL_FAILURE(StartServer());
  ScoreInFlight call(*client_, slow);
  server_->Shutdown(/*grace_seconds=*/0.2);
  call.Join();
  EXPECT_FALSE(call.result.ok()) << "a call longer than the grace period finished anyway";
}

}  // namespace
}  // namespace rag::services

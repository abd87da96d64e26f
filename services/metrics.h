// Prometheus metrics of `rag serve --metrics-listen HOST:PORT` (prometheus-cpp:
// the registry, the exposition format and the HTTP endpoint /metrics are
// the library's). Per rpc and mode: calls by status code, latency
// histograms, seconds per stage (the responses' StageTimings), tokens
// scored and generated, neighbours returned, calls in flight; and the served
// index's and datastore's sizes, documents added, the process's resident
// memory. Names follow Prometheus conventions (rag_ prefix, base units,
// _total counters). Thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "proto/rag.pb.h"

namespace rag::services {

class Engine;

class Metrics {
 public:
  // Serves /metrics on `listen` (host:port; port 0 picks a free one).
  // Unavailable when it cannot bind.
  static absl::StatusOr<std::unique_ptr<Metrics>> Start(const std::string& listen);
  ~Metrics();

  // The bound port.
  int port() const;
  // Sizes read from `engine` at each scrape (null: none).
  void SetEngine(Engine* engine);

  // A call of `rpc` began / ended with gRPC status `code` after `seconds`.
  void CallStarted(const std::string& rpc);
  void CallFinished(const std::string& rpc, const std::string& mode, const std::string& code, double seconds);
  // What a successful call did: its stages (the response's StageTimings)
  // and sizes (neighbours returned, tokens scored or generated, documents
  // added). Other responses add nothing.
  void Succeeded(const std::string& rpc, const std::string& mode, const v1::SearchResponse& r);
  void Succeeded(const std::string& rpc, const std::string& mode, const v1::ScoreResponse& r);
  void Succeeded(const std::string& rpc, const std::string& mode, const v1::NextTokenResponse& r);
  void Succeeded(const std::string& rpc, const std::string& mode, const v1::GenerateResponse& r);
  void Succeeded(const std::string& rpc, const std::string& mode, const v1::AddDocumentsResponse& r);
  template <typename Response>
  void Succeeded(const std::string&, const std::string&, const Response&) {}

 private:
  void RecordStages(const std::string& rpc, const std::string& mode, const v1::StageTimings& timings);

  struct State;
  explicit Metrics(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace rag::services

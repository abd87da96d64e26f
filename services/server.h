// The gRPC server of `rag serve`: the rag.v1 services (Retrieval,
// LanguageModel, Index) answered by an Engine, plus standard health
// checking and server reflection.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "services/engine.h"

namespace grpc {
class Server;
}  // namespace grpc

namespace rag::services {

class Metrics;

struct ServerOptions {
  // host:port to listen on; port 0 picks a free one (see port()). Loopback
  // by default: exposing a server is a deliberate choice. Default: 127.0.0.1:50051
  std::string listen = "127.0.0.1:50051";
  // Log one line per request (rpc, size, status, milliseconds) to stderr.
  // Default: false
  bool log_requests = false;
  // Largest request message accepted, bytes. Default: 64 MiB
  int max_message_bytes = 64 << 20;
  // TLS: PEM certificate chain and private key files; both or neither.
  // Default: none (plaintext)
  std::string tls_cert_file;
  std::string tls_key_file;
  // A file holding the bearer token every rpc of the rag services must carry
  // as `authorization: Bearer <token>` metadata (surrounding whitespace
  // ignored); others get UNAUTHENTICATED. Health checking and reflection
  // stay open: they reveal the schema and the serving state, no data.
  // Default: none (no check)
  std::string auth_token_file;
  // Prometheus metrics of every call (services/metrics.h), not owned; must
  // outlive the server. Default: none
  Metrics* metrics = nullptr;
};

// True when `listen`'s host is a loopback address (127.x.x.x, ::1, localhost).
bool IsLoopback(const std::string& listen);

class Server {
 public:
  // Starts serving `engine` (not owned; must outlive the server). With a
  // null engine the server listens, health says NOT_SERVING and every rag
  // rpc answers UNAVAILABLE until SetReady: the port is open (probes get an
  // answer) while the model and index load and warm up. Unavailable when
  // the address cannot be bound; NotFound / InvalidArgument for a missing or
  // unusable TLS or token file.
  static absl::StatusOr<std::unique_ptr<Server>> Start(Engine* engine, const ServerOptions& options);
  // Answers with `engine` from now on and sets health to SERVING (null: back
  // to NOT_SERVING and UNAVAILABLE).
  void SetReady(Engine* engine);
  ~Server();

  // The bound port (the chosen one when listening on port 0).
  int port() const { return port_; }
  // Drains: health says NOT_SERVING, new calls are refused, running ones
  // finish within `grace_seconds` (then they are cancelled); returns when
  // all are done.
  void Shutdown(double grace_seconds = 5.0);

 private:
  struct Services;
  Server() = default;
  std::unique_ptr<Services> services_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

}  // namespace rag::services

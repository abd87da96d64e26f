// GrpcBackend: the Backend of the `--server ADDR` forms of the commands, a
// thin client of the rag.v1 services.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "services/backend.h"

namespace grpc {
class Channel;
class ClientContext;
}  // namespace grpc

namespace rag::services {

// How a client proves itself to, and checks, a server started with TLS or a
// bearer token (ServerOptions).
struct ClientSecurity {
  std::string auth_token;  // sent as `authorization: Bearer <token>`; "" = none
  bool tls = false;        // TLS instead of plaintext
  std::string tls_ca_pem;  // roots that verify the server; "" = the system's
  // The name the server's certificate must carry, when it is not the host
  // of the address (e.g. "localhost" for a certificate used on 127.0.0.1).
  std::string tls_server_name;
};

class GrpcBackend : public Backend {
 public:
  // Connects to `address` (host:port), waiting up to `connect_timeout_s`.
  // Unavailable, naming the address, when no server answers (a TLS
  // handshake that fails looks the same to the client).
  static absl::StatusOr<std::unique_ptr<GrpcBackend>> Connect(const std::string& address,
                                                              double connect_timeout_s = 10,
                                                              const ClientSecurity& security = {});
  ~GrpcBackend() override;

  absl::StatusOr<v1::SearchResponse> Search(const v1::SearchRequest& request) override;
  absl::StatusOr<v1::ScoreResponse> Score(const v1::ScoreRequest& request) override;
  absl::StatusOr<v1::NextTokenResponse> NextToken(const v1::NextTokenRequest& request) override;
  absl::StatusOr<v1::GenerateResponse> Generate(const v1::GenerateRequest& request,
                                                const GenerateCallback& on_token) override;
  absl::StatusOr<v1::InfoResponse> Info() override;
  absl::StatusOr<v1::StatsResponse> Stats() override;
  // Streams the documents in one AddDocuments call.
  absl::StatusOr<v1::AddDocumentsResponse> AddDocuments(const std::vector<v1::Document>& documents,
                                                        const AddCallback& on_progress) override;

  // Deadline of every call from now on, seconds; 0 = none. The server stops
  // working on a call whose deadline passed.
  void set_rpc_timeout(double seconds) { rpc_timeout_s_ = seconds; }
  // The connection, for stubs of other services on the same server (a
  // sharded front's internal Shard calls).
  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }

 private:
  struct Stubs;
  GrpcBackend() = default;
  // A context carrying the bearer token and the deadline, if any.
  std::unique_ptr<grpc::ClientContext> NewContext() const;

  std::string address_;
  std::string auth_token_;
  double rpc_timeout_s_ = 0;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<Stubs> stubs_;
};

}  // namespace rag::services

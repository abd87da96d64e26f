// GrpcBackend: the Backend of the `--server ADDR` forms of the commands, a
// thin client of the rag.v1 services.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "services/backend.h"

namespace grpc {
class Channel;
}  // namespace grpc

namespace rag::services {

class GrpcBackend : public Backend {
 public:
  // Connects to `address` (host:port), waiting up to `connect_timeout_s`.
  // Unavailable, naming the address, when no server answers.
  static absl::StatusOr<std::unique_ptr<GrpcBackend>> Connect(const std::string& address,
                                                              double connect_timeout_s = 10);
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

 private:
  struct Stubs;
  GrpcBackend() = default;
  std::string address_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<Stubs> stubs_;
};

}  // namespace rag::services

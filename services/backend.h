// What the `rag` commands talk to: the served model and index, either
// in-process (Engine) or over gRPC (GrpcBackend). Both take and return the
// rag.v1 messages, and the server answers through an Engine, so the two
// forms of a command give the same results by construction.
#pragma once

#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "proto/rag.pb.h"

namespace rag::services {

// Called with each streamed token of Generate; returning false cancels.
using GenerateCallback = std::function<bool(const v1::GenerateResponse&)>;
// Called after each document of AddDocuments with the running totals.
using AddCallback = std::function<void(const v1::AddDocumentsResponse&)>;

class Backend {
 public:
  virtual ~Backend() = default;
  virtual absl::StatusOr<v1::SearchResponse> Search(const v1::SearchRequest& request) = 0;
  virtual absl::StatusOr<v1::ScoreResponse> Score(const v1::ScoreRequest& request) = 0;
  virtual absl::StatusOr<v1::NextTokenResponse> NextToken(const v1::NextTokenRequest& request) = 0;
  // Streams tokens to `on_token` and returns the final (done) message.
  virtual absl::StatusOr<v1::GenerateResponse> Generate(const v1::GenerateRequest& request,
                                                        const GenerateCallback& on_token) = 0;
  virtual absl::StatusOr<v1::InfoResponse> Info() = 0;
  virtual absl::StatusOr<v1::StatsResponse> Stats() = 0;
  virtual absl::StatusOr<v1::AddDocumentsResponse> AddDocuments(const std::vector<v1::Document>& documents,
                                                                const AddCallback& on_progress) = 0;
};

}  // namespace rag::services

#include "services/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <chrono>
#include <cstdio>

#include "proto/rag.grpc.pb.h"

namespace rag::services {
namespace {

// absl and gRPC share the canonical status code numbering.
grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

const char* CodeName(grpc::StatusCode code) {
  static const char* kNames[] = {
      "OK",        "CANCELLED",      "UNKNOWN",           "INVALID_ARGUMENT",   "DEADLINE_EXCEEDED",
      "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
      "ABORTED",   "OUT_OF_RANGE",   "UNIMPLEMENTED",     "INTERNAL",           "UNAVAILABLE",
      "DATA_LOSS", "UNAUTHENTICATED"};
  const int i = static_cast<int>(code);
  return i >= 0 && i < 17 ? kNames[i] : "?";
}

// One line per request at debug level: what was asked, by whom, the outcome
// and how long it took.
class RequestLog {
 public:
  RequestLog(bool enabled, const char* rpc, grpc::ServerContext* context)
      : enabled_(enabled), rpc_(rpc), context_(context), start_(std::chrono::steady_clock::now()) {}

  grpc::Status Finish(const grpc::Status& status, const std::string& detail) const {
    if (enabled_) {
      const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start_).count();
      std::fprintf(stderr, "serve: %s %s %s -> %s %.1f ms%s%s\n", rpc_, context_->peer().c_str(), detail.c_str(),
                   CodeName(status.error_code()), ms, status.ok() ? "" : ": ",
                   status.ok() ? "" : status.error_message().c_str());
    }
    return status;
  }

 private:
  bool enabled_;
  const char* rpc_;
  grpc::ServerContext* context_;
  std::chrono::steady_clock::time_point start_;
};

// A unary rpc: calls the engine, logs, converts the status.
template <typename Response, typename Call>
grpc::Status Answer(bool log_enabled, const char* rpc, grpc::ServerContext* context, const std::string& detail,
                    Call&& call, Response* response) {
  RequestLog log(log_enabled, rpc, context);
  absl::StatusOr<Response> r = call();
  if (!r.ok()) return log.Finish(ToGrpc(r.status()), detail);
  *response = std::move(*r);
  return log.Finish(grpc::Status::OK, detail);
}

class RetrievalService final : public v1::Retrieval::Service {
 public:
  RetrievalService(Engine* engine, bool log) : engine_(engine), log_(log) {}

  grpc::Status Search(grpc::ServerContext* context, const v1::SearchRequest* request,
                      v1::SearchResponse* response) override {
    return Answer(
        log_, "Search", context,
        "texts=" + std::to_string(request->texts_size()) + " k=" + std::to_string(request->k()),
        [&] { return engine_->Search(*request); }, response);
  }

 private:
  Engine* engine_;
  bool log_;
};

class LanguageModelService final : public v1::LanguageModel::Service {
 public:
  LanguageModelService(Engine* engine, bool log) : engine_(engine), log_(log) {}

  grpc::Status Score(grpc::ServerContext* context, const v1::ScoreRequest* request,
                     v1::ScoreResponse* response) override {
    return Answer(
        log_, "Score", context, "bytes=" + std::to_string(request->text().size()),
        [&] { return engine_->Score(*request); }, response);
  }

  grpc::Status NextToken(grpc::ServerContext* context, const v1::NextTokenRequest* request,
                         v1::NextTokenResponse* response) override {
    return Answer(
        log_, "NextToken", context, "bytes=" + std::to_string(request->text().size()),
        [&] { return engine_->NextToken(*request); }, response);
  }

  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override {
    RequestLog log(log_, "Generate", context);
    const std::string detail = "max_tokens=" + std::to_string(request->max_tokens());
    // A failed Write or a cancelled call means the client is gone: stop
    // generating rather than compute tokens nobody reads.
    auto done = engine_->Generate(
        *request, [&](const v1::GenerateResponse& token) { return !context->IsCancelled() && writer->Write(token); });
    if (!done.ok()) return log.Finish(ToGrpc(done.status()), detail);
    writer->Write(*done);
    return log.Finish(grpc::Status::OK, detail);
  }

  grpc::Status Info(grpc::ServerContext* context, const v1::InfoRequest*, v1::InfoResponse* response) override {
    return Answer(
        log_, "Info", context, "", [&] { return engine_->Info(); }, response);
  }

 private:
  Engine* engine_;
  bool log_;
};

class IndexService final : public v1::Index::Service {
 public:
  IndexService(Engine* engine, bool log) : engine_(engine), log_(log) {}

  grpc::Status Stats(grpc::ServerContext* context, const v1::StatsRequest*, v1::StatsResponse* response) override {
    return Answer(
        log_, "Stats", context, "", [&] { return engine_->Stats(); }, response);
  }

  grpc::Status AddDocuments(grpc::ServerContext* context, grpc::ServerReader<v1::Document>* reader,
                            v1::AddDocumentsResponse* response) override {
    RequestLog log(log_, "AddDocuments", context);
    v1::AddDocumentsResponse totals;
    v1::Document doc;
    absl::Status status;
    while (status.ok() && reader->Read(&doc)) status = engine_->AddDocument(doc, &totals);
    // Whatever was added is durable already; save the index either way.
    absl::Status finished = engine_->FinishAdd(&totals);
    const std::string detail =
        "added=" + std::to_string(totals.documents_added()) + " skipped=" + std::to_string(totals.documents_skipped());
    if (!status.ok()) {
      return log.Finish(
          ToGrpc(absl::Status(status.code(), "after " + std::to_string(totals.documents_added()) +
                                                 " documents were added: " + std::string(status.message()))),
          detail);
    }
    if (context->IsCancelled()) {
      return log.Finish(
          grpc::Status(grpc::StatusCode::CANCELLED,
                       "client cancelled after " + std::to_string(totals.documents_added()) + " documents were added"),
          detail);
    }
    if (!finished.ok()) return log.Finish(ToGrpc(finished), detail);
    *response = totals;
    return log.Finish(grpc::Status::OK, detail);
  }

 private:
  Engine* engine_;
  bool log_;
};

}  // namespace

struct Server::Services {
  Services(Engine* engine, bool log) : retrieval(engine, log), lm(engine, log), index(engine, log) {}
  RetrievalService retrieval;
  LanguageModelService lm;
  IndexService index;
};

absl::StatusOr<std::unique_ptr<Server>> Server::Start(Engine* engine, const ServerOptions& options) {
  std::unique_ptr<Server> s(new Server());
  s->services_ = std::make_unique<Services>(engine, options.log_requests);
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, grpc::InsecureServerCredentials(), &s->port_);
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  builder.RegisterService(&s->services_->retrieval);
  builder.RegisterService(&s->services_->lm);
  builder.RegisterService(&s->services_->index);
  s->server_ = builder.BuildAndStart();
  if (s->server_ == nullptr || s->port_ == 0) {
    return absl::UnavailableError("cannot listen on '" + options.listen +
                                  "' (address in use, or not a valid host:port?)");
  }
  return s;
}

Server::~Server() { Shutdown(0); }

void Server::Shutdown(double grace_seconds) {
  if (server_ == nullptr) return;
  if (auto* health = server_->GetHealthCheckService()) health->Shutdown();
  server_->Shutdown(std::chrono::system_clock::now() +
                    std::chrono::milliseconds(static_cast<int64_t>(grace_seconds * 1000)));
  server_->Wait();
  server_.reset();
}

}  // namespace rag::services

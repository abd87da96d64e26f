#include "services/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "common/cancellation.h"
#include "common/file_util.h"
#include "common/status.h"
#include "lm/runtime.h"
#include "proto/rag.grpc.pb.h"
#include "services/metrics.h"

namespace rag::services {
namespace {

// absl and gRPC share the canonical status code numbering.
grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

// As ToGrpc; work stopped because the deadline passed is DEADLINE_EXCEEDED,
// whichever side notices first.
grpc::Status ToGrpc(const absl::Status& s, const grpc::ServerContext* context) {
  if (s.code() == absl::StatusCode::kCancelled && std::chrono::system_clock::now() > context->deadline()) {
    return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "deadline exceeded; work stopped");
  }
  return ToGrpc(s);
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

nlohmann::json TimingsJson(const v1::StageTimings& t) {
  return {{"embed_us", t.embed_us()},         {"search_us", t.search_us()}, {"datastore_us", t.datastore_us()},
          {"forward_us", t.forward_us()},     {"fusion_us", t.fusion_us()}, {"total_us", t.total_us()}};
}

// What the log line says of a response: sizes, and the stage timings.
template <typename Response>
nlohmann::json Describe(const Response&) {
  return nullptr;
}
nlohmann::json Describe(const v1::SearchResponse& r) {
  int64_t neighbours = 0;
  for (const auto& list : r.results()) neighbours += list.neighbours_size();
  return {{"neighbours", neighbours}, {"timings", TimingsJson(r.timings())}};
}
nlohmann::json Describe(const v1::ScoreResponse& r) {
  return {{"tokens", r.tokens()}, {"retrievals", r.retrievals()}, {"timings", TimingsJson(r.timings())}};
}
nlohmann::json Describe(const v1::NextTokenResponse& r) {
  return {{"tokens", r.tokens_size()}, {"timings", TimingsJson(r.timings())}};
}
nlohmann::json Describe(const v1::GenerateResponse& r) {
  return {{"tokens", r.tokens()}, {"retrievals", r.retrievals_size()}, {"timings", TimingsJson(r.timings())}};
}

// --log-requests: one JSON line per rpc on stderr: the method, the peer,
// what was asked (mode, sizes), the outcome, the wall time and, for the rpcs
// that do work, where it went (the response's StageTimings).
// With --metrics-listen, the same record feeds the Prometheus metrics
// (services/metrics.h decides what each response adds).
class RequestLog {
 public:
  RequestLog(bool enabled, Metrics* metrics, const char* rpc, grpc::ServerContext* context, nlohmann::json request)
      : enabled_(enabled),
        metrics_(metrics),
        rpc_(rpc),
        mode_(request.contains("mode") ? request["mode"].get<std::string>() : "none"),
        context_(context),
        request_(std::move(request)),
        start_(std::chrono::steady_clock::now()) {
    if (mode_.empty()) mode_ = "lm";  // the rpcs' default mode
    if (metrics_ != nullptr) metrics_->CallStarted(rpc_);
  }

  // A successful call: counted by what it did, then finished.
  template <typename Response>
  grpc::Status Succeed(const Response& response) const {
    if (metrics_ != nullptr) metrics_->Succeeded(rpc_, mode_, response);
    return Finish(grpc::Status::OK, enabled_ ? Describe(response) : nullptr);
  }

  // Call exactly once per call.
  grpc::Status Finish(const grpc::Status& status, nlohmann::json response = nullptr) const {
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    if (metrics_ != nullptr) metrics_->CallFinished(rpc_, mode_, CodeName(status.error_code()), seconds);
    if (!enabled_) return status;
    nlohmann::json line = {
        {"rpc", rpc_},
        {"peer", context_->peer()},
        {"request", request_},
        {"status", CodeName(status.error_code())},
        {"ms", std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start_).count()}};
    if (!status.ok()) line["error"] = status.error_message();
    if (!response.is_null()) line["response"] = std::move(response);
    const std::string text = line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    std::fwrite(text.data(), 1, text.size(), stderr);  // one write: lines of concurrent calls do not interleave
    return status;
  }

 private:
  bool enabled_;
  Metrics* metrics_;
  const char* rpc_;
  std::string mode_;
  grpc::ServerContext* context_;
  nlohmann::json request_;
  std::chrono::steady_clock::time_point start_;
};

// What every handler needs: the engine, whether to log, the bearer token.
struct Shared {
  // Null while the model and index load and warm up (Server::SetReady).
  std::atomic<Engine*> engine{nullptr};
  bool log = false;
  Metrics* metrics = nullptr;  // --metrics-listen; not owned
  std::string token;  // "" = no check

  // The engine, or UNAVAILABLE while it is still loading.
  grpc::Status Ready(Engine** out) const {
    *out = engine.load();
    if (*out != nullptr) return grpc::Status::OK;
    return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        "the server is starting: the model and index are loading (health says NOT_SERVING until "
                        "they are open and warmed)");
  }

  // UNAUTHENTICATED unless the call carries `authorization: Bearer <token>`.
  // The comparison takes the same time wherever the first difference is.
  grpc::Status Authorize(const grpc::ServerContext* context) const {
    if (token.empty()) return grpc::Status::OK;
    const auto& metadata = context->client_metadata();
    const auto it = metadata.find("authorization");
    if (it == metadata.end()) {
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                          "this server needs a bearer token: send `authorization: Bearer <token>` metadata "
                          "(rag commands: --auth-token-file)");
    }
    const std::string_view value(it->second.data(), it->second.size());
    constexpr std::string_view kBearer = "Bearer ";
    const std::string_view given = value.substr(0, kBearer.size()) == kBearer ? value.substr(kBearer.size()) : "";
    unsigned char diff = given.size() == token.size() ? 0 : 1;
    for (size_t i = 0; i < token.size(); ++i) {
      diff |= static_cast<unsigned char>(token[i] ^ (i < given.size() ? given[i] : 0));
    }
    if (diff != 0) return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "wrong bearer token");
    return grpc::Status::OK;
  }
};

// The engine's long loops ask this between units of work: the client went
// away, or the call's deadline passed.
std::function<bool()> CancellationOf(const grpc::ServerContext* context) {
  return [context] { return context->IsCancelled() || std::chrono::system_clock::now() > context->deadline(); };
}

// The call's deadline, none when the client set none (gRPC's "infinite").
std::optional<std::chrono::system_clock::time_point> DeadlineOf(const grpc::ServerContext* context) {
  const auto d = context->deadline();
  if (d >= std::chrono::system_clock::time_point::max() - std::chrono::hours(24 * 365)) return std::nullopt;
  return d;
}

// What the engine's work sees for the length of a call: its cancellation
// and deadline (common/cancellation.h) and its share of the cores
// (lm::CallThreads).
struct CallScope {
  explicit CallScope(const grpc::ServerContext* context)
      : cancellation(CancellationOf(context)), deadline(DeadlineOf(context)) {}
  const ScopedCancellation cancellation;
  const ScopedDeadline deadline;
  const lm::CallThreads threads;
};

// A unary rpc: checks the token, calls the engine, logs, converts the status.
template <typename Response, typename Call>
grpc::Status Answer(const Shared& shared, const char* rpc, grpc::ServerContext* context, nlohmann::json detail,
                    Call&& call, Response* response) {
  RequestLog log(shared.log, shared.metrics, rpc, context, std::move(detail));
  if (grpc::Status a = shared.Authorize(context); !a.ok()) return log.Finish(a);
  Engine* engine = nullptr;
  if (grpc::Status ready = shared.Ready(&engine); !ready.ok()) return log.Finish(ready);
  const CallScope scope(context);
  absl::StatusOr<Response> r = call(*engine);
  if (!r.ok()) return log.Finish(ToGrpc(r.status(), context));
  *response = std::move(*r);
  return log.Succeed(*response);
}

class RetrievalService final : public v1::Retrieval::Service {
 public:
  explicit RetrievalService(const Shared* shared) : s_(*shared) {}

  grpc::Status Search(grpc::ServerContext* context, const v1::SearchRequest* request,
                      v1::SearchResponse* response) override {
    return Answer(
        s_, "Search", context,
        {{"texts", request->texts_size()}, {"k", request->k()}, {"method", request->method()}},
        [&](Engine& e) { return e.Search(*request); }, response);
  }

 private:
  const Shared& s_;
};

class LanguageModelService final : public v1::LanguageModel::Service {
 public:
  explicit LanguageModelService(const Shared* shared) : s_(*shared) {}

  grpc::Status Score(grpc::ServerContext* context, const v1::ScoreRequest* request,
                     v1::ScoreResponse* response) override {
    return Answer(
        s_, "Score", context, {{"mode", request->mode()}, {"bytes", request->text().size()}},
        [&](Engine& e) { return e.Score(*request); }, response);
  }

  grpc::Status NextToken(grpc::ServerContext* context, const v1::NextTokenRequest* request,
                         v1::NextTokenResponse* response) override {
    return Answer(
        s_, "NextToken", context,
        {{"mode", request->mode()}, {"bytes", request->text().size()}, {"top_n", request->top_n()}},
        [&](Engine& e) { return e.NextToken(*request); }, response);
  }

  grpc::Status Generate(grpc::ServerContext* context, const v1::GenerateRequest* request,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override {
    RequestLog log(s_.log, s_.metrics, "Generate", context,
                   {{"mode", request->mode()},
                    {"bytes", request->prompt().size()},
                    {"prompt_token_ids", request->prompt_token_ids_size()},
                    {"max_tokens", request->max_tokens()}});
    if (grpc::Status a = s_.Authorize(context); !a.ok()) return log.Finish(a);
    Engine* engine = nullptr;
    if (grpc::Status ready = s_.Ready(&engine); !ready.ok()) return log.Finish(ready);
    const CallScope scope(context);
    // A failed Write means the client is gone: stop generating rather than
    // compute tokens nobody reads (a cancelled call or a passed deadline
    // stops it through the cancellation check above).
    auto done = engine->Generate(*request, [&](const v1::GenerateResponse& token) { return writer->Write(token); });
    if (!done.ok()) return log.Finish(ToGrpc(done.status(), context));
    writer->Write(*done);
    return log.Succeed(*done);
  }

  grpc::Status Info(grpc::ServerContext* context, const v1::InfoRequest*, v1::InfoResponse* response) override {
    return Answer(
        s_, "Info", context, nlohmann::json::object(), [&](Engine& e) { return e.Info(); }, response);
  }

 private:
  const Shared& s_;
};

class IndexService final : public v1::Index::Service {
 public:
  explicit IndexService(const Shared* shared) : s_(*shared) {}

  grpc::Status Stats(grpc::ServerContext* context, const v1::StatsRequest*, v1::StatsResponse* response) override {
    return Answer(
        s_, "Stats", context, nlohmann::json::object(), [&](Engine& e) { return e.Stats(); }, response);
  }

  grpc::Status AddDocuments(grpc::ServerContext* context, grpc::ServerReader<v1::Document>* reader,
                            v1::AddDocumentsResponse* response) override {
    RequestLog log(s_.log, s_.metrics, "AddDocuments", context, nlohmann::json::object());
    if (grpc::Status a = s_.Authorize(context); !a.ok()) return log.Finish(a);
    Engine* engine = nullptr;
    if (grpc::Status ready = s_.Ready(&engine); !ready.ok()) return log.Finish(ready);
    const lm::CallThreads threads;
    v1::AddDocumentsResponse totals;
    v1::Document doc;
    absl::Status status;
    while (status.ok() && reader->Read(&doc)) status = engine->AddDocument(doc, &totals);
    // Whatever was added is durable already; save the index either way.
    absl::Status finished = engine->FinishAdd(&totals);
    const nlohmann::json detail = {{"added", totals.documents_added()}, {"skipped", totals.documents_skipped()}};
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
    if (s_.metrics != nullptr) s_.metrics->Succeeded("AddDocuments", "none", totals);
    return log.Finish(grpc::Status::OK, detail);
  }

 private:
  const Shared& s_;
};

// The internal service a sharded front calls (proto/rag.proto "Shard").
class ShardService final : public v1::Shard::Service {
 public:
  explicit ShardService(const Shared* shared) : s_(*shared) {}

  grpc::Status SearchVectors(grpc::ServerContext* context, const v1::SearchVectorsRequest* request,
                             v1::SearchResponse* response) override {
    return Answer(
        s_, "SearchVectors", context,
        {{"floats", request->vectors_size()}, {"k", request->k()}},
        [&](Engine& e) { return e.SearchVectors(*request); }, response);
  }

  grpc::Status SearchKeys(grpc::ServerContext* context, const v1::SearchKeysRequest* request,
                          v1::SearchKeysResponse* response) override {
    return Answer(
        s_, "SearchKeys", context,
        {{"floats", request->queries_size()}, {"k", request->k()}},
        [&](Engine& e) { return e.SearchKeys(*request); }, response);
  }

 private:
  const Shared& s_;
};

}  // namespace

bool IsLoopback(const std::string& listen) {
  std::string host = listen.substr(0, listen.rfind(':'));
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

struct Server::Services {
  Services(Engine* engine, bool log, Metrics* metrics, std::string token)
      : retrieval(&shared), lm(&shared), index(&shared), shard(&shared) {
    shared.engine = engine;
    shared.log = log;
    shared.metrics = metrics;
    shared.token = std::move(token);
  }
  Shared shared;  // before the services, which keep a reference to it
  RetrievalService retrieval;
  LanguageModelService lm;
  IndexService index;
  ShardService shard;
};

absl::StatusOr<std::unique_ptr<Server>> Server::Start(Engine* engine, const ServerOptions& options) {
  std::unique_ptr<Server> s(new Server());
  std::string token;
  if (!options.auth_token_file.empty()) {
    RAG_ASSIGN_OR_RETURN(std::string text, ReadFile(options.auth_token_file));
    token = std::string(absl::StripAsciiWhitespace(text));
    if (token.empty()) {
      return absl::InvalidArgumentError("the token file '" + options.auth_token_file + "' is empty");
    }
    for (char c : token) {
      if (c < 0x21 || c > 0x7e) {
        return absl::InvalidArgumentError("the token in '" + options.auth_token_file +
                                          "' must be printable ASCII without spaces (it travels as an HTTP/2 header)");
      }
    }
  }
  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (options.tls_cert_file.empty() != options.tls_key_file.empty()) {
    return absl::InvalidArgumentError("TLS needs both a certificate (--tls-cert) and its private key (--tls-key)");
  }
  if (!options.tls_cert_file.empty()) {
    RAG_ASSIGN_OR_RETURN(std::string cert, ReadFile(options.tls_cert_file));
    RAG_ASSIGN_OR_RETURN(std::string key, ReadFile(options.tls_key_file));
    if (cert.find("-----BEGIN CERTIFICATE-----") == std::string::npos) {
      return absl::InvalidArgumentError("'" + options.tls_cert_file + "' holds no PEM certificate");
    }
    if (key.find("PRIVATE KEY-----") == std::string::npos) {
      return absl::InvalidArgumentError("'" + options.tls_key_file + "' holds no PEM private key");
    }
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({std::move(key), std::move(cert)});
    credentials = grpc::SslServerCredentials(ssl);
  }
  s->services_ = std::make_unique<Services>(engine, options.log_requests, options.metrics, std::move(token));
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, credentials, &s->port_);
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  builder.RegisterService(&s->services_->retrieval);
  builder.RegisterService(&s->services_->lm);
  builder.RegisterService(&s->services_->index);
  builder.RegisterService(&s->services_->shard);
  s->server_ = builder.BuildAndStart();
  if (s->server_ == nullptr || s->port_ == 0) {
    return absl::UnavailableError("cannot listen on '" + options.listen +
                                  "' (address in use, not a valid host:port, or a certificate that does not match "
                                  "its key?)");
  }
  // Health says what the engine does: NOT_SERVING until it is set.
  if (auto* health = s->server_->GetHealthCheckService()) health->SetServingStatus(engine != nullptr);
  return s;
}

void Server::SetReady(Engine* engine) {
  services_->shared.engine = engine;
  if (services_->shared.metrics != nullptr) services_->shared.metrics->SetEngine(engine);
  if (auto* health = server_->GetHealthCheckService()) health->SetServingStatus(engine != nullptr);
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

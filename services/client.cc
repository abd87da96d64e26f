#include "services/client.h"

#include <grpcpp/grpcpp.h>

#include <chrono>

#include "proto/rag.grpc.pb.h"

namespace rag::services {
namespace {

absl::Status FromGrpc(const grpc::Status& s, const std::string& address) {
  if (s.ok()) return absl::OkStatus();
  std::string message = s.error_message();
  if (s.error_code() == grpc::StatusCode::UNAVAILABLE) message = "server " + address + " unavailable: " + message;
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), message);
}

}  // namespace

// One unary call: `rpc` is the stub method.
template <typename Stub, typename Request, typename Response>
absl::StatusOr<Response> Unary(std::unique_ptr<grpc::ClientContext> context, Stub* stub,
                               grpc::Status (Stub::*rpc)(grpc::ClientContext*, const Request&, Response*),
                               const Request& request, const std::string& address) {
  Response response;
  absl::Status s = FromGrpc((stub->*rpc)(context.get(), request, &response), address);
  if (!s.ok()) return s;
  return response;
}

struct GrpcBackend::Stubs {
  explicit Stubs(const std::shared_ptr<grpc::Channel>& channel)
      : retrieval(v1::Retrieval::NewStub(channel)),
        lm(v1::LanguageModel::NewStub(channel)),
        index(v1::Index::NewStub(channel)) {}
  std::unique_ptr<v1::Retrieval::Stub> retrieval;
  std::unique_ptr<v1::LanguageModel::Stub> lm;
  std::unique_ptr<v1::Index::Stub> index;
};

absl::StatusOr<std::unique_ptr<GrpcBackend>> GrpcBackend::Connect(const std::string& address,
                                                                  double connect_timeout_s,
                                                                  const ClientSecurity& security) {
  if (address.empty()) return absl::InvalidArgumentError("--server needs an address (host:port)");
  std::unique_ptr<GrpcBackend> b(new GrpcBackend());
  b->address_ = address;
  b->auth_token_ = security.auth_token;
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  args.SetMaxSendMessageSize(64 << 20);
  std::shared_ptr<grpc::ChannelCredentials> credentials = grpc::InsecureChannelCredentials();
  if (security.tls) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = security.tls_ca_pem;
    credentials = grpc::SslCredentials(ssl);
    if (!security.tls_server_name.empty()) args.SetSslTargetNameOverride(security.tls_server_name);
  }
  b->channel_ = grpc::CreateCustomChannel(address, credentials, args);
  const auto deadline =
      std::chrono::system_clock::now() + std::chrono::milliseconds(static_cast<int64_t>(connect_timeout_s * 1000));
  if (!b->channel_->WaitForConnected(deadline)) {
    return absl::UnavailableError("cannot reach a rag server at " + address + " (is `rag serve` running there?)");
  }
  b->stubs_ = std::make_unique<Stubs>(b->channel_);
  return b;
}

GrpcBackend::~GrpcBackend() = default;

std::unique_ptr<grpc::ClientContext> GrpcBackend::NewContext() const {
  auto context = std::make_unique<grpc::ClientContext>();
  if (!auth_token_.empty()) context->AddMetadata("authorization", "Bearer " + auth_token_);
  if (rpc_timeout_s_ > 0) {
    context->set_deadline(std::chrono::system_clock::now() +
                          std::chrono::microseconds(static_cast<int64_t>(rpc_timeout_s_ * 1e6)));
  }
  return context;
}

absl::StatusOr<v1::SearchResponse> GrpcBackend::Search(const v1::SearchRequest& request) {
  return Unary(NewContext(), stubs_->retrieval.get(), &v1::Retrieval::Stub::Search, request, address_);
}

absl::StatusOr<v1::ScoreResponse> GrpcBackend::Score(const v1::ScoreRequest& request) {
  return Unary(NewContext(), stubs_->lm.get(), &v1::LanguageModel::Stub::Score, request, address_);
}

absl::StatusOr<v1::NextTokenResponse> GrpcBackend::NextToken(const v1::NextTokenRequest& request) {
  return Unary(NewContext(), stubs_->lm.get(), &v1::LanguageModel::Stub::NextToken, request, address_);
}

absl::StatusOr<v1::GenerateResponse> GrpcBackend::Generate(const v1::GenerateRequest& request,
                                                           const GenerateCallback& on_token) {
  auto context = NewContext();
  auto reader = stubs_->lm->Generate(context.get(), request);
  v1::GenerateResponse message, done;
  bool have_done = false;
  while (reader->Read(&message)) {
    if (message.done()) {
      done = message;
      have_done = true;
    } else if (on_token && !on_token(message)) {
      context->TryCancel();
    }
  }
  absl::Status s = FromGrpc(reader->Finish(), address_);
  if (!s.ok()) return s;
  if (!have_done) return absl::DataLossError("server " + address_ + " ended Generate without its final message");
  return done;
}

absl::StatusOr<v1::InfoResponse> GrpcBackend::Info() {
  return Unary(NewContext(), stubs_->lm.get(), &v1::LanguageModel::Stub::Info, v1::InfoRequest(), address_);
}

absl::StatusOr<v1::StatsResponse> GrpcBackend::Stats() {
  return Unary(NewContext(), stubs_->index.get(), &v1::Index::Stub::Stats, v1::StatsRequest(), address_);
}

absl::StatusOr<v1::AddDocumentsResponse> GrpcBackend::AddDocuments(const std::vector<v1::Document>& documents,
                                                                   const AddCallback& on_progress) {
  auto context = NewContext();
  v1::AddDocumentsResponse response;
  auto writer = stubs_->index->AddDocuments(context.get(), &response);
  v1::AddDocumentsResponse sent;
  for (const auto& d : documents) {
    // A failed write means the server ended the call (an error for this or
    // an earlier document): Finish reports why.
    if (!writer->Write(d)) break;
    sent.set_documents_added(sent.documents_added() + 1);
    if (on_progress) on_progress(sent);
  }
  writer->WritesDone();
  absl::Status s = FromGrpc(writer->Finish(), address_);
  if (!s.ok()) return s;
  return response;
}

}  // namespace rag::services

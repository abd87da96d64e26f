#include "services/cli/common.h"

#include <csignal>
#include <cstdio>
#include <iostream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status.h"
#include "services/client.h"
#include "services/engine.h"

namespace rag::cli {

std::atomic<bool> g_stop{false};

namespace {

extern "C" void OnSignal(int) {
  g_stop.store(true);
  // A second Ctrl-C kills at once.
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
}

// The tokenizer of the model a target serves (evaluations tokenize as it does).
absl::StatusOr<lm::Tokenizer> ServedTokenizer(const rag::v1::InfoResponse& info) {
  auto tok = lm::Tokenizer::FromJson(info.tokenizer_json());
  if (!tok.ok()) return Annotate(tok.status(), "the served tokenizer");
  return tok;
}

}  // namespace

void InstallStopHandlers() {
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
}

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "rag: error: %s\n", std::string(status.message()).c_str());
  return status.code() == absl::StatusCode::kCancelled ? 130 : 1;
}

void PrintJson(const json& j) { std::cout << j.dump(-1, ' ', false, json::error_handler_t::replace) << std::endl; }

absl::StatusOr<std::string> TextArg(const std::string& text, const std::string& text_file, const char* what,
                                    bool for_server) {
  std::string value = text;
  if (!text_file.empty()) {
    RAG_ASSIGN_OR_RETURN(value, ReadFile(text_file));
  }
  if (for_server && !rag::IsValidUtf8(value)) {
    return absl::InvalidArgumentError(std::string(what) +
                                      " is not valid UTF-8, which gRPC requires (the in-process form, "
                                      "--model, accepts any bytes)");
  }
  return value;
}

absl::StatusOr<std::unique_ptr<lm::LanguageModel>> OpenModel(const std::string& dir) {
  if (dir.empty()) return absl::InvalidArgumentError("--model MODEL_DIR is required");
  auto model = lm::LanguageModel::Open(dir);
  if (!model.ok()) return Annotate(model.status(), "opening model");
  return model;
}

void AddTargetOptions(CLI::App* cmd, TargetArgs* t, bool with_index) {
  cmd->add_option("--server", t->server, "address of a running `rag serve` (host:port)");
  cmd->add_option("--model", t->model, "model directory (in-process)");
  if (with_index) {
    cmd->add_option("--index", t->index, "index directory (in-process)");
    cmd->add_option("--embedder", t->embedder, "the TorchScript encoder the index was built with (in-process)");
  }
  cmd->add_option("--connect-timeout", t->connect_timeout, "seconds to wait for --server")->capture_default_str();
  cmd->add_option("--rpc-timeout", t->rpc_timeout, "deadline of each call to --server, seconds (0: none)")
      ->capture_default_str();
  cmd->add_option("--auth-token-file", t->auth_token_file, "file with the bearer token the --server expects");
  cmd->add_flag("--tls", t->tls, "connect to --server over TLS (verified with the system's roots or --tls-ca)");
  cmd->add_option("--tls-ca", t->tls_ca, "PEM root certificate(s) that verify the --server (implies --tls)");
  cmd->add_option("--tls-server-name", t->tls_server_name,
                  "name the server's certificate carries, when not the --server host");
}

absl::StatusOr<services::ClientSecurity> MakeClientSecurity(const std::string& auth_token_file, bool tls,
                                                            const std::string& tls_ca,
                                                            const std::string& tls_server_name) {
  services::ClientSecurity security;
  if (!auth_token_file.empty()) {
    RAG_ASSIGN_OR_RETURN(std::string token, ReadFile(auth_token_file));
    security.auth_token = std::string(absl::StripAsciiWhitespace(token));
  }
  security.tls = tls || !tls_ca.empty();
  if (!tls_ca.empty()) {
    RAG_ASSIGN_OR_RETURN(security.tls_ca_pem, ReadFile(tls_ca));
  }
  security.tls_server_name = tls_server_name;
  return security;
}

absl::StatusOr<std::unique_ptr<services::Backend>> OpenTarget(const TargetArgs& t, bool need_index, bool writable) {
  if (!t.server.empty() && (!t.model.empty() || !t.index.empty())) {
    return absl::InvalidArgumentError("give either --server ADDR or --model MODEL_DIR [--index INDEX_DIR], not both");
  }
  if (!t.server.empty()) {
    RAG_ASSIGN_OR_RETURN(services::ClientSecurity security,
                         MakeClientSecurity(t.auth_token_file, t.tls, t.tls_ca, t.tls_server_name));
    RAG_ASSIGN_OR_RETURN(auto client, services::GrpcBackend::Connect(t.server, t.connect_timeout, security));
    client->set_rpc_timeout(t.rpc_timeout);
    return std::unique_ptr<services::Backend>(std::move(client));
  }
  if (t.model.empty()) return absl::InvalidArgumentError("give --server ADDR or --model MODEL_DIR");
  if (need_index && t.index.empty()) return absl::InvalidArgumentError("--index INDEX_DIR is required with --model");
  services::EngineOptions o;
  o.model_dir = t.model;
  o.index_dir = t.index;
  o.embedder_path = t.embedder;
  o.writable_index = writable;
  o.limits.max_text_bytes = services::kLocalMaxTextBytes;
  RAG_ASSIGN_OR_RETURN(auto engine, services::Engine::Open(o));
  return std::unique_ptr<services::Backend>(std::move(engine));
}

void AddKnnOptions(CLI::App* cmd, KnnArgs* k, const char* temperature_flag) {
  // The server fills in what is left unset; the help says what it will use.
  cmd->add_option("--lambda", k->lambda,
                  absl::StrCat("knnlm: weight of p_knn in [0, 1] (default ", lm::kDefaultKnnLambda,
                               "); infgram: of p_inf where several tokens follow the matched suffix (default ",
                               services::kDefaultInfgramLambda, ")"));
  cmd->add_option("--lambda-sparse", k->lambda_sparse,
                  absl::StrCat("infgram: weight of p_inf where one token alone follows the matched suffix (default ",
                               services::kDefaultInfgramLambdaSparse, ")"));
  cmd->add_option(temperature_flag, k->temperature,
                  absl::StrCat("knnlm: temperature of the neighbour distribution (default ", lm::kDefaultKnnTemperature,
                               ")"));
  cmd->add_option("--k", k->k, absl::StrCat("knnlm: neighbours per token (default ", lm::kDefaultKnnK, ")"));
  cmd->add_option("--nprobe", k->nprobe,
                  absl::StrCat("knnlm: IVF lists of the datastore to visit (default ", services::kDefaultKnnNprobe, ")"));
  cmd->add_flag("--exact-distances", k->exact, "knnlm: recompute neighbour distances from the stored keys");
  cmd->add_option("--min-lm-entropy", k->min_lm_entropy,
                  absl::StrCat("knnlm: search the datastore only where the LM's next-token entropy is at least this "
                               "many nats, p_lm alone elsewhere; 0 = everywhere (default ",
                               lm::kDefaultKnnMinEntropy, ")"));
  cmd->add_option("--min-pointers", k->min_pointers,
                  absl::StrCat("knnlm, score only: a position follows the previous position's neighbours to the keys "
                               "after them instead of searching, when at least this many lead on (RetoMaton); "
                               "0 = search everywhere (default ",
                               lm::kDefaultKnnMinPointers, ")"));
  cmd->add_option("--retrieval", k->retrieval, "retro: on, off (the ablation) or random (the control); default on");
  cmd->add_option("--search-method", k->search_method,
                  absl::StrCat("retro, ralm: how neighbours are found, dense or bm25 (default dense for retro, ",
                               services::kDefaultRalmSearchMethod, " for ralm)"))
      ->check(CLI::IsMember({"dense", "bm25"}));
  cmd->add_option("--ralm-stride", k->ralm_stride,
                  absl::StrCat("ralm: tokens between retrievals, s (default ", services::kDefaultRalmStride, ")"));
  cmd->add_option("--ralm-query-tokens", k->ralm_query_tokens,
                  absl::StrCat("ralm: tokens before a block that retrieve its passage, q (default ",
                               services::kDefaultRalmQueryTokens, ")"));
  cmd->add_option("--ralm-passage-tokens", k->ralm_passage_tokens,
                  "ralm: tokens of the retrieved chunk and its continuation put in front (default a quarter of the "
                  "context)");
}

nlohmann::json RalmJson(const KnnArgs& k, const rag::v1::ModelIdentity& model) {
  const int stride = k.ralm_stride > 0 ? k.ralm_stride : services::kDefaultRalmStride;
  const int64_t passage = k.ralm_passage_tokens > 0 ? k.ralm_passage_tokens
                                                    : services::DefaultRalmPassageTokens(model.context(), stride);
  return {{"stride", stride},
          {"query_tokens", k.ralm_query_tokens > 0 ? k.ralm_query_tokens : services::kDefaultRalmQueryTokens},
          {"passage_tokens", passage},
          {"search_method", k.search_method.empty() ? services::kDefaultRalmSearchMethod : k.search_method}};
}

void AddLeakageOption(CLI::App* cmd, KnnArgs* k) {
  cmd->add_option(
      "--leakage-filter", k->leakage_filter,
      absl::StrCat("retro: drop neighbours sharing a run of this many tokens with the predicted chunk (default ",
                   retriever::kDefaultLeakageRun, ", 0 = off)"));
}

absl::StatusOr<Served> OpenServed(const TargetArgs& target) {
  RAG_ASSIGN_OR_RETURN(auto backend, OpenTarget(target, false));
  RAG_ASSIGN_OR_RETURN(rag::v1::InfoResponse info, backend->Info());
  RAG_ASSIGN_OR_RETURN(lm::Tokenizer tok, ServedTokenizer(info));
  return Served{std::move(backend), std::move(info), std::move(tok)};
}

}  // namespace rag::cli

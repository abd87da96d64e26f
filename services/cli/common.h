// What every `rag` subcommand shares: the registered-command type main
// dispatches on, error and JSON output, the Ctrl-C flag, the TARGET options
// (--server or --model/--index, interfaces.md), the kNN-LM/RETRO request
// knobs, and opening what a target serves. Not thread-safe (one command runs
// per process).
#pragma once

#include <CLI/CLI.hpp>
#include <atomic>
#include <cmath>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <type_traits>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/utf8.h"
#include "lm/language_model.h"
#include "lm/tokenizer.h"
#include "proto/rag.pb.h"
#include "services/backend.h"
#include "services/client.h"
#include "services/request_parsing.h"

namespace rag::cli {

// The command line sends --mode to the server as given (the server parses
// it); for its own output it reads the name through services::ModeFromName.
inline bool IsMode(const std::string& name, services::Mode mode) {
  const std::optional<services::Mode> m = services::ModeFromName(name);
  return m.has_value() && *m == mode;
}
inline const std::string kLmMode = services::ModeName(services::Mode::kLm);
// --mode's help: the modes the server knows.
inline const std::string kModesHelp = services::ModeNames();
// RETRO's retrieval when --retrieval is left empty.
inline const std::string kRetrievalOn = services::RetrievalName(services::Retrieval::kOn);

using nlohmann::json;

// A registered subcommand: its CLI11 node, and what runs it once the command
// line parsed to it (returns the process's exit code). The arguments it
// reads live in the closure.
struct Command {
  CLI::App* app = nullptr;
  std::function<int()> run;
};

// Set by SIGINT/SIGTERM once InstallStopHandlers ran; long jobs poll it and
// stop cleanly.
extern std::atomic<bool> g_stop;
// A first Ctrl-C sets g_stop; a second kills at once.
void InstallStopHandlers();

// Prints "rag: error: MESSAGE" on stderr; the exit code: 130 for Cancelled,
// else 1.
int Fail(const absl::Status& status);

// One line of JSON on stdout. Texts are UTF-8 already (see
// rag::ToValidUtf8); a stray byte is replaced rather than thrown on.
void PrintJson(const json& j);

// Reads the text of --text or --text-file. Over gRPC texts are protobuf
// strings, which must be UTF-8 (`for_server`); in-process any bytes are fine.
absl::StatusOr<std::string> TextArg(const std::string& text, const std::string& text_file, const char* what,
                                    bool for_server = false);

// Opens --model MODEL_DIR ("--model MODEL_DIR is required" when empty).
absl::StatusOr<std::unique_ptr<lm::LanguageModel>> OpenModel(const std::string& dir);

// TARGET of interfaces.md: `--server ADDR` (a running `rag serve`) or
// `--model MODEL_DIR [--index INDEX_DIR]` (loaded in-process). Both answer
// through the same Engine code, so they give the same results.
struct TargetArgs {
  std::string server, model, index, embedder;
  double connect_timeout = 10;
  double rpc_timeout = 0;
  std::string auth_token_file, tls_ca, tls_server_name;
  bool tls = false;
};

void AddTargetOptions(CLI::App* cmd, TargetArgs* t, bool with_index);

// How a client proves itself to a server and checks it: the token read from
// its file (whitespace trimmed), TLS when `tls` or a CA file is given.
absl::StatusOr<services::ClientSecurity> MakeClientSecurity(const std::string& auth_token_file, bool tls,
                                                            const std::string& tls_ca,
                                                            const std::string& tls_server_name);

// The target's backend: a gRPC client, or an in-process Engine (index
// required when `need_index`; opened for adds when `writable`).
absl::StatusOr<std::unique_ptr<services::Backend>> OpenTarget(const TargetArgs& t, bool need_index,
                                                              bool writable = false);

// The kNN-LM knobs of interfaces.md (--k, --lambda, --temperature); unset
// values (NaN, 0) take the server's defaults.
struct KnnArgs {
  // knnlm's and infgram's weight of the retrieved distribution; infgram's
  // where one token follows the matched suffix.
  double lambda = std::nan(""), lambda_sparse = std::nan("");
  double temperature = std::nan(""), min_lm_entropy = std::nan("");
  int k = 0, nprobe = 0;
  int min_pointers = -1;  // -1 = the server's default
  bool exact = false;
  // retro: on, off or random ("" = on); leakage filter in tokens (-1 = the
  // server's default, 32; 0 = off).
  std::string retrieval;
  int leakage_filter = -1;
  std::string search_method;  // retro, ralm: dense or bm25 ("" = dense)
  // ralm: retrieval stride, query and passage lengths in tokens (0 = the
  // server's defaults).
  int ralm_stride = 0, ralm_query_tokens = 0, ralm_passage_tokens = 0;
};

// --lambda, --lambda-sparse, `temperature_flag`, --k, --nprobe,
// --exact-distances, --min-lm-entropy, --min-pointers, --retrieval, --search-method,
// --ralm-stride, --ralm-query-tokens, --ralm-passage-tokens.
void AddKnnOptions(CLI::App* cmd, KnnArgs* k, const char* temperature_flag);
// --leakage-filter.
void AddLeakageOption(CLI::App* cmd, KnnArgs* k);

// Copies the set knobs into a Score, NextToken or Generate request.
template <typename Request>
void SetKnn(const KnnArgs& k, Request* req) {
  rag::v1::KnnOptions* knn = req->mutable_knn();
  if (!std::isnan(k.lambda)) knn->set_lambda(static_cast<float>(k.lambda));
  knn->set_k(k.k);
  knn->set_nprobe(k.nprobe);
  if (!std::isnan(k.temperature)) knn->set_temperature(static_cast<float>(k.temperature));
  if (!std::isnan(k.min_lm_entropy)) knn->set_min_lm_entropy(static_cast<float>(k.min_lm_entropy));
  if (k.min_pointers >= 0) knn->set_min_pointers(k.min_pointers);
  if (!std::isnan(k.lambda)) req->mutable_infgram()->set_lambda(static_cast<float>(k.lambda));
  if (!std::isnan(k.lambda_sparse)) req->mutable_infgram()->set_lambda_sparse(static_cast<float>(k.lambda_sparse));
  req->mutable_retro()->set_retrieval(k.retrieval);
  if constexpr (!std::is_same_v<Request, rag::v1::GenerateRequest>) knn->set_exact_distances(k.exact);
  if constexpr (std::is_same_v<Request, rag::v1::ScoreRequest>) {
    if (k.leakage_filter >= 0) req->mutable_retro()->set_leakage_filter(k.leakage_filter);
    req->mutable_retro()->set_search_method(k.search_method);
  }
  rag::v1::RalmOptions* ralm = req->mutable_ralm();
  ralm->set_stride(k.ralm_stride);
  ralm->set_query_tokens(k.ralm_query_tokens);
  ralm->set_passage_tokens(k.ralm_passage_tokens);
  ralm->set_search_method(k.search_method);
}

// The In-Context RALM settings a request with these knobs runs with (the
// server's defaults filled in), for evaluation JSON.
nlohmann::json RalmJson(const KnnArgs& k, const rag::v1::ModelIdentity& model);

// What every evaluation starts from: the target, what it serves, and its
// tokenizer (evaluations tokenize as the served model does).
struct Served {
  std::unique_ptr<services::Backend> backend;
  rag::v1::InfoResponse info;
  lm::Tokenizer tokenizer;
};

absl::StatusOr<Served> OpenServed(const TargetArgs& target);

}  // namespace rag::cli

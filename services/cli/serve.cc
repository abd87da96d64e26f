#include "services/cli/serve.h"

#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "common/status.h"
#include "lm/runtime.h"
#include "services/engine.h"
#include "services/metrics.h"
#include "services/server.h"

namespace rag::cli {
namespace {

struct ServeArgs {
  std::string model, index, embedder, listen = "127.0.0.1:50051", port_file, log_level = "info";
  bool log_requests = false;
  double drain_seconds = 10;
  std::string metrics_listen, metrics_port_file;
  std::string tls_cert, tls_key, auth_token_file;
  // A sharded front: the shards and how to reach them.
  std::string shards, shards_file, shard_auth_token_file, shard_tls_ca, shard_tls_server_name;
  bool shard_tls = false;
  double shard_timeout = 60, shard_connect_timeout = 10;
  rag::services::EngineLimits limits;
  int max_message_bytes = 64 << 20;
  bool read_only = false;
  bool no_embed_batching = false;
};

// The shard addresses of --shards (comma-separated) and --shards-file (one
// per line, # comments).
absl::StatusOr<std::vector<std::string>> ShardAddresses(const ServeArgs& a) {
  std::vector<std::string> out;
  auto add = [&](absl::string_view list, absl::string_view separators) {
    for (absl::string_view item : absl::StrSplit(list, absl::ByAnyChar(separators))) {
      item = absl::StripAsciiWhitespace(item.substr(0, item.find('#')));
      if (!item.empty()) out.emplace_back(item);
    }
  };
  add(a.shards, ",");
  if (!a.shards_file.empty()) {
    RAG_ASSIGN_OR_RETURN(std::string text, rag::ReadFile(a.shards_file));
    for (absl::string_view line : absl::StrSplit(text, '\n')) add(line.substr(0, line.find('#')), ",");
  }
  return out;
}

int RunServe(const ServeArgs& a) {
  if (a.log_level != "info" && a.log_level != "debug") {
    return Fail(absl::InvalidArgumentError("--log-level must be info or debug"));
  }
  rag::services::EngineOptions eo;
  auto shards = ShardAddresses(a);
  if (!shards.ok()) return Fail(shards.status());
  eo.shards = *shards;
  if (!eo.shards.empty()) {
    auto security = MakeClientSecurity(a.shard_auth_token_file, a.shard_tls, a.shard_tls_ca, a.shard_tls_server_name);
    if (!security.ok()) return Fail(security.status());
    eo.shard_options.security = *security;
    eo.shard_options.rpc_timeout_s = a.shard_timeout;
    eo.shard_options.connect_timeout_s = a.shard_connect_timeout;
  }
  eo.model_dir = a.model;
  eo.index_dir = a.index;
  eo.embedder_path = a.embedder;
  eo.writable_index = !a.read_only;
  eo.limits = a.limits;
  eo.batch_embeddings = !a.no_embed_batching;
  rag::services::ServerOptions so;
  so.listen = a.listen;
  so.log_requests = a.log_requests || a.log_level == "debug";
  so.max_message_bytes = a.max_message_bytes;
  so.tls_cert_file = a.tls_cert;
  so.tls_key_file = a.tls_key;
  so.auth_token_file = a.auth_token_file;
  if (!rag::services::IsLoopback(a.listen) && a.tls_cert.empty()) {
    std::fprintf(stderr,
                 "serve: WARNING: listening on %s without TLS: anyone who can reach the port can read the index%s, "
                 "and tokens and texts cross the network in the clear (use --tls-cert/--tls-key and "
                 "--auth-token-file)\n",
                 a.listen.c_str(), a.read_only ? "" : " and add documents to it (--read-only refuses adds)");
  }
  std::unique_ptr<rag::services::Metrics> metrics;
  if (!a.metrics_listen.empty()) {
    if (!rag::services::IsLoopback(a.metrics_listen)) {
      std::fprintf(stderr, "serve: WARNING: metrics on %s are readable by anyone who can reach the port\n",
                   a.metrics_listen.c_str());
    }
    auto m = rag::services::Metrics::Start(a.metrics_listen);
    if (!m.ok()) return Fail(m.status());
    metrics = std::move(*m);
    so.metrics = metrics.get();
    const std::string mhost = a.metrics_listen.substr(0, a.metrics_listen.rfind(':'));
    std::fprintf(stderr, "serve: metrics on http://%s:%d/metrics\n", mhost.c_str(), metrics->port());
    if (!a.metrics_port_file.empty()) {
      if (auto s = rag::WriteFileAtomic(a.metrics_port_file, std::to_string(metrics->port()) + "\n"); !s.ok()) {
        return Fail(s);
      }
    }
  }
  InstallStopHandlers();
  // Listening first, NOT_SERVING: probes get an answer while the model and
  // index load and warm up.
  auto server = rag::services::Server::Start(nullptr, so);
  if (!server.ok()) return Fail(server.status());
  const int port = (*server)->port();
  const std::string host = a.listen.substr(0, a.listen.rfind(':'));
  std::fprintf(stderr, "serve: listening on %s:%d, NOT_SERVING while the model and index load\n", host.c_str(), port);
  const std::string policy = rag::lm::OpenMPWaitPolicy();
  std::fprintf(stderr,
               "serve: LibTorch threads %d over the %s OpenBLAS, OMP_WAIT_POLICY %s; concurrent calls "
               "compute on one thread each\n",
               torch::get_num_threads(), rag::lm::BlasThreading().c_str(), policy.empty() ? "unset" : policy.c_str());
  auto engine = rag::services::Engine::Open(eo);
  if (!engine.ok()) return Fail(engine.status());
  const auto warm_start = std::chrono::steady_clock::now();
  if (auto s = (*engine)->WarmUp(); !s.ok()) return Fail(s);
  std::fprintf(stderr, "serve: warmed up in %.1f s\n",
               std::chrono::duration<double>(std::chrono::steady_clock::now() - warm_start).count());
  (*server)->SetReady(engine->get());
  const std::string what = !a.index.empty()        ? ", index " + a.index
                           : !eo.shards.empty() ? ", front of " + std::to_string(eo.shards.size()) + " shards"
                                                : "";
  std::fprintf(stderr, "serve: model %s%s; SERVING on %s:%d (Ctrl-C or SIGTERM drains and stops)\n",
               a.model.c_str(), what.c_str(), host.c_str(), port);
  if (!a.port_file.empty()) {
    if (auto s = rag::WriteFileAtomic(a.port_file, std::to_string(port) + "\n"); !s.ok()) return Fail(s);
  }
  while (!g_stop.load()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  std::fprintf(stderr, "serve: draining: NOT_SERVING, no new calls, running ones have %g s\n", a.drain_seconds);
  (*server)->Shutdown(a.drain_seconds);
  engine->reset();  // saves the index after adds
  std::fprintf(stderr, "serve: stopped\n");
  return 0;
}

}  // namespace

Command AddServeCommand(CLI::App* app) {
  auto a = std::make_shared<ServeArgs>();
  auto* cmd = app->add_subcommand("serve", "serve a model and index over gRPC");
  cmd->add_option("--model", a->model, "model directory")->required();
  cmd->add_option("--index", a->index, "index directory (omit to serve the model only)");
  cmd->add_option("--embedder", a->embedder, "the TorchScript encoder the index was built with");
  cmd->add_option("--listen", a->listen, "host:port (port 0 = any free port)")->capture_default_str();
  cmd->add_option("--port-file", a->port_file, "write the bound port to this file once serving");
  cmd->add_flag("--log-requests", a->log_requests,
                "one JSON line per rpc on stderr: rpc, peer, mode and sizes, status, ms, stage timings");
  cmd->add_option("--log-level", a->log_level, "info, or debug (= --log-requests)")->capture_default_str();
  cmd->add_option("--drain-seconds", a->drain_seconds,
                  "on SIGTERM or Ctrl-C: how long running calls may take to finish before they are cancelled")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--metrics-listen", a->metrics_listen,
                  "serve Prometheus metrics at http://HOST:PORT/metrics (off by default; port 0: any free port)");
  cmd->add_option("--metrics-port-file", a->metrics_port_file, "write the metrics port to this file");
  cmd->add_flag("--read-only", a->read_only, "refuse AddDocuments");
  cmd->add_flag("--no-embed-batching", a->no_embed_batching,
                "embed each Search's queries alone (default: concurrent calls share forward passes)");
  cmd->add_option("--max-text-bytes", a->limits.max_text_bytes, "largest text in a request")->capture_default_str();
  cmd->add_option("--max-batch", a->limits.max_batch, "most texts in one Search")->capture_default_str();
  cmd->add_option("--max-generate-tokens", a->limits.max_generate_tokens, "most tokens one Generate may ask for")
      ->capture_default_str();
  cmd->add_option("--max-k", a->limits.max_k, "most neighbours one query may ask for")->capture_default_str();
  cmd->add_option("--max-top-n", a->limits.max_top_n, "most tokens NextToken may list")->capture_default_str();
  cmd->add_option("--max-id-bytes", a->limits.max_id_bytes, "longest document id")->capture_default_str();
  cmd->add_option("--max-message-bytes", a->max_message_bytes, "largest gRPC message, either way")
      ->capture_default_str()
      ->check(CLI::Range(1024, 1 << 30));
  cmd->add_option("--tls-cert", a->tls_cert, "PEM certificate chain: serve over TLS (with --tls-key)");
  cmd->add_option("--tls-key", a->tls_key, "PEM private key of --tls-cert");
  cmd->add_option("--auth-token-file", a->auth_token_file,
                  "file with a bearer token every rpc must carry (`authorization: Bearer <token>`)");
  cmd->add_option("--shards", a->shards,
                  "serve as a front of these shard servers (host:port,host:port,...; each a `rag serve --index` of "
                  "one shard), answering as one index")
      ->excludes("--index");
  cmd->add_option("--shards-file", a->shards_file, "file of shard addresses, one per line (# comments)")
      ->excludes("--index");
  cmd->add_option("--shard-auth-token-file", a->shard_auth_token_file,
                  "file with the bearer token the shards expect");
  cmd->add_flag("--shard-tls", a->shard_tls, "reach the shards over TLS (system roots or --shard-tls-ca)");
  cmd->add_option("--shard-tls-ca", a->shard_tls_ca, "PEM root certificate(s) that verify the shards (implies --shard-tls)");
  cmd->add_option("--shard-tls-server-name", a->shard_tls_server_name,
                  "name the shards' certificates carry, when not their address's host");
  cmd->add_option("--shard-timeout", a->shard_timeout,
                  "deadline of a call to the shards, seconds, when the request has none")
      ->capture_default_str();
  cmd->add_option("--shard-connect-timeout", a->shard_connect_timeout, "seconds to wait for each shard at start")
      ->capture_default_str();
  return {cmd, [a] { return RunServe(*a); }};
}

}  // namespace rag::cli

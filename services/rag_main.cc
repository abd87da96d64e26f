// The `rag` command line: one binary, one subcommand per job
// (interfaces.md). Results go to stdout (--json for machines), logs and
// progress to stderr; every failure prints a clear error and exits non-zero.
#include <torch/torch.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <chrono>
#include <thread>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <cmath>
#include <iostream>
#include <set>
#include <sstream>
#include <nlohmann/json.hpp>
#include <optional>

#include "absl/strings/ascii.h"
#include "common/file_util.h"
#include "common/progress.h"
#include "common/status.h"
#include "eval/extraction.h"
#include "eval/memorization.h"
#include "eval/perplexity.h"
#include "eval/probes.h"
#include "eval/report.h"
#include "index_builder/corpus_reader.h"
#include "index_builder/index_builder.h"
#include "index_builder/retro_training.h"
#include "lm/data_split.h"
#include "lm/generator.h"
#include "lm/knnlm.h"
#include "lm/language_model.h"
#include "lm/runtime.h"
#include "lm/scorer.h"
#include "lm/train_pipeline.h"
#include "retriever/chunk_store.h"
#include "retriever/retriever.h"
#include "retriever/token_counts.h"
#include "retriever/vector_index.h"
#include "services/client.h"
#include "services/engine.h"
#include "services/server.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::atomic<bool> g_stop{false};

extern "C" void OnSignal(int) {
  g_stop.store(true);
  // A second Ctrl-C kills at once.
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);
}

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "rag: error: %s\n", std::string(status.message()).c_str());
  return status.code() == absl::StatusCode::kCancelled ? 130 : 1;
}

// Texts are UTF-8 already (see services::ToValidUtf8); replace rather than
// throw if a stray byte gets through.
void PrintJson(const json& j) { std::cout << j.dump(-1, ' ', false, json::error_handler_t::replace) << std::endl; }

// Reads the text of --text or --text-file. Over gRPC texts are protobuf
// strings, which must be UTF-8; in-process any bytes are fine.
absl::StatusOr<std::string> TextArg(const std::string& text, const std::string& text_file, const char* what,
                                    bool for_server = false) {
  std::string value = text;
  if (!text_file.empty()) {
    RAG_ASSIGN_OR_RETURN(value, rag::ReadFile(text_file));
  }
  if (for_server && !rag::services::IsValidUtf8(value)) {
    return absl::InvalidArgumentError(std::string(what) +
                                      " is not valid UTF-8, which gRPC requires (the in-process form, "
                                      "--model, accepts any bytes)");
  }
  return value;
}

struct TrainArgs {
  std::string corpus, out, arch = "lm", preset = "small", config_file, index, init, gpt2_vocab;
  std::string exclude_documents, prompt_search = "bm25", neighbour_search = "dense";
  int64_t prompt_windows = -1;
  int prompts_per_document = 4;
  double prompt_own_document = 0.0;
  int64_t own_document_filter = 0;
  int64_t steps = 0, batch_size = 0, seq_len = 0, checkpoint_every = -1, eval_every = -1, warmup = -1;
  int vocab_size = 4096;
  double lr = 0, validation_fraction = 0.05;
  uint64_t seed = 1234;
  bool resume = false, overwrite = false, json_out = false, quiet = false, train_all = false;
  int nprobe = 16;
};

// Trainer flags common to both architectures, over `o`'s preset values.
template <typename Options>
void ApplyTrainerFlags(const TrainArgs& a, Options* o) {
  o->seed = a.seed;
  o->show_progress = !a.quiet;
  if (a.steps > 0) {
    o->steps = a.steps;
    o->warmup_steps = std::min(o->warmup_steps, std::max<int64_t>(1, a.steps / 10));
  }
  if (a.batch_size > 0) o->batch_size = a.batch_size;
  if (a.lr > 0) o->lr = a.lr;
  if (a.warmup >= 0) o->warmup_steps = a.warmup;
  if (a.checkpoint_every >= 0) o->checkpoint_every = a.checkpoint_every;
  if (a.eval_every >= 0) o->eval_every = a.eval_every;
}

int RunTrainRetro(const TrainArgs& a) {
  rag::index_builder::RetroTrainJob job;
  if (!a.corpus.empty()) {
    // RETRO trains on the index's own documents (their chunks are what the
    // neighbours were computed for); a corpus restricts which of them.
    auto docs = rag::index_builder::ReadCorpus(a.corpus);
    if (!docs.ok()) return Fail(docs.status());
    for (const auto& d : *docs) job.only_documents.insert(d.id);
  }
  if (!a.exclude_documents.empty()) {
    auto docs = rag::index_builder::ReadCorpus(a.exclude_documents);
    if (!docs.ok()) return Fail(rag::Annotate(docs.status(), "--exclude-documents"));
    for (const auto& d : *docs) job.exclude_documents.insert(d.id);
  }
  job.prompts_per_document = a.prompts_per_document;
  job.prompt_search = a.prompt_search;
  job.neighbour_search = a.neighbour_search;
  job.own_document_filter = a.own_document_filter;
  job.prompt_own_document = a.prompt_own_document;
  job.out_dir = a.out;
  job.index_dir = a.index;
  job.base_dir = a.init;
  job.resume = a.resume;
  job.overwrite = a.overwrite;
  job.nprobe = a.nprobe;
  job.trainer = rag::index_builder::RetroPresetOptions(a.preset);
  ApplyTrainerFlags(a, &job.trainer);
  job.trainer.freeze_decoder = !a.train_all;
  if (a.prompt_windows >= 0) job.trainer.prompt_windows = a.prompt_windows;
  if (a.seq_len > 0) return Fail(absl::InvalidArgumentError("--seq-len: RETRO trains on full-context windows"));
  if (!a.config_file.empty()) {
    auto text = rag::ReadFile(a.config_file);
    if (!text.ok()) return Fail(rag::Annotate(text.status(), "--config"));
    job.config_overrides_json = *text;
  }
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  auto summary = rag::index_builder::TrainRetro(job, &g_stop);
  if (!summary.ok()) return Fail(summary.status());
  json j = {{"model_dir", a.out},
            {"arch", "retro"},
            {"retrofit", !a.train_all},
            {"steps", summary->steps},
            {"train_documents", summary->train_documents},
            {"train_chunks", summary->train_chunks},
            {"validation_documents", summary->validation_documents},
            {"validation_loss", summary->validation_loss},
            {"validation_loss_no_retrieval", summary->validation_loss_no_retrieval},
            {"train_prompt_windows", summary->train_prompt_windows},
            {"prompt_loss", summary->prompt_loss},
            {"prompt_loss_no_retrieval", summary->prompt_loss_no_retrieval},
            {"seconds", summary->seconds}};
  if (a.json_out) {
    PrintJson(j);
  } else {
    std::printf("trained %s (RETRO, %s): %lld steps in %.0f s; validation loss %.3f with neighbours, %.3f "
                "without (ppl %.1f vs %.1f on the trainer's windows)\n",
                a.out.c_str(), a.train_all ? "all weights" : "retrofitted", static_cast<long long>(summary->steps),
                summary->seconds, summary->validation_loss, summary->validation_loss_no_retrieval,
                std::exp(summary->validation_loss), std::exp(summary->validation_loss_no_retrieval));
    if (summary->validation_prompt_windows > 0) {
      std::printf("held-out prompt windows: continuation loss %.3f with the prompt's neighbours, %.3f without\n",
                  summary->prompt_loss, summary->prompt_loss_no_retrieval);
    }
  }
  return 0;
}

int RunTrain(const TrainArgs& a) {
  if (a.arch == "retro") return RunTrainRetro(a);
  if (a.corpus.empty()) return Fail(absl::InvalidArgumentError("--corpus is required"));
  if (a.arch != "lm") return Fail(absl::InvalidArgumentError("--arch must be lm or retro, got '" + a.arch + "'"));
  if (a.train_all) return Fail(absl::InvalidArgumentError("--train-all applies to --arch retro only"));
  if (!a.init.empty() || !a.index.empty() || !a.exclude_documents.empty() || a.prompt_windows >= 0) {
    return Fail(absl::InvalidArgumentError(
        "--init, --index, --exclude-documents and --prompt-windows apply to --arch retro only"));
  }
  auto options = rag::lm::PresetTrainerOptions(a.preset);
  if (!options.ok()) return Fail(options.status());
  rag::lm::TrainJob job;
  job.out_dir = a.out;
  job.preset = a.preset;
  job.vocab_size = a.vocab_size;
  job.validation_fraction = a.validation_fraction;
  job.resume = a.resume;
  job.overwrite = a.overwrite;
  job.trainer = *options;
  ApplyTrainerFlags(a, &job.trainer);
  if (a.seq_len > 0) job.trainer.seq_len = a.seq_len;
  if (!a.config_file.empty()) {
    auto text = rag::ReadFile(a.config_file);
    if (!text.ok()) return Fail(rag::Annotate(text.status(), "--config"));
    job.config_overrides_json = *text;
  }
  rag::index_builder::CorpusStats stats;
  auto docs = rag::index_builder::ReadCorpus(a.corpus, &stats);
  if (!docs.ok()) return Fail(docs.status());
  std::fprintf(stderr, "train: corpus %s: %zu documents, %.1f MB\n", a.corpus.c_str(), stats.documents,
               static_cast<double>(stats.bytes) / 1e6);
  if (!a.gpt2_vocab.empty()) {
    // Bring GPT-2's vocabulary instead of training one: it becomes the
    // model directory's tokenizer.json, which training then reuses.
    const fs::path tok_path = fs::path(a.out) / rag::lm::kTokenizerFile;
    if (fs::exists(tok_path) && !a.resume && !a.overwrite) {
      return Fail(absl::FailedPreconditionError("'" + tok_path.string() + "' already exists"));
    }
    auto tok = rag::lm::Tokenizer::LoadGpt2((fs::path(a.gpt2_vocab) / "encoder.json").string(),
                                            (fs::path(a.gpt2_vocab) / "vocab.bpe").string());
    if (!tok.ok()) return Fail(rag::Annotate(tok.status(), "--gpt2-vocab"));
    std::error_code ec;
    fs::create_directories(a.out, ec);
    if (auto s = tok->Save(tok_path.string()); !s.ok()) return Fail(s);
  }
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  auto summary = rag::lm::TrainLanguageModel(std::move(*docs), job, &g_stop);
  if (!summary.ok()) return Fail(summary.status());
  json j = {{"model_dir", a.out},
            {"steps", summary->steps},
            {"train_tokens", summary->train_tokens},
            {"validation_tokens", summary->validation_tokens},
            {"final_train_loss", summary->final_loss},
            {"validation_loss", summary->validation_loss},
            {"seconds", summary->seconds}};
  if (a.json_out) {
    PrintJson(j);
  } else {
    std::printf("trained %s: %lld steps in %.0f s, train loss %.3f, validation loss %.3f (ppl %.1f on the trainer's windows)\n",
                a.out.c_str(), static_cast<long long>(summary->steps), summary->seconds, summary->final_loss,
                summary->validation_loss, std::exp(summary->validation_loss));
  }
  return 0;
}

absl::StatusOr<std::unique_ptr<rag::lm::LanguageModel>> OpenModel(const std::string& dir) {
  if (dir.empty()) return absl::InvalidArgumentError("--model MODEL_DIR is required");
  auto model = rag::lm::LanguageModel::Open(dir);
  if (!model.ok()) return rag::Annotate(model.status(), "opening model");
  return model;
}

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

absl::StatusOr<std::unique_ptr<rag::services::Backend>> OpenTarget(const TargetArgs& t, bool need_index,
                                                                   bool writable = false) {
  if (!t.server.empty() && (!t.model.empty() || !t.index.empty())) {
    return absl::InvalidArgumentError("give either --server ADDR or --model MODEL_DIR [--index INDEX_DIR], not both");
  }
  if (!t.server.empty()) {
    rag::services::ClientSecurity security;
    if (!t.auth_token_file.empty()) {
      RAG_ASSIGN_OR_RETURN(std::string token, rag::ReadFile(t.auth_token_file));
      security.auth_token = std::string(absl::StripAsciiWhitespace(token));
    }
    security.tls = t.tls || !t.tls_ca.empty();
    if (!t.tls_ca.empty()) {
      RAG_ASSIGN_OR_RETURN(security.tls_ca_pem, rag::ReadFile(t.tls_ca));
    }
    security.tls_server_name = t.tls_server_name;
    RAG_ASSIGN_OR_RETURN(auto client, rag::services::GrpcBackend::Connect(t.server, t.connect_timeout, security));
    client->set_rpc_timeout(t.rpc_timeout);
    return std::unique_ptr<rag::services::Backend>(std::move(client));
  }
  if (t.model.empty()) return absl::InvalidArgumentError("give --server ADDR or --model MODEL_DIR");
  if (need_index && t.index.empty()) return absl::InvalidArgumentError("--index INDEX_DIR is required with --model");
  rag::services::EngineOptions o;
  o.model_dir = t.model;
  o.index_dir = t.index;
  o.embedder_path = t.embedder;
  o.writable_index = writable;
  // A local user may score a whole book at once; only a shared server needs
  // protecting from huge requests.
  o.limits.max_text_bytes = int64_t{1} << 31;
  RAG_ASSIGN_OR_RETURN(auto engine, rag::services::Engine::Open(o));
  return std::unique_ptr<rag::services::Backend>(std::move(engine));
}

// The kNN-LM knobs of interfaces.md (--k, --lambda, --temperature); unset
// values (NaN, 0) take the server's defaults.
struct KnnArgs {
  double lambda = std::nan(""), temperature = std::nan("");
  int k = 0, nprobe = 0;
  bool exact = false;
  // retro: on, off or random ("" = on); leakage filter in tokens (-1 = the
  // server's default, 32; 0 = off).
  std::string retrieval;
  int leakage_filter = -1;
  std::string search_method;  // retro: dense or bm25 ("" = dense)
};

void AddKnnOptions(CLI::App* cmd, KnnArgs* k, const char* temperature_flag) {
  cmd->add_option("--lambda", k->lambda, "knnlm: weight of p_knn in [0, 1] (default 0.25)");
  cmd->add_option(temperature_flag, k->temperature, "knnlm: temperature of the neighbour distribution (default 1)");
  cmd->add_option("--k", k->k, "knnlm: neighbours per token (default 1024)");
  cmd->add_option("--nprobe", k->nprobe, "knnlm: IVF lists of the datastore to visit (default 4)");
  cmd->add_flag("--exact-distances", k->exact, "knnlm: recompute neighbour distances from the stored keys");
  cmd->add_option("--retrieval", k->retrieval, "retro: on, off (the ablation) or random (the control); default on");
  cmd->add_option("--search-method", k->search_method, "retro: how neighbours are found, dense or bm25 (default dense)")
      ->check(CLI::IsMember({"dense", "bm25"}));
}

void AddLeakageOption(CLI::App* cmd, KnnArgs* k) {
  cmd->add_option("--leakage-filter", k->leakage_filter,
                  "retro: drop neighbours sharing a run of this many tokens with the predicted chunk (default 32, 0 = off)");
}

template <typename Request>
void SetKnn(const KnnArgs& k, Request* req) {
  rag::v1::KnnOptions* knn = req->mutable_knn();
  if (!std::isnan(k.lambda)) knn->set_lambda(static_cast<float>(k.lambda));
  knn->set_k(k.k);
  knn->set_nprobe(k.nprobe);
  if (!std::isnan(k.temperature)) knn->set_temperature(static_cast<float>(k.temperature));
  req->mutable_retro()->set_retrieval(k.retrieval);
  if constexpr (!std::is_same_v<Request, rag::v1::GenerateRequest>) knn->set_exact_distances(k.exact);
  if constexpr (std::is_same_v<Request, rag::v1::ScoreRequest>) {
    if (k.leakage_filter >= 0) req->mutable_retro()->set_leakage_filter(k.leakage_filter);
    req->mutable_retro()->set_search_method(k.search_method);
  }
}

// The tokenizer of the model a target serves (evaluations tokenize as it does).
absl::StatusOr<rag::lm::Tokenizer> ServedTokenizer(const rag::v1::InfoResponse& info) {
  auto tok = rag::lm::Tokenizer::FromJson(info.tokenizer_json());
  if (!tok.ok()) return rag::Annotate(tok.status(), "the served tokenizer");
  return tok;
}

// What every evaluation starts from: the target, what it serves, and its
// tokenizer (evaluations tokenize as the served model does).
struct Served {
  std::unique_ptr<rag::services::Backend> backend;
  rag::v1::InfoResponse info;
  rag::lm::Tokenizer tokenizer;
};

absl::StatusOr<Served> OpenServed(const TargetArgs& target) {
  RAG_ASSIGN_OR_RETURN(auto backend, OpenTarget(target, false));
  RAG_ASSIGN_OR_RETURN(rag::v1::InfoResponse info, backend->Info());
  RAG_ASSIGN_OR_RETURN(rag::lm::Tokenizer tok, ServedTokenizer(info));
  return Served{std::move(backend), std::move(info), std::move(tok)};
}

// A corpus tokenized with `tok`, and the exact counts over all of it.
struct CountedCorpus {
  std::vector<rag::Document> docs;
  std::vector<std::vector<int32_t>> tokens;  // per document
  rag::retriever::TokenCounts counts;
};

absl::StatusOr<CountedCorpus> CountCorpus(const std::string& path, const rag::lm::Tokenizer& tok) {
  RAG_ASSIGN_OR_RETURN(std::vector<rag::Document> docs, rag::index_builder::ReadCorpus(path));
  std::vector<std::vector<int32_t>> tokens;
  for (const auto& d : docs) tokens.push_back(tok.Encode(d.text));
  RAG_ASSIGN_OR_RETURN(rag::retriever::TokenCounts counts, rag::retriever::TokenCounts::Build(tokens));
  return CountedCorpus{std::move(docs), std::move(tokens), std::move(counts)};
}

// Runs a generation and collects the generated token ids.
absl::StatusOr<std::pair<std::vector<int32_t>, rag::v1::GenerateResponse>> GenerateIds(
    rag::services::Backend& backend, const rag::v1::GenerateRequest& req) {
  std::vector<int32_t> ids;
  RAG_ASSIGN_OR_RETURN(rag::v1::GenerateResponse done, backend.Generate(req, [&](const rag::v1::GenerateResponse& t) {
    ids.push_back(t.token_id());
    return true;
  }));
  return std::make_pair(std::move(ids), std::move(done));
}

int RunScore(const TargetArgs& target, const std::string& text_arg, const std::string& text_file,
             const std::string& mode, const KnnArgs& knn, bool json_out, int prompt_bytes) {
  auto text = TextArg(text_arg, text_file, "--text", !target.server.empty());
  if (!text.ok()) return Fail(text.status());
  if (text->empty()) return Fail(absl::InvalidArgumentError("--text is empty: nothing to score"));
  auto backend = OpenTarget(target, false);
  if (!backend.ok()) return Fail(backend.status());
  rag::v1::ScoreRequest req;
  req.set_text(*text);
  req.set_mode(mode);
  req.set_per_token(json_out);
  req.set_prompt_bytes(prompt_bytes);
  SetKnn(knn, &req);
  auto r = (*backend)->Score(req);
  if (!r.ok()) return Fail(r.status());
  if (json_out) {
    json per_token = json::array();
    for (const auto& t : r->token_scores()) {
      per_token.push_back({{"token", t.id()}, {"text", rag::services::ToValidUtf8(t.piece())}, {"logprob", t.logprob()}});
    }
    PrintJson({{"mode", mode}, {"tokens", r->tokens()}, {"nll", r->nll()}, {"perplexity", r->perplexity()},
               {"token_logprobs", per_token}});
  } else {
    std::printf("tokens %lld  nll %.4f  perplexity %.2f\n", static_cast<long long>(r->tokens()), r->nll(),
                r->perplexity());
  }
  return 0;
}

struct GenerateArgs {
  TargetArgs target;
  KnnArgs knn;
  std::string prompt, prompt_file, mode = "lm";
  rag::lm::SamplingOptions sampling;
  bool json_out = false, show_neighbours = false;
};

int RunGenerate(GenerateArgs a) {
  auto prompt = TextArg(a.prompt, a.prompt_file, "--prompt", !a.target.server.empty());
  if (!prompt.ok()) return Fail(prompt.status());
  auto backend = OpenTarget(a.target, false);
  if (!backend.ok()) return Fail(backend.status());
  rag::v1::GenerateRequest req;
  req.set_prompt(*prompt);
  req.set_mode(a.mode);
  if (a.sampling.max_tokens < 1 || a.sampling.max_tokens > (1 << 30)) {
    return Fail(absl::InvalidArgumentError("--max-tokens must be >= 1"));
  }
  req.set_max_tokens(static_cast<int32_t>(a.sampling.max_tokens));
  req.mutable_sampling()->set_temperature(static_cast<float>(a.sampling.temperature));
  req.mutable_sampling()->set_top_k(static_cast<int32_t>(a.sampling.top_k));
  req.mutable_sampling()->set_top_p(static_cast<float>(a.sampling.top_p));
  req.mutable_sampling()->set_seed(a.sampling.seed);
  SetKnn(a.knn, &req);
  auto done = (*backend)->Generate(req, [&](const rag::v1::GenerateResponse& token) {
    if (!a.json_out && !token.end_of_text()) std::cout << token.piece() << std::flush;
    return g_stop.load() == false;
  });
  if (!done.ok()) return Fail(done.status());
  json retrievals = json::array();
  for (const auto& rv : done->retrievals()) {
    json nbs = json::array();
    for (const auto& nb : rv.neighbours()) nbs.push_back(nb.text());
    retrievals.push_back({{"chunk", rv.chunk()}, {"neighbours", nbs}});
  }
  if (a.json_out) {
    json j = {{"mode", a.mode}, {"prompt", *prompt}, {"text", done->text()}, {"tokens", done->tokens()}};
    if (a.mode == "retro") j["retrievals"] = retrievals;
    PrintJson(j);
  } else {
    std::cout << std::endl;
    if (a.show_neighbours) {
      for (const auto& rv : retrievals) {
        std::printf("  [retrieved with chunk %lld]\n", static_cast<long long>(rv["chunk"].get<int64_t>()));
        for (const auto& nb : rv["neighbours"]) {
          std::string t = nb.get<std::string>();
          for (char& ch : t) if (ch == '\n') ch = ' ';
          if (t.size() > 160) t = t.substr(0, 160) + "...";
          std::printf("    - %s\n", t.c_str());
        }
      }
    }
  }
  return 0;
}

struct NextTokenArgs {
  TargetArgs target;
  KnnArgs knn;
  std::string text, text_file, mode = "lm";
  int top_n = 10;
  bool json_out = false;
};

int RunNextToken(const NextTokenArgs& a) {
  auto text = TextArg(a.text, a.text_file, "--text", !a.target.server.empty());
  if (!text.ok()) return Fail(text.status());
  auto backend = OpenTarget(a.target, false);
  if (!backend.ok()) return Fail(backend.status());
  rag::v1::NextTokenRequest req;
  req.set_text(*text);
  req.set_mode(a.mode);
  req.set_top_n(a.top_n);
  SetKnn(a.knn, &req);
  auto r = (*backend)->NextToken(req);
  if (!r.ok()) return Fail(r.status());
  json tokens = json::array();
  for (const auto& t : r->tokens()) {
    tokens.push_back({{"token", t.id()}, {"text", rag::services::ToValidUtf8(t.piece())},
                      {"probability", t.probability()}, {"logprob", t.logprob()}});
  }
  if (a.json_out) {
    PrintJson({{"mode", r->mode()}, {"tokens", tokens}});
  } else {
    for (const auto& t : tokens) {
      std::printf("%8.4f  %s\n", t["probability"].get<double>(), json(t["text"]).dump().c_str());
    }
  }
  return 0;
}

struct EvalPplArgs {
  TargetArgs target;
  KnnArgs knn;
  std::string corpus, split = "all", mode = "lm", baseline = "unigram", output, sweep, report, report_name;
  int64_t stride = 0;
  bool json_out = false, quiet = false, exclude_own = false;
};

struct Sweep {
  std::vector<double> lambdas;
  std::vector<double> temperatures;  // empty: the request's temperature only
  bool empty() const { return lambdas.empty(); }
};

// --sweep lambda=0.1,0.25,0.5[;temperature=1,10,30]. Lambdas cost nothing
// (each scoring pass returns both distributions); each temperature is one
// scoring pass.
absl::StatusOr<Sweep> ParseSweep(const std::string& spec) {
  Sweep out;
  if (spec.empty()) return out;
  const std::string usage = "--sweep must look like lambda=0.1,0.25,0.5 or lambda=0.1,0.25;temperature=1,10";
  std::stringstream parts(spec);
  std::string part;
  while (std::getline(parts, part, ';')) {
    const size_t eq = part.find('=');
    if (eq == std::string::npos) return absl::InvalidArgumentError(usage);
    const std::string name = part.substr(0, eq);
    std::vector<double>* values = name == "lambda" ? &out.lambdas : name == "temperature" ? &out.temperatures : nullptr;
    if (values == nullptr || !values->empty()) return absl::InvalidArgumentError(usage);
    std::stringstream ss(part.substr(eq + 1));
    std::string item;
    while (std::getline(ss, item, ',')) {
      char* end = nullptr;
      const double v = std::strtod(item.c_str(), &end);
      const bool ok = !item.empty() && *end == '\0' &&
                      (name == "lambda" ? (v >= 0 && v <= 1) : (v > 0 && std::isfinite(v)));
      if (!ok) {
        return absl::InvalidArgumentError("--sweep: '" + item + "' is not a " +
                                          (name == "lambda" ? "lambda in [0, 1]" : "temperature > 0"));
      }
      values->push_back(v);
    }
    if (values->empty()) return absl::InvalidArgumentError(usage);
  }
  if (out.lambdas.empty()) return absl::InvalidArgumentError("--sweep needs lambda=...: " + usage);
  return out;
}

int RunEvalPerplexity(const EvalPplArgs& a) {
  if (a.baseline != "unigram" && a.baseline != "none") {
    return Fail(absl::InvalidArgumentError("--baseline must be unigram or none"));
  }
  if (a.stride < 0 || a.stride > (1 << 30)) return Fail(absl::InvalidArgumentError("--stride must be >= 0"));
  auto sweep = ParseSweep(a.sweep);
  if (!sweep.ok()) return Fail(sweep.status());
  if (!sweep->empty() && a.mode != "knnlm") return Fail(absl::InvalidArgumentError("--sweep needs --mode knnlm"));
  auto backend = OpenTarget(a.target, false);
  if (!backend.ok()) return Fail(backend.status());
  auto docs = rag::index_builder::ReadCorpus(a.corpus);
  if (!docs.ok()) return Fail(docs.status());
  // The split and tokenizer come from the served model, so --server and
  // --model select and count the same documents and tokens.
  auto info = (*backend)->Info();
  if (!info.ok()) return Fail(info.status());
  std::vector<rag::Document> all = *docs;
  std::vector<rag::Document> selected = std::move(*docs);
  if ((a.split != "all" || a.baseline == "unigram") && info->split_json().empty()) {
    return Fail(absl::FailedPreconditionError("the model has no split.json: use --split all --baseline none"));
  }
  if (a.split != "all") {
    auto sel = rag::lm::SelectSplit(std::move(selected), info->split_json(), a.split);
    if (!sel.ok()) return Fail(sel.status());
    selected = std::move(*sel);
    if (selected.empty()) {
      return Fail(absl::InvalidArgumentError("no document of --corpus is in the model's " + a.split + " split"));
    }
  }
  size_t total_bytes = 0;
  for (const auto& d : selected) total_bytes += d.text.size();
  std::unique_ptr<rag::Progress> progress;
  if (!a.quiet) progress = std::make_unique<rag::Progress>("perplexity", static_cast<int64_t>(total_bytes), "bytes");
  double sum = 0;
  int64_t tokens = 0, documents = 0;
  size_t done = 0;
  // With a sweep: the summed NLL at each (temperature, lambda), and the LM's
  // alone. The headline perplexity is the first temperature's pass.
  std::vector<std::optional<double>> temperatures;
  for (double t : sweep->temperatures) temperatures.push_back(t);
  if (temperatures.empty()) temperatures.push_back(std::nullopt);
  std::vector<std::vector<double>> sweep_sum(temperatures.size(), std::vector<double>(sweep->lambdas.size(), 0.0));
  double lm_sum = 0;
  int64_t filtered = 0;
  for (const auto& d : selected) {
    done += d.text.size();
    if (d.text.empty()) continue;
    if (!a.target.server.empty() && !rag::services::IsValidUtf8(d.text)) {
      return Fail(absl::InvalidArgumentError("document '" + d.id + "' is not valid UTF-8, which gRPC requires; "
                                             "evaluate it in-process (--model)"));
    }
    for (size_t ti = 0; ti < temperatures.size(); ++ti) {
      rag::v1::ScoreRequest req;
      req.set_text(d.text);
      req.set_mode(a.mode);
      req.set_stride(static_cast<int32_t>(a.stride));
      SetKnn(a.knn, &req);
      if (temperatures[ti]) req.mutable_knn()->set_temperature(static_cast<float>(*temperatures[ti]));
      if (a.exclude_own) req.set_exclude_doc_id(d.id);
      req.set_components(!sweep->empty());
      auto r = (*backend)->Score(req);
      if (!r.ok()) return Fail(rag::Annotate(r.status(), "scoring document '" + d.id + "'"));
      if (ti > 0) {
        for (size_t s = 0; s < sweep->lambdas.size(); ++s) {
          for (int i = 0; i < r->lm_logprobs_size(); ++i) {
            sweep_sum[ti][s] -= rag::lm::InterpolateLogProb(r->lm_logprobs(i), r->knn_logprobs(i), sweep->lambdas[s]);
          }
        }
        continue;
      }
      sum -= r->logprob_sum();
      for (int i = 0; i < r->lm_logprobs_size(); ++i) {
        lm_sum -= r->lm_logprobs(i);
        for (size_t s = 0; s < sweep->lambdas.size(); ++s) {
          sweep_sum[0][s] -= rag::lm::InterpolateLogProb(r->lm_logprobs(i), r->knn_logprobs(i), sweep->lambdas[s]);
        }
      }
      tokens += r->tokens();
      filtered += r->neighbours_filtered();
    }
    documents += 1;
    if (progress) progress->Update(static_cast<int64_t>(done));
    if (g_stop.load()) return Fail(absl::CancelledError("interrupted"));
  }
  if (progress) progress->Finish();
  const double nll = tokens > 0 ? sum / static_cast<double>(tokens) : 0.0;
  json j = {{"mode", a.mode},   {"split", a.split}, {"documents", documents}, {"tokens", tokens},
            {"nll", nll},       {"perplexity", std::exp(nll)}};
  if (a.mode == "knnlm" || a.mode == "retro") j["exclude_own_document"] = a.exclude_own;
  if (a.mode == "retro") {
    j["retrieval"] = a.knn.retrieval.empty() ? "on" : a.knn.retrieval;
    j["leakage_filter"] = a.knn.leakage_filter >= 0 ? a.knn.leakage_filter : 32;
    j["neighbours_filtered"] = filtered;
  }
  if (!sweep->empty() && tokens > 0) {
    j["lm_perplexity"] = std::exp(lm_sum / static_cast<double>(tokens));
    json rows = json::array();
    for (size_t ti = 0; ti < temperatures.size(); ++ti) {
      for (size_t s = 0; s < sweep->lambdas.size(); ++s) {
        const double ppl = std::exp(sweep_sum[ti][s] / static_cast<double>(tokens));
        json row = {{"lambda", sweep->lambdas[s]}, {"perplexity", ppl},
                    {"change_vs_lm", ppl / j["lm_perplexity"].get<double>() - 1}};
        row["temperature"] = temperatures[ti] ? *temperatures[ti] : (std::isnan(a.knn.temperature) ? 1.0 : a.knn.temperature);
        rows.push_back(row);
      }
    }
    j["sweep"] = rows;
  }
  if (a.baseline == "unigram") {
    auto tok = rag::lm::Tokenizer::FromJson(info->tokenizer_json());
    if (!tok.ok()) return Fail(rag::Annotate(tok.status(), "the served tokenizer"));
    auto train = rag::lm::SelectSplit(all, info->split_json(), "train");
    if (!train.ok()) return Fail(train.status());
    auto u = rag::eval::UnigramPerplexity(*tok, *train, selected);
    j["unigram_perplexity"] = u.perplexity;
    j["ratio_to_unigram"] = std::exp(nll) / u.perplexity;
  }
  if (!a.output.empty()) {
    if (auto s = rag::WriteFileAtomic(a.output, j.dump(2) + "\n"); !s.ok()) return Fail(s);
  }
  if (!a.report.empty()) {
    std::string name = a.report_name;
    if (name.empty()) {
      name = a.mode + "-" + a.split + (a.mode == "retro" ? "-retrieval-" + j["retrieval"].get<std::string>() : "") +
             (a.exclude_own ? "-own-doc-excluded" : "");
    }
    if (auto s = rag::eval::WriteReport(a.report, "perplexity", name, j.dump(2) + "\n"); !s.ok()) return Fail(s);
  }
  if (a.json_out) {
    PrintJson(j);
  } else {
    std::printf("%-10s %-10s %8s %10s %12s", "mode", "split", "docs", "tokens", "perplexity");
    if (j.contains("unigram_perplexity")) std::printf(" %12s %8s", "unigram", "ratio");
    std::printf("\n%-10s %-10s %8lld %10lld %12.2f", a.mode.c_str(), a.split.c_str(),
                static_cast<long long>(documents), static_cast<long long>(tokens), std::exp(nll));
    if (j.contains("unigram_perplexity")) {
      std::printf(" %12.2f %8.3f", j["unigram_perplexity"].get<double>(), j["ratio_to_unigram"].get<double>());
    }
    std::printf("\n");
    if (a.mode == "retro") {
      std::printf("retrieval %s, leakage filter %d tokens (%lld neighbours dropped)%s\n",
                  j["retrieval"].get<std::string>().c_str(), j["leakage_filter"].get<int>(),
                  static_cast<long long>(filtered), a.exclude_own ? ", own document excluded" : "");
    }
    if (j.contains("sweep")) {
      std::printf("\n%-12s %-8s %12s %10s   (LM alone: %.2f)\n", "temperature", "lambda", "perplexity", "vs LM",
                  j["lm_perplexity"].get<double>());
      for (const auto& row : j["sweep"]) {
        std::printf("%-12g %-8.3f %12.2f %+9.1f%%\n", row["temperature"].get<double>(), row["lambda"].get<double>(),
                    row["perplexity"].get<double>(), 100 * row["change_vs_lm"].get<double>());
      }
    }
  }
  return 0;
}

struct EvalProbesArgs {
  TargetArgs target;
  KnnArgs knn;
  std::string probes, mode = "lm", output, report, report_name;
  bool json_out = false, quiet = false, exclude_evidence = false;
};

json ProbeMetricsJson(const rag::eval::ProbeMetrics& m) {
  return {{"probes", m.probes},
          {"p_at_1", m.p_at_1},
          {"p_at_10", m.p_at_10},
          {"mrr", m.mrr},
          {"first_token", {{"p_at_1", m.first_token_p_at_1}, {"p_at_10", m.first_token_p_at_10}, {"mrr", m.first_token_mrr}}}};
}

int RunEvalProbes(const EvalProbesArgs& a) {
  auto probes = rag::eval::ReadProbes(a.probes);
  if (!probes.ok()) return Fail(probes.status());
  auto served = OpenServed(a.target);
  if (!served.ok()) return Fail(served.status());
  rag::services::Backend& backend = *served->backend;
  const rag::lm::Tokenizer& tok = served->tokenizer;
  rag::eval::TokenScorer scorer = [&](const std::string& text,
                                      const rag::eval::Probe& probe) -> absl::StatusOr<std::vector<float>> {
    rag::v1::ScoreRequest req;
    req.set_text(text);
    req.set_mode(a.mode);
    if (a.exclude_evidence) req.set_exclude_doc_id(probe.evidence_doc_id);
    req.set_per_token(true);
    SetKnn(a.knn, &req);
    // RETRO retrieves for the object with the sentence's left context.
    if (a.mode == "retro") {
      for (const std::string& s : probe.sentences) {
        const std::string left = s.substr(0, s.find(rag::eval::kMask));
        if (text.compare(0, left.size(), left) == 0) {
          req.set_prompt_bytes(static_cast<int32_t>(left.size()));
          break;
        }
      }
    }
    RAG_ASSIGN_OR_RETURN(rag::v1::ScoreResponse r, backend.Score(req));
    std::vector<float> logprobs;
    for (const auto& t : r.token_scores()) logprobs.push_back(t.logprob());
    return logprobs;
  };
  int64_t sentences = 0;
  for (const auto& p : *probes) sentences += static_cast<int64_t>(p.sentences.size() * p.candidates.size());
  std::unique_ptr<rag::Progress> progress;
  if (!a.quiet) progress = std::make_unique<rag::Progress>("probes", static_cast<int64_t>(probes->size()), "probes");
  auto report = rag::eval::EvaluateProbes(*probes, tok, scorer, [&](size_t done) {
    if (progress) progress->Update(static_cast<int64_t>(done));
  });
  if (!report.ok()) return Fail(report.status());
  if (progress) progress->Finish();
  json j = ProbeMetricsJson(report->overall);
  j["mode"] = a.mode;
  j["file"] = a.probes;
  j["sentences_scored"] = sentences;
  j["exclude_evidence"] = a.exclude_evidence;
  if (a.mode == "retro") j["retrieval"] = a.knn.retrieval.empty() ? "on" : a.knn.retrieval;
  json by_relation = json::object();
  for (const auto& [relation, m] : report->by_relation) by_relation[relation] = ProbeMetricsJson(m);
  j["by_relation"] = by_relation;
  json results = json::array();
  for (const auto& r : report->results) {
    results.push_back({{"line", r.probe->line},
                       {"relation", r.probe->relation},
                       {"subject", r.probe->subject},
                       {"object", r.probe->object},
                       {"candidates", r.probe->candidates.size()},
                       {"rank", r.rank},
                       {"first_token_rank", r.first_token_rank},
                       {"top", r.top}});
  }
  j["results"] = results;
  if (!a.output.empty()) {
    if (auto s = rag::WriteFileAtomic(a.output, j.dump(2) + "\n"); !s.ok()) return Fail(s);
  }
  if (!a.report.empty()) {
    std::string name = a.report_name;
    if (name.empty()) {
      name = a.mode + (a.mode == "retro" ? "-retrieval-" + j["retrieval"].get<std::string>() : "") +
             (a.exclude_evidence ? "-without-evidence" : "");
    }
    if (auto s = rag::eval::WriteReport(a.report, "probes", name, j.dump(2) + "\n"); !s.ok()) return Fail(s);
  }
  if (a.json_out) {
    PrintJson(j);
    return 0;
  }
  std::printf("mode %s%s%s: %lld probes, %lld sentences scored\n", a.mode.c_str(),
              a.mode == "retro" ? (", retrieval " + j["retrieval"].get<std::string>()).c_str() : "",
              a.exclude_evidence ? ", evidence documents excluded" : "",
              static_cast<long long>(report->overall.probes), static_cast<long long>(sentences));
  std::printf("%-24s %7s %7s %7s %7s   %s\n", "relation", "probes", "P@1", "P@10", "MRR",
              "first token: P@1  P@10   MRR");
  auto row = [](const std::string& name, const rag::eval::ProbeMetrics& m) {
    std::printf("%-24s %7lld %7.3f %7.3f %7.3f   %17.3f %5.3f %5.3f\n", name.c_str(), static_cast<long long>(m.probes),
                m.p_at_1, m.p_at_10, m.mrr, m.first_token_p_at_1, m.first_token_p_at_10, m.first_token_mrr);
  };
  for (const auto& [relation, m] : report->by_relation) row(relation, m);
  row("all", report->overall);
  return 0;
}

struct CountArgs {
  std::string index, model, text, text_file;
  int64_t show_documents = 10;
  bool json_out = false;
};

// Exact occurrences of a text's tokens in an index's documents.
int RunCount(const CountArgs& a) {
  namespace fs = std::filesystem;
  auto text = TextArg(a.text, a.text_file, "--text");
  if (!text.ok()) return Fail(text.status());
  if (text->empty()) return Fail(absl::InvalidArgumentError("--text is empty: nothing to count"));
  auto manifest = rag::retriever::Manifest::Load(a.index);
  if (!manifest.ok()) return Fail(manifest.status());
  // The index's own copy of the tokenizer, or the model's for indexes built
  // before there was one.
  const std::string tok_path = a.model.empty() ? (fs::path(a.index) / rag::retriever::kIndexTokenizerFile).string()
                                               : (fs::path(a.model) / "tokenizer.json").string();
  auto tok_json = rag::ReadFile(tok_path);
  if (!tok_json.ok()) {
    return Fail(rag::Annotate(tok_json.status(), "this index has no tokenizer.json (built before rag count "
                                                 "existed): pass --model MODEL_DIR"));
  }
  auto tok = rag::lm::Tokenizer::FromJson(*tok_json);
  if (!tok.ok()) return Fail(tok.status());
  if (tok->Hash() != manifest->tokenizer_hash) {
    return Fail(absl::FailedPreconditionError("the tokenizer in '" + tok_path + "' is not the index's (hash " +
                                              tok->Hash() + ", the manifest says " + manifest->tokenizer_hash + ")"));
  }
  rag::retriever::ChunkStoreOptions so;
  so.chunk_tokens = manifest->chunk_tokens;
  so.continuation_tokens = manifest->continuation_tokens;
  so.create_if_missing = false;
  so.read_only = true;
  auto store = rag::retriever::ChunkStore::Open((fs::path(a.index) / rag::retriever::kChunkStoreDir).string(), so);
  if (!store.ok()) return Fail(store.status());
  // counts.sa covers the documents of the build; with documents added since
  // (or none there), the suffix array is built afresh over all of them.
  std::optional<rag::retriever::TokenCounts> counts;
  const std::string counts_path = (fs::path(a.index) / rag::retriever::kTokenCountsFile).string();
  if (fs::exists(counts_path)) {
    auto loaded = rag::retriever::TokenCounts::Load(counts_path);
    if (!loaded.ok()) return Fail(loaded.status());
    if (loaded->documents() == (*store)->num_documents()) counts = std::move(*loaded);
  }
  if (!counts) {
    const auto t0 = std::chrono::steady_clock::now();
    auto docs = rag::retriever::DocumentTokens(**store);
    if (!docs.ok()) return Fail(docs.status());
    auto built = rag::retriever::TokenCounts::Build(*docs);
    if (!built.ok()) return Fail(built.status());
    std::fprintf(stderr, "count: suffix array over all %lld documents built in %.1f s\n",
                 static_cast<long long>(built->documents()),
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    counts = std::move(*built);
  }
  const std::vector<int32_t> ids = tok->Encode(*text);
  auto n = counts->Count(ids);
  if (!n.ok()) return Fail(n.status());
  // Byte-level BPE folds a word's leading space into its first token: inside
  // a text the phrase is " of the", not "of the". Both are counted.
  int64_t spaced = 0;
  const bool add_space = !std::isspace(static_cast<unsigned char>((*text)[0]));
  if (add_space) {
    auto m = counts->Count(tok->Encode(" " + *text));
    if (!m.ok()) return Fail(m.status());
    spaced = *m;
  }
  auto where = counts->Documents(ids, a.show_documents);  // of the exact token sequence
  if (!where.ok()) return Fail(where.status());
  // Document ids: the first chunk of each listed document names it.
  json doc_ids = json::array();
  std::vector<int64_t> wanted(where->begin(), where->end());
  size_t next = 0;
  if (!wanted.empty()) {
    auto s = (*store)->ForEachChunk(0, [&](const rag::retriever::ChunkRecord& rec) {
      while (next < wanted.size() && wanted[next] < rec.doc_index) ++next;
      if (next < wanted.size() && wanted[next] == rec.doc_index) {
        doc_ids.push_back(rec.doc_id);
        ++next;
      }
      return next < wanted.size();
    });
    if (!s.ok()) return Fail(s);
  }
  if (a.json_out) {
    json j = {{"tokens", ids.size()}, {"count", *n}, {"documents", doc_ids}, {"indexed_documents", counts->documents()}};
    if (add_space) j["count_after_a_space"] = spaced;
    PrintJson(j);
  } else {
    std::printf("%lld occurrences of these %zu tokens", static_cast<long long>(*n), ids.size());
    if (add_space) std::printf(", %lld more after a space (inside a text)", static_cast<long long>(spaced));
    std::printf(", in %lld documents", static_cast<long long>(counts->documents()));
    if (!doc_ids.empty()) {
      std::printf("; in:");
      for (const auto& id : doc_ids) std::printf(" %s", id.get<std::string>().c_str());
      if (static_cast<int64_t>(doc_ids.size()) == a.show_documents) std::printf(" ...");
    }
    std::printf("\n");
  }
  return 0;
}

struct EvalMemArgs {
  TargetArgs target;
  KnnArgs knn;
  std::string corpus, split = "train", mode = "lm", prefix_lengths = "16,32,64", output, report, report_name;
  int suffix_tokens = 50, samples = 100;
  uint64_t seed = 1;
  bool json_out = false, quiet = false, exclude_own = false;
};

int RunEvalMemorization(const EvalMemArgs& a) {
  rag::eval::MemorizationOptions mo;
  mo.prefix_lengths.clear();
  {
    std::stringstream ss(a.prefix_lengths);
    std::string item;
    while (std::getline(ss, item, ',')) {
      try {
        size_t used = 0;
        const int v = std::stoi(item, &used);
        if (used != item.size()) throw std::invalid_argument(item);
        mo.prefix_lengths.push_back(v);
      } catch (const std::exception&) {
        return Fail(absl::InvalidArgumentError("--prefix-lengths must be integers like 16,32,64, got '" +
                                               a.prefix_lengths + "'"));
      }
    }
  }
  mo.suffix_tokens = a.suffix_tokens;
  mo.samples = a.samples;
  mo.seed = a.seed;
  auto served = OpenServed(a.target);
  if (!served.ok()) return Fail(served.status());
  rag::services::Backend& backend = *served->backend;
  const rag::v1::InfoResponse& info = served->info;
  const rag::lm::Tokenizer& tok = served->tokenizer;
  // Counts over the whole corpus; samples from the chosen split.
  auto corpus = CountCorpus(a.corpus, tok);
  if (!corpus.ok()) return Fail(corpus.status());
  const std::vector<rag::Document>& docs = corpus->docs;
  std::set<std::string> in_split;
  if (a.split != "all") {
    if (info.split_json().empty()) {
      return Fail(absl::FailedPreconditionError("the model has no split.json: use --split all"));
    }
    auto sel = rag::lm::SelectSplit(docs, info.split_json(), a.split);
    if (!sel.ok()) return Fail(sel.status());
    for (const auto& d : *sel) in_split.insert(d.id);
  }
  std::vector<rag::eval::TokenizedDocument> sampled;
  for (size_t i = 0; i < docs.size(); ++i) {
    if (a.split == "all" || in_split.count(docs[i].id)) sampled.push_back({docs[i].id, corpus->tokens[i]});
  }
  rag::eval::GreedyGenerator generate = [&](const std::vector<int32_t>& prompt, int max_tokens,
                                             const std::string& exclude) -> absl::StatusOr<std::vector<int32_t>> {
    rag::v1::GenerateRequest req;
    req.mutable_prompt_token_ids()->Add(prompt.begin(), prompt.end());
    req.set_mode(a.mode);
    req.set_max_tokens(max_tokens);
    req.set_ignore_eot(true);
    req.mutable_sampling()->set_temperature(0);
    req.set_exclude_doc_id(exclude);
    SetKnn(a.knn, &req);
    RAG_ASSIGN_OR_RETURN(auto generated, GenerateIds(backend, req));
    return std::move(generated.first);
  };
  std::unique_ptr<rag::Progress> progress;
  if (!a.quiet) progress = std::make_unique<rag::Progress>("memorization", a.samples, "samples");
  auto report = rag::eval::EvaluateMemorization(sampled, corpus->counts, generate, mo, a.exclude_own, [&](int64_t done) {
    if (progress) progress->Update(done);
  });
  if (!report.ok()) return Fail(report.status());
  if (progress) progress->Finish();
  json by_prefix = json::object();
  for (const auto& [l, t] : report->by_prefix) {
    json buckets = json::object();
    for (const auto& [b, bt] : report->by_prefix_and_duplicates[l]) {
      buckets[b] = {{"samples", bt.samples}, {"exact", bt.exact_rate()}, {"token_match", bt.token_match()}};
    }
    by_prefix[std::to_string(l)] = {
        {"samples", t.samples}, {"exact", t.exact_rate()}, {"token_match", t.token_match()}, {"by_duplicates", buckets}};
  }
  json j = {{"mode", a.mode},
            {"split", a.split},
            {"samples", report->samples},
            {"suffix_tokens", a.suffix_tokens},
            {"seed", a.seed},
            {"exclude_own_document", a.exclude_own},
            {"by_prefix", by_prefix}};
  if (!a.output.empty()) {
    if (auto s = rag::WriteFileAtomic(a.output, j.dump(2) + "\n"); !s.ok()) return Fail(s);
  }
  if (!a.report.empty()) {
    const std::string name =
        a.report_name.empty() ? a.mode + (a.exclude_own ? "-own-doc-excluded" : "") : a.report_name;
    if (auto s = rag::eval::WriteReport(a.report, "memorization", name, j.dump(2) + "\n"); !s.ok()) return Fail(s);
  }
  if (a.json_out) {
    PrintJson(j);
    return 0;
  }
  std::printf("mode %s%s: %lld sequences of the %s split, greedy %d-token suffixes\n", a.mode.c_str(),
              a.exclude_own ? ", own document excluded" : "", static_cast<long long>(report->samples),
              a.split.c_str(), a.suffix_tokens);
  std::printf("%-8s %8s %8s %12s   exact by occurrences of prefix+suffix in the corpus\n", "prefix", "samples",
              "exact", "token match");
  for (const auto& [l, t] : report->by_prefix) {
    std::printf("%-8d %8lld %8.3f %12.3f  ", l, static_cast<long long>(t.samples), t.exact_rate(), t.token_match());
    for (const auto& [b, bt] : report->by_prefix_and_duplicates[l]) {
      std::printf(" %s: %.2f (%lld)", b.c_str(), bt.exact_rate(), static_cast<long long>(bt.samples));
    }
    std::printf("\n");
  }
  return 0;
}

struct EvalExtractionArgs {
  TargetArgs target;
  KnnArgs knn;
  std::string corpus, mode = "lm", output;
  int samples = 200, tokens = 128, match_tokens = 50, top = 100, top_k = 40;
  double temperature = 1.0;
  uint64_t seed = 1;
  bool json_out = false, quiet = false;
};

int RunEvalExtraction(const EvalExtractionArgs& a) {
  auto served = OpenServed(a.target);
  if (!served.ok()) return Fail(served.status());
  rag::services::Backend& backend = *served->backend;
  const rag::lm::Tokenizer& tok = served->tokenizer;
  auto corpus = CountCorpus(a.corpus, tok);
  if (!corpus.ok()) return Fail(corpus.status());
  rag::eval::Sampler sampler = [&](int64_t i, int n)
      -> absl::StatusOr<std::pair<std::vector<int32_t>, std::string>> {
    rag::v1::GenerateRequest req;
    req.set_mode(a.mode);
    req.set_max_tokens(n);
    req.set_ignore_eot(true);
    req.mutable_sampling()->set_temperature(static_cast<float>(a.temperature));
    req.mutable_sampling()->set_top_k(a.top_k);
    req.mutable_sampling()->set_seed(a.seed * 1000003ULL + static_cast<uint64_t>(i));
    SetKnn(a.knn, &req);
    RAG_ASSIGN_OR_RETURN(auto generated, GenerateIds(backend, req));
    return std::make_pair(std::move(generated.first), generated.second.text());
  };
  rag::eval::Perplexity ppl = [&](const std::string& text) -> absl::StatusOr<double> {
    rag::v1::ScoreRequest req;
    req.set_text(text);
    req.set_mode(a.mode);
    SetKnn(a.knn, &req);
    RAG_ASSIGN_OR_RETURN(rag::v1::ScoreResponse r, backend.Score(req));
    return r.perplexity();
  };
  rag::eval::ExtractionOptions o;
  o.samples = a.samples;
  o.tokens = a.tokens;
  o.match_tokens = a.match_tokens;
  o.top = a.top;
  std::unique_ptr<rag::Progress> progress;
  if (!a.quiet) progress = std::make_unique<rag::Progress>("extraction", a.samples, "samples");
  auto report = rag::eval::EvaluateExtraction(corpus->counts, sampler, ppl, o, [&](int64_t done) {
    if (progress) progress->Update(done);
  });
  if (!report.ok()) return Fail(report.status());
  if (progress) progress->Finish();
  json rankings = json::object();
  for (const auto& r : report->rankings) {
    rankings[r.metric] = {{"top", r.top}, {"extracted", r.extracted_in_top}, {"precision", r.precision()}};
  }
  std::vector<const rag::eval::ExtractionSample*> longest;
  for (const auto& s : report->samples) longest.push_back(&s);
  std::sort(longest.begin(), longest.end(), [](auto* x, auto* y) { return x->longest_match > y->longest_match; });
  json examples = json::array();
  for (size_t i = 0; i < std::min<size_t>(5, longest.size()); ++i) {
    examples.push_back({{"sample", longest[i]->index},
                        {"longest_match", longest[i]->longest_match},
                        {"perplexity", longest[i]->perplexity},
                        {"text", rag::services::ToValidUtf8(longest[i]->text)}});
  }
  int64_t max_run = longest.empty() ? 0 : longest[0]->longest_match;
  json j = {{"mode", a.mode},           {"samples", a.samples},   {"tokens", a.tokens},
            {"match_tokens", a.match_tokens}, {"extracted", report->extracted}, {"longest_match", max_run},
            {"rankings", rankings},     {"longest_examples", examples}};
  if (!a.output.empty()) {
    if (auto s = rag::WriteFileAtomic(a.output, j.dump(2) + "\n"); !s.ok()) return Fail(s);
  }
  if (a.json_out) {
    PrintJson(j);
    return 0;
  }
  std::printf("mode %s: %d samples of %d tokens (top-k %d, T %g); %lld hold a verbatim run of >= %d corpus tokens "
              "(longest: %lld)\n",
              a.mode.c_str(), a.samples, a.tokens, a.top_k, a.temperature, static_cast<long long>(report->extracted),
              a.match_tokens, static_cast<long long>(max_run));
  for (const auto& r : report->rankings) {
    std::printf("  top %lld by %-11s: %lld extracted, precision %.3f\n", static_cast<long long>(r.top),
                r.metric.c_str(), static_cast<long long>(r.extracted_in_top), r.precision());
  }
  return 0;
}

// The embedding function of an index: the model's own (mean-pooled hidden
// states) unless the user brings a TorchScript encoder.
absl::StatusOr<std::unique_ptr<rag::lm::Embedder>> MakeEmbedder(rag::lm::LanguageModel* model,
                                                                const std::string& torchscript) {
  if (torchscript.empty()) return rag::lm::MakeLmEmbedder(model);
  auto e = rag::lm::LoadTorchScriptEmbedder(torchscript);
  if (!e.ok()) return rag::Annotate(e.status(), "--embedder");
  return e;
}

struct BuildArgs {
  std::string corpus, model, out, factory, embedder, datastore_factory, datastore_split = "all";
  bool datastore = false;
  int chunk_tokens = 64, continuation_tokens = 64;
  int64_t batch = 64;
  uint64_t seed = 1234;
  bool overwrite = false, json_out = false, quiet = false;
};

int RunBuild(const BuildArgs& a) {
  auto model = OpenModel(a.model);
  if (!model.ok()) return Fail(model.status());
  rag::index_builder::CorpusStats stats;
  auto docs = rag::index_builder::ReadCorpus(a.corpus, &stats);
  if (!docs.ok()) return Fail(docs.status());
  std::fprintf(stderr, "build: corpus %s: %zu documents, %.1f MB\n", a.corpus.c_str(), stats.documents,
               static_cast<double>(stats.bytes) / 1e6);
  auto embedder = MakeEmbedder(model->get(), a.embedder);
  if (!embedder.ok()) return Fail(embedder.status());
  rag::index_builder::BuildOptions o;
  o.out_dir = a.out;
  o.corpus_path = a.corpus;
  o.index_factory = a.factory;
  o.chunk_tokens = a.chunk_tokens;
  o.continuation_tokens = a.continuation_tokens;
  o.embed_batch = a.batch;
  o.seed = a.seed;
  o.overwrite = a.overwrite;
  o.show_progress = !a.quiet;
  if (a.datastore) {
    o.datastore = true;
    o.model = model->get();
    o.datastore_factory = a.datastore_factory;
    o.datastore_split = a.datastore_split;
    if (a.datastore_split == "train") {
      // Held-out documents never in the datastore: honest validation numbers.
      auto split = rag::ReadFile((fs::path(a.model) / rag::lm::kSplitFile).string());
      if (!split.ok()) return Fail(rag::Annotate(split.status(), "--datastore-split train needs the model's split"));
      auto train = rag::lm::SelectSplit(*docs, *split, "train");
      if (!train.ok()) return Fail(train.status());
      for (const auto& d : *train) o.datastore_doc_ids.push_back(d.id);
    } else if (a.datastore_split != "all") {
      return Fail(absl::InvalidArgumentError("--datastore-split must be all or train"));
    }
  }
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  auto m = rag::index_builder::BuildIndex(*docs, (*model)->tokenizer(), **embedder, (*model)->content_hash(), o,
                                          &g_stop);
  if (!m.ok()) return Fail(m.status());
  if (a.json_out) {
    PrintJson(json::parse(m->ToJson()));
  } else {
    std::printf("built %s: %lld documents, %lld tokens, %lld chunks, index %s (dim %d)\n", a.out.c_str(),
                static_cast<long long>(m->documents), static_cast<long long>(m->tokens),
                static_cast<long long>(m->chunks), m->index_factory.c_str(), m->dim);
  }
  return 0;
}

struct QueryArgs {
  TargetArgs target;
  std::string text, text_file;
  std::vector<std::string> exclude;
  std::string method = "dense";
  int k = 5, nprobe = 16;
  bool json_out = false;
};

int RunQuery(const QueryArgs& a) {
  auto text = TextArg(a.text, a.text_file, "--text", !a.target.server.empty());
  if (!text.ok()) return Fail(text.status());
  if (text->empty()) return Fail(absl::InvalidArgumentError("--text is empty: nothing to search for"));
  if (a.k < 1) return Fail(absl::InvalidArgumentError("-k must be >= 1"));
  auto backend = OpenTarget(a.target, true);
  if (!backend.ok()) return Fail(backend.status());
  rag::v1::SearchRequest req;
  req.add_texts(*text);
  req.set_k(a.k);
  req.set_nprobe(a.nprobe);
  req.set_method(a.method);
  for (const auto& id : a.exclude) req.add_exclude_doc_ids(id);
  auto r = (*backend)->Search(req);
  if (!r.ok()) return Fail(r.status());
  json neighbours = json::array();
  for (const auto& n : r->results(0).neighbours()) {
    neighbours.push_back({{"chunk_id", n.chunk_id()}, {"doc_id", n.doc_id()}, {"offset", n.offset()},
                          {"text", n.text()}, {"continuation", n.continuation()}, {"distance", n.distance()}});
  }
  if (a.json_out) {
    PrintJson({{"neighbours", neighbours}});
  } else {
    int rank = 1;
    for (const auto& n : neighbours) {
      std::printf("%d. [%s, chunk %lld, distance %.4f]\n   %s\n   >> %s\n", rank++,
                  n["doc_id"].get<std::string>().c_str(), static_cast<long long>(n["chunk_id"].get<int64_t>()),
                  n["distance"].get<double>(), n["text"].get<std::string>().c_str(),
                  n["continuation"].get<std::string>().c_str());
    }
  }
  return 0;
}

int RunStats(const TargetArgs& target) {
  auto backend = OpenTarget(target, true);
  if (!backend.ok()) return Fail(backend.status());
  auto r = (*backend)->Stats();
  if (!r.ok()) return Fail(r.status());
  PrintJson({{"documents", r->documents()},
             {"chunks", r->chunks()},
             {"tokens", r->tokens()},
             {"vectors", r->vectors()},
             {"dim", r->dim()},
             {"index_factory", r->index_factory()},
             {"chunk_tokens", r->chunk_tokens()},
             {"continuation_tokens", r->continuation_tokens()},
             {"model_hash", r->model_hash()},
             {"tokenizer_hash", r->tokenizer_hash()},
             {"embedder", r->embedder()},
             {"faiss_version", r->faiss_version()},
             {"documents_added", r->documents_added()}});
  return 0;
}

struct AddArgs {
  TargetArgs target;
  std::string corpus;
  bool skip_existing = false, json_out = false, quiet = false;
};

int RunAdd(const AddArgs& a) {
  rag::index_builder::CorpusStats stats;
  auto docs = rag::index_builder::ReadCorpus(a.corpus, &stats);
  if (!docs.ok()) return Fail(docs.status());
  auto backend = OpenTarget(a.target, true, /*writable=*/true);
  if (!backend.ok()) return Fail(backend.status());
  std::vector<rag::v1::Document> batch;
  for (auto& d : *docs) {
    if (!a.target.server.empty() && !rag::services::IsValidUtf8(d.text + d.id)) {
      return Fail(absl::InvalidArgumentError("document '" + d.id + "' is not valid UTF-8, which gRPC requires"));
    }
    rag::v1::Document doc;
    doc.set_id(d.id);
    doc.set_text(std::move(d.text));
    doc.set_skip_if_exists(a.skip_existing);
    batch.push_back(std::move(doc));
  }
  std::unique_ptr<rag::Progress> progress;
  if (!a.quiet) progress = std::make_unique<rag::Progress>("add", static_cast<int64_t>(batch.size()), "documents");
  auto r = (*backend)->AddDocuments(batch, [&](const rag::v1::AddDocumentsResponse& sofar) {
    if (progress) progress->Update(sofar.documents_added() + sofar.documents_skipped());
  });
  if (!r.ok()) return Fail(r.status());
  if (progress) progress->Finish();
  if (a.json_out) {
    PrintJson({{"documents_added", r->documents_added()}, {"chunks_added", r->chunks_added()},
               {"documents_skipped", r->documents_skipped()}, {"documents", r->documents()},
               {"chunks", r->chunks()}});
  } else {
    std::printf("added %lld documents (%lld chunks), skipped %lld; the index now holds %lld documents, %lld chunks\n",
                static_cast<long long>(r->documents_added()), static_cast<long long>(r->chunks_added()),
                static_cast<long long>(r->documents_skipped()), static_cast<long long>(r->documents()),
                static_cast<long long>(r->chunks()));
  }
  return 0;
}

struct ServeArgs {
  std::string model, index, embedder, listen = "127.0.0.1:50051", port_file, log_level = "info";
  std::string tls_cert, tls_key, auth_token_file;
  rag::services::EngineLimits limits;
  int max_message_bytes = 64 << 20;
  bool read_only = false;
  bool no_embed_batching = false;
};

int RunServe(const ServeArgs& a) {
  if (a.log_level != "info" && a.log_level != "debug") {
    return Fail(absl::InvalidArgumentError("--log-level must be info or debug"));
  }
  rag::services::EngineOptions eo;
  eo.model_dir = a.model;
  eo.index_dir = a.index;
  eo.embedder_path = a.embedder;
  eo.writable_index = !a.read_only;
  eo.limits = a.limits;
  eo.batch_embeddings = !a.no_embed_batching;
  auto engine = rag::services::Engine::Open(eo);
  if (!engine.ok()) return Fail(engine.status());
  rag::services::ServerOptions so;
  so.listen = a.listen;
  so.log_requests = a.log_level == "debug";
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
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  auto server = rag::services::Server::Start(engine->get(), so);
  if (!server.ok()) return Fail(server.status());
  const int port = (*server)->port();
  const std::string host = a.listen.substr(0, a.listen.rfind(':'));
  std::fprintf(stderr, "serve: model %s%s%s; listening on %s:%d (Ctrl-C or SIGTERM stops)\n", a.model.c_str(),
               a.index.empty() ? "" : ", index ", a.index.c_str(), host.c_str(), port);
  if (!a.port_file.empty()) {
    if (auto s = rag::WriteFileAtomic(a.port_file, std::to_string(port) + "\n"); !s.ok()) return Fail(s);
  }
  while (!g_stop.load()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  std::fprintf(stderr, "serve: shutting down\n");
  (*server)->Shutdown(5.0);
  engine->reset();  // saves the index after adds
  std::fprintf(stderr, "serve: stopped\n");
  return 0;
}

int RunValidate(const std::string& index_dir, int64_t sample, int nprobe, bool json_out) {
  namespace rr = rag::retriever;
  auto m = rr::Manifest::Load(index_dir);
  if (!m.ok()) return Fail(m.status());
  json report = {{"index", index_dir}, {"index_factory", m->index_factory}, {"vectors", m->vectors}};
  bool ok = true;
  for (const auto& [file, expected] : m->checksums) {
    auto got = rag::HashFileHex((fs::path(index_dir) / file).string());
    const bool match = got.ok() && *got == expected;
    report["checksums"][file] = match ? "ok" : (got.ok() ? "MISMATCH" : std::string(got.status().message()));
    ok = ok && match;
  }
  rr::ChunkStoreOptions so;
  so.chunk_tokens = m->chunk_tokens;
  so.continuation_tokens = m->continuation_tokens;
  so.create_if_missing = false;
  so.read_only = true;
  auto store = rr::ChunkStore::Open((fs::path(index_dir) / rr::kChunkStoreDir).string(), so);
  if (!store.ok()) {
    report["chunk_store"] = std::string(store.status().message());
    ok = false;
  } else {
    const bool counts = (*store)->num_chunks() == m->chunks && (*store)->num_documents() == m->documents;
    report["chunk_store"] = counts ? "ok" : "counts differ from the manifest";
    ok = ok && counts;
  }
  auto index = rr::VectorIndex::Open((fs::path(index_dir) / rr::kChunkIndexFile).string());
  auto raw = rag::ReadFile((fs::path(index_dir) / rr::kEmbeddingsFile).string());
  if (!index.ok() || !raw.ok()) {
    report["recall_at_10"] = nullptr;
    report["error"] = std::string(!index.ok() ? index.status().message() : raw.status().message());
    ok = false;
  } else if (static_cast<int64_t>(raw->size()) == m->vectors * m->dim * 4 && m->vectors > 0) {
    // Recall@10 of the served index against exact search, on a seeded sample
    // of the stored vectors used as queries.
    const int dim = m->dim;
    const float* x = reinterpret_cast<const float*>(raw->data());
    const int64_t nq = std::min<int64_t>(sample, m->vectors);
    std::vector<float> queries;
    uint64_t state = 1234;
    for (int64_t i = 0; i < nq; ++i) {
      state = state * 6364136223846793005ULL + 1442695040888963407ULL;
      const int64_t row = static_cast<int64_t>((state >> 33) % static_cast<uint64_t>(m->vectors));
      queries.insert(queries.end(), x + row * dim, x + (row + 1) * dim);
    }
    auto exact = rr::VectorIndex::Create(dim, "Flat");
    const int k = static_cast<int>(std::min<int64_t>(10, m->vectors));
    std::vector<float> d1, d2;
    std::vector<int64_t> approx_ids, exact_ids;
    absl::Status s = exact.ok() ? (*exact)->Add(x, m->vectors) : exact.status();
    if (s.ok()) s = (*index)->Search(queries.data(), nq, k, nprobe, &d1, &approx_ids);
    if (s.ok()) s = (*exact)->Search(queries.data(), nq, k, 0, &d2, &exact_ids);
    if (!s.ok()) return Fail(s);
    const double recall = rr::RecallAtK(approx_ids, exact_ids, nq, k);
    report["recall_at_10"] = recall;
    report["recall_queries"] = nq;
    report["nprobe"] = nprobe;
  } else {
    report["error"] = "embeddings.f32 has the wrong size";
    ok = false;
  }
  report["valid"] = ok;
  if (json_out) {
    PrintJson(report);
  } else {
    std::printf("%s\n", report.dump(2).c_str());
  }
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"rag: retrieval-augmented language models (build, serve, query, evaluate)"};
  app.require_subcommand(1);
  app.fallthrough();  // global options (--threads) may follow the subcommand
  int threads = 0;
  app.add_option("--threads", threads, "LibTorch intra-op threads (default 1: OpenBLAS uses every core itself)");

  TrainArgs train;
  auto* train_cmd = app.add_subcommand("train", "train a language model (and its tokenizer)");
  train_cmd->add_option("--corpus", train.corpus, "corpus: .txt, .jsonl or directory (retro: optional, restricts the index's documents)");
  train_cmd->add_option("--out", train.out, "model directory to write")->required();
  train_cmd->add_option("--arch", train.arch, "lm or retro")->capture_default_str();
  train_cmd->add_option("--index", train.index, "index directory (--arch retro)");
  train_cmd->add_option("--init", train.init, "retro: the LM the index was built with (its decoder, tokenizer, split)");
  train_cmd->add_flag("--train-all", train.train_all, "retro: train the decoder too (default: retrofit, decoder frozen)");
  train_cmd->add_option("--exclude-documents", train.exclude_documents,
                        "retro: a corpus (.jsonl/.txt/dir) whose document ids are never trained on nor retrieved "
                        "for prompt windows (e.g. the facts a probe set asks)");
  train_cmd->add_option("--prompt-windows", train.prompt_windows,
                        "retro: prompt windows per step (a prompt ending a chunk, the next chunk attending its "
                        "neighbours; default: the preset's, 0 = off)")
      ->check(CLI::NonNegativeNumber);
  train_cmd->add_option("--prompts-per-document", train.prompts_per_document,
                        "retro: prompt windows drawn per document")->capture_default_str();
  train_cmd->add_option("--prompt-own-document", train.prompt_own_document,
                        "retro: fraction of prompts whose neighbours may come from their own document "
                        "(an experiment against RETRO's rule; default never)")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  train_cmd->add_option("--prompt-search", train.prompt_search, "retro: dense or bm25, how prompt neighbours are found")
      ->capture_default_str();
  train_cmd
      ->add_option("--neighbour-search", train.neighbour_search,
                   "retro: dense or bm25, how every training chunk's neighbours are found (evaluate with the "
                   "same --search-method)")
      ->check(CLI::IsMember({"dense", "bm25"}))
      ->capture_default_str();
  train_cmd
      ->add_option("--own-document-filter", train.own_document_filter,
                   "retro: 0 = a training chunk never retrieves its own document (RETRO's rule); N > 0 = it may, "
                   "and neighbours sharing a run of N tokens with the chunk they help predict are dropped (the "
                   "leakage filter of `rag eval perplexity` without --exclude-own-doc)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  train_cmd->add_option("--nprobe", train.nprobe, "retro: IVF lists visited when precomputing neighbours")->capture_default_str();
  train_cmd->add_option("--preset", train.preset, "tiny, small or base")->capture_default_str();
  train_cmd->add_option("--config", train.config_file, "JSON file of model config overrides");
  train_cmd->add_option("--steps", train.steps, "optimizer steps (default: the preset's)");
  train_cmd->add_option("--batch-size", train.batch_size, "sequences per step");
  train_cmd->add_option("--seq-len", train.seq_len, "tokens per training sequence (<= context)");
  train_cmd->add_option("--lr", train.lr, "peak learning rate");
  train_cmd->add_option("--warmup", train.warmup, "warm-up steps");
  train_cmd->add_option("--gpt2-vocab", train.gpt2_vocab, "directory with GPT-2's encoder.json + vocab.bpe to use as the tokenizer");
  train_cmd->add_option("--vocab-size", train.vocab_size, "tokenizer vocabulary when one is trained")->capture_default_str();
  train_cmd->add_option("--validation-fraction", train.validation_fraction, "fraction of documents held out")->capture_default_str();
  train_cmd->add_option("--checkpoint-every", train.checkpoint_every, "steps between checkpoints");
  train_cmd->add_option("--eval-every", train.eval_every, "steps between validation losses");
  train_cmd->add_option("--seed", train.seed, "seed for split, init and batches")->capture_default_str();
  train_cmd->add_flag("--resume", train.resume, "continue from the checkpoint in --out");
  train_cmd->add_flag("--overwrite", train.overwrite, "start over even if --out holds a run");
  train_cmd->add_flag("--json", train.json_out, "print the summary as JSON");
  train_cmd->add_flag("--quiet", train.quiet, "no progress lines");

  TargetArgs score_target;
  std::string score_text, score_file, score_mode = "lm";
  bool score_json = false;
  auto* score_cmd = app.add_subcommand("score", "log-likelihood and perplexity of a text");
  AddTargetOptions(score_cmd, &score_target, true);
  score_cmd->add_option("--text", score_text, "text to score");
  score_cmd->add_option("--text-file", score_file, "file whose bytes are the text");
  score_cmd->add_option("--mode", score_mode, "lm, knnlm or retro")->capture_default_str();
  score_cmd->add_flag("--json", score_json, "JSON with per-token log-probs");
  int score_prompt_bytes = 0;
  score_cmd->add_option("--prompt-bytes", score_prompt_bytes,
                        "retro: the text's first N bytes are a prompt laid out to end a chunk, so what follows "
                        "attends to the neighbours retrieved with it (as probes are scored)");
  KnnArgs score_knn;
  AddKnnOptions(score_cmd, &score_knn, "--temperature");
  AddLeakageOption(score_cmd, &score_knn);

  GenerateArgs gen;
  gen.sampling.max_tokens = 40;
  auto* gen_cmd = app.add_subcommand("generate", "continue a prompt");
  AddTargetOptions(gen_cmd, &gen.target, true);
  gen_cmd->add_option("--prompt", gen.prompt, "prompt text");
  gen_cmd->add_option("--prompt-file", gen.prompt_file, "file whose bytes are the prompt");
  gen_cmd->add_option("--mode", gen.mode, "lm, knnlm or retro")->capture_default_str();
  gen_cmd->add_option("--max-tokens", gen.sampling.max_tokens, "tokens to generate")->capture_default_str();
  gen_cmd->add_option("--temperature", gen.sampling.temperature, "0 = greedy")->capture_default_str();
  gen_cmd->add_option("--top-k", gen.sampling.top_k, "sample from the k most likely (0 = all)")->capture_default_str();
  gen_cmd->add_option("--top-p", gen.sampling.top_p, "nucleus mass")->capture_default_str();
  gen_cmd->add_option("--seed", gen.sampling.seed, "sampling seed")->capture_default_str();
  gen_cmd->add_flag("--json", gen.json_out, "print JSON");
  gen_cmd->add_flag("--show-neighbours", gen.show_neighbours, "retro: print the neighbours retrieved at each chunk");
  AddKnnOptions(gen_cmd, &gen.knn, "--knn-temperature");

  BuildArgs build;
  auto* build_cmd = app.add_subcommand("build", "build a retrieval index over a corpus");
  build_cmd->add_option("--corpus", build.corpus, "corpus: .txt, .jsonl or directory")->required();
  build_cmd->add_option("--model", build.model, "model directory (tokenizer, embedder, served model)")->required();
  build_cmd->add_option("--out", build.out, "index directory to write")->required();
  build_cmd->add_option("--index-factory", build.factory, "FAISS factory string (default: from the corpus size)");
  build_cmd->add_option("--chunk-tokens", build.chunk_tokens, "tokens per chunk")->capture_default_str();
  build_cmd->add_option("--continuation-tokens", build.continuation_tokens, "tokens of continuation per chunk")->capture_default_str();
  build_cmd->add_option("--embedder", build.embedder, "TorchScript encoder (ids [B, T] -> [B, D]) instead of the LM");
  build_cmd->add_option("--batch-size", build.batch, "chunks per embedding batch")->capture_default_str();
  build_cmd->add_option("--seed", build.seed, "seed of the FAISS training sample")->capture_default_str();
  build_cmd->add_flag("--overwrite", build.overwrite, "replace an existing index");
  build_cmd->add_flag("--datastore", build.datastore, "also build the kNN-LM datastore (one key per token)");
  build_cmd->add_option("--datastore-factory", build.datastore_factory, "FAISS factory of the datastore (default: from its size)");
  build_cmd->add_option("--datastore-split", build.datastore_split, "all, or train: only the model's training documents")->capture_default_str();
  build_cmd->add_flag("--json", build.json_out, "print the manifest as JSON");
  build_cmd->add_flag("--quiet", build.quiet, "no progress lines");

  QueryArgs query;
  auto* query_cmd = app.add_subcommand("query", "nearest chunks of a text");
  AddTargetOptions(query_cmd, &query.target, true);
  query_cmd->add_option("--text", query.text, "query text");
  query_cmd->add_option("--text-file", query.text_file, "file whose bytes are the query");
  query_cmd->add_option("-k,--k", query.k, "neighbours")->capture_default_str();
  query_cmd->add_option("--nprobe", query.nprobe, "IVF lists to visit")->capture_default_str();
  query_cmd->add_option("--method", query.method, "dense (embeddings + FAISS) or bm25 (lexical)")
      ->capture_default_str()
      ->check(CLI::IsMember({"dense", "bm25"}));
  query_cmd->add_option("--exclude-doc", query.exclude, "document id never to return (repeatable)");
  query_cmd->add_flag("--json", query.json_out, "print JSON");

  NextTokenArgs next;
  auto* next_cmd = app.add_subcommand("next-token", "the most likely next tokens after a text");
  AddTargetOptions(next_cmd, &next.target, true);
  next_cmd->add_option("--text", next.text, "context text (may be empty)");
  next_cmd->add_option("--text-file", next.text_file, "file whose bytes are the context");
  next_cmd->add_option("--top-n", next.top_n, "tokens to show")->capture_default_str();
  next_cmd->add_option("--mode", next.mode, "lm, knnlm or retro")->capture_default_str();
  next_cmd->add_flag("--json", next.json_out, "print JSON");
  AddKnnOptions(next_cmd, &next.knn, "--temperature");

  ServeArgs serve;
  auto* serve_cmd = app.add_subcommand("serve", "serve a model and index over gRPC");
  serve_cmd->add_option("--model", serve.model, "model directory")->required();
  serve_cmd->add_option("--index", serve.index, "index directory (omit to serve the model only)");
  serve_cmd->add_option("--embedder", serve.embedder, "the TorchScript encoder the index was built with");
  serve_cmd->add_option("--listen", serve.listen, "host:port (port 0 = any free port)")->capture_default_str();
  serve_cmd->add_option("--port-file", serve.port_file, "write the bound port to this file once serving");
  serve_cmd->add_option("--log-level", serve.log_level, "info, or debug for one line per request")->capture_default_str();
  serve_cmd->add_flag("--read-only", serve.read_only, "refuse AddDocuments");
  serve_cmd->add_flag("--no-embed-batching", serve.no_embed_batching,
                      "embed each Search's queries alone (default: concurrent calls share forward passes)");
  serve_cmd->add_option("--max-text-bytes", serve.limits.max_text_bytes, "largest text in a request")->capture_default_str();
  serve_cmd->add_option("--max-batch", serve.limits.max_batch, "most texts in one Search")->capture_default_str();
  serve_cmd->add_option("--max-generate-tokens", serve.limits.max_generate_tokens, "most tokens one Generate may ask for")->capture_default_str();
  serve_cmd->add_option("--max-k", serve.limits.max_k, "most neighbours one query may ask for")->capture_default_str();
  serve_cmd->add_option("--max-top-n", serve.limits.max_top_n, "most tokens NextToken may list")->capture_default_str();
  serve_cmd->add_option("--max-id-bytes", serve.limits.max_id_bytes, "longest document id")->capture_default_str();
  serve_cmd->add_option("--max-message-bytes", serve.max_message_bytes, "largest gRPC message, either way")
      ->capture_default_str()
      ->check(CLI::Range(1024, 1 << 30));
  serve_cmd->add_option("--tls-cert", serve.tls_cert, "PEM certificate chain: serve over TLS (with --tls-key)");
  serve_cmd->add_option("--tls-key", serve.tls_key, "PEM private key of --tls-cert");
  serve_cmd->add_option("--auth-token-file", serve.auth_token_file,
                        "file with a bearer token every rpc must carry (`authorization: Bearer <token>`)");

  AddArgs add;
  auto* add_cmd = app.add_subcommand("add", "add documents to a live index");
  AddTargetOptions(add_cmd, &add.target, true);
  add_cmd->add_option("--corpus", add.corpus, "documents: .txt, .jsonl or directory")->required();
  add_cmd->add_flag("--skip-existing", add.skip_existing, "skip documents whose id is stored instead of failing");
  add_cmd->add_flag("--json", add.json_out, "print JSON");
  add_cmd->add_flag("--quiet", add.quiet, "no progress lines");

  TargetArgs stats_target;
  auto* stats_cmd = app.add_subcommand("stats", "counts and provenance of a served index (JSON)");
  AddTargetOptions(stats_cmd, &stats_target, true);

  std::string validate_dir;
  int64_t validate_sample = 200;
  int validate_nprobe = 16;
  bool validate_json = false;
  auto* validate_cmd = app.add_subcommand("validate", "check an index: checksums, counts, recall@10 vs exact");
  validate_cmd->add_option("index_dir", validate_dir, "index directory")->required();
  validate_cmd->add_option("--sample", validate_sample, "stored vectors used as queries")->capture_default_str();
  validate_cmd->add_option("--nprobe", validate_nprobe, "IVF lists to visit")->capture_default_str();
  validate_cmd->add_flag("--json", validate_json, "print JSON");

  auto* eval_cmd = app.add_subcommand("eval", "evaluations");
  eval_cmd->require_subcommand(1);
  eval_cmd->fallthrough();
  EvalPplArgs ppl;
  auto* ppl_cmd = eval_cmd->add_subcommand("perplexity", "perplexity of a corpus");
  AddTargetOptions(ppl_cmd, &ppl.target, true);
  ppl_cmd->add_option("--corpus", ppl.corpus, "corpus: .txt, .jsonl or directory")->required();
  ppl_cmd->add_option("--split", ppl.split, "all, train or validation (the model's own split)")->capture_default_str();
  ppl_cmd->add_option("--mode", ppl.mode, "lm, knnlm or retro")->capture_default_str();
  ppl_cmd->add_option("--baseline", ppl.baseline, "unigram or none")->capture_default_str();
  ppl_cmd->add_option("--stride", ppl.stride, "new tokens per sliding window (0 = context/2)");
  ppl_cmd->add_flag("--json", ppl.json_out, "print JSON");
  ppl_cmd->add_option("--output", ppl.output, "also write the JSON result to this file");
  ppl_cmd->add_flag("--quiet", ppl.quiet, "no progress lines");
  AddLeakageOption(ppl_cmd, &ppl.knn);
  AddKnnOptions(ppl_cmd, &ppl.knn, "--temperature");
  ppl_cmd->add_option("--sweep", ppl.sweep, "knnlm: several lambdas in one pass (lambda=0.1,0.25,0.5), optionally times temperatures, one pass each (;temperature=1,10)");
  ppl_cmd->add_option("--report", ppl.report, "add this run to the report in DIR (PNG plots, summary.md)");
  ppl_cmd->add_option("--report-name", ppl.report_name, "the run's name in the report (default: from the options)");
  ppl_cmd->add_flag("--exclude-own-doc", ppl.exclude_own, "knnlm: never use keys of, retro: never retrieve chunks of, the document being scored");

  EvalProbesArgs probes;
  auto* probes_cmd = eval_cmd->add_subcommand("probes", "knowledge probes (LAMA JSONL): P@1, P@10, MRR by relation");
  AddTargetOptions(probes_cmd, &probes.target, true);
  probes_cmd->add_option("--probes", probes.probes, "probe file: LAMA-compatible JSONL")->required();
  probes_cmd->add_option("--mode", probes.mode, "lm, knnlm or retro")->capture_default_str();
  probes_cmd->add_flag("--json", probes.json_out, "print JSON");
  probes_cmd->add_option("--output", probes.output, "also write the JSON result to this file");
  probes_cmd->add_flag("--quiet", probes.quiet, "no progress lines");
  probes_cmd->add_option("--report", probes.report, "add this run to the report in DIR (PNG plots, summary.md)");
  probes_cmd->add_option("--report-name", probes.report_name, "the run's name in the report (default: from the options)");
  probes_cmd->add_flag("--exclude-evidence", probes.exclude_evidence,
                       "knnlm, retro: never retrieve from a probe's evidence_doc_id (what the model knows without it)");
  AddKnnOptions(probes_cmd, &probes.knn, "--temperature");

  EvalMemArgs mem;
  auto* mem_cmd = eval_cmd->add_subcommand("memorization",
                                           "verbatim memorization (Carlini et al. 2023) by prefix length and repetition");
  AddTargetOptions(mem_cmd, &mem.target, true);
  mem_cmd->add_option("--corpus", mem.corpus, "corpus: .txt, .jsonl or directory")->required();
  mem_cmd->add_option("--split", mem.split, "documents to sample: train, validation or all")->capture_default_str();
  mem_cmd->add_option("--prefix-lengths", mem.prefix_lengths, "prompt lengths in tokens")->capture_default_str();
  mem_cmd->add_option("--suffix-tokens", mem.suffix_tokens, "greedy tokens compared")->capture_default_str();
  mem_cmd->add_option("--samples", mem.samples, "sequences drawn")->capture_default_str();
  mem_cmd->add_option("--seed", mem.seed, "seed of the draw")->capture_default_str();
  mem_cmd->add_option("--mode", mem.mode, "lm, knnlm or retro")->capture_default_str();
  mem_cmd->add_flag("--exclude-own-doc", mem.exclude_own,
                    "knnlm, retro: never retrieve from the sampled document (what the weights alone reproduce)");
  mem_cmd->add_flag("--json", mem.json_out, "print JSON");
  mem_cmd->add_option("--output", mem.output, "also write the JSON result to this file");
  mem_cmd->add_flag("--quiet", mem.quiet, "no progress lines");
  mem_cmd->add_option("--report", mem.report, "add this run to the report in DIR (PNG plots, summary.md)");
  mem_cmd->add_option("--report-name", mem.report_name, "the run's name in the report (default: from the options)");
  AddKnnOptions(mem_cmd, &mem.knn, "--temperature");

  EvalExtractionArgs ext;
  auto* ext_cmd = eval_cmd->add_subcommand(
      "extraction", "training-data extraction (Carlini et al. 2021): sample, rank, count verbatim corpus runs");
  AddTargetOptions(ext_cmd, &ext.target, true);
  ext_cmd->add_option("--corpus", ext.corpus, "the corpus to find verbatim runs in")->required();
  ext_cmd->add_option("--samples", ext.samples, "texts generated")->capture_default_str();
  ext_cmd->add_option("--tokens", ext.tokens, "tokens per text")->capture_default_str();
  ext_cmd->add_option("--match-tokens", ext.match_tokens, "a verbatim run this long counts as extracted")->capture_default_str();
  ext_cmd->add_option("--top", ext.top, "precision over the top N of each ranking")->capture_default_str();
  ext_cmd->add_option("--top-k", ext.top_k, "sampling: top-k (Carlini et al.: 40)")->capture_default_str();
  ext_cmd->add_option("--sampling-temperature", ext.temperature, "sampling temperature")->capture_default_str();
  ext_cmd->add_option("--seed", ext.seed, "seed of the samples")->capture_default_str();
  ext_cmd->add_option("--mode", ext.mode, "lm, knnlm or retro")->capture_default_str();
  ext_cmd->add_flag("--json", ext.json_out, "print JSON");
  ext_cmd->add_option("--output", ext.output, "also write the JSON result to this file");
  ext_cmd->add_flag("--quiet", ext.quiet, "no progress lines");
  AddKnnOptions(ext_cmd, &ext.knn, "--temperature");

  CountArgs count;
  auto* count_cmd = app.add_subcommand("count", "exact occurrences of a text's tokens in an index's documents");
  count_cmd->add_option("--index", count.index, "index directory")->required();
  count_cmd->add_option("--text", count.text, "the text to count");
  count_cmd->add_option("--text-file", count.text_file, "read the text from this file");
  count_cmd->add_option("--model", count.model, "tokenize with this model's tokenizer (indexes without tokenizer.json)");
  count_cmd->add_option("--show-documents", count.show_documents, "list at most this many documents")->capture_default_str();
  count_cmd->add_flag("--json", count.json_out, "print JSON");

  CLI11_PARSE(app, argc, argv);
  if (threads < 0) {
    std::fprintf(stderr, "rag: error: --threads must be >= 0\n");
    return 2;
  }
  rag::lm::ConfigureRuntime(threads);

  try {
    if (train_cmd->parsed()) return RunTrain(train);
    if (score_cmd->parsed())
      return RunScore(score_target, score_text, score_file, score_mode, score_knn, score_json, score_prompt_bytes);
    if (next_cmd->parsed()) return RunNextToken(next);
    if (serve_cmd->parsed()) return RunServe(serve);
    if (add_cmd->parsed()) return RunAdd(add);
    if (stats_cmd->parsed()) return RunStats(stats_target);
    if (gen_cmd->parsed()) return RunGenerate(gen);
    if (ppl_cmd->parsed()) return RunEvalPerplexity(ppl);
    if (probes_cmd->parsed()) return RunEvalProbes(probes);
    if (mem_cmd->parsed()) return RunEvalMemorization(mem);
    if (ext_cmd->parsed()) return RunEvalExtraction(ext);
    if (count_cmd->parsed()) return RunCount(count);
    if (build_cmd->parsed()) return RunBuild(build);
    if (query_cmd->parsed()) return RunQuery(query);
    if (validate_cmd->parsed()) return RunValidate(validate_dir, validate_sample, validate_nprobe, validate_json);
  } catch (const c10::Error& e) {
    return Fail(absl::InternalError(e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return Fail(absl::InternalError(e.what()));
  }
  return 0;
}

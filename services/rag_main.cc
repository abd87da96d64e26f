// The `rag` command line: one binary, one subcommand per job
// (interfaces.md). Results go to stdout (--json for machines), logs and
// progress to stderr; every failure prints a clear error and exits non-zero.
#include <torch/torch.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>

#include "common/file_util.h"
#include "common/status.h"
#include "eval/perplexity.h"
#include "index_builder/corpus_reader.h"
#include "index_builder/index_builder.h"
#include "lm/data_split.h"
#include "lm/generator.h"
#include "lm/language_model.h"
#include "lm/runtime.h"
#include "lm/scorer.h"
#include "lm/train_pipeline.h"
#include "retriever/retriever.h"
#include "retriever/vector_index.h"

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

void PrintJson(const json& j) { std::cout << j.dump() << std::endl; }

// Reads the text of --text or --text-file.
absl::StatusOr<std::string> TextArg(const std::string& text, const std::string& text_file, const char* what) {
  if (!text_file.empty()) return rag::ReadFile(text_file);
  return text;
}

absl::Status CheckMode(const std::string& mode) {
  if (mode == "lm") return absl::OkStatus();
  if (mode == "knnlm" || mode == "retro") {
    return absl::UnimplementedError("--mode " + mode + " is not available in this version yet; use --mode lm");
  }
  return absl::InvalidArgumentError("--mode must be lm, knnlm or retro, got '" + mode + "'");
}

struct TrainArgs {
  std::string corpus, out, arch = "lm", preset = "small", config_file, index, init, gpt2_vocab;
  int64_t steps = 0, batch_size = 0, seq_len = 0, checkpoint_every = -1, eval_every = -1, warmup = -1;
  int vocab_size = 4096;
  double lr = 0, validation_fraction = 0.05;
  uint64_t seed = 1234;
  bool resume = false, overwrite = false, json_out = false, quiet = false;
};

int RunTrain(const TrainArgs& a) {
  if (a.arch == "retro") return Fail(absl::UnimplementedError("--arch retro is not available in this version yet"));
  if (a.arch != "lm") return Fail(absl::InvalidArgumentError("--arch must be lm or retro, got '" + a.arch + "'"));
  if (!a.init.empty() || !a.index.empty()) {
    return Fail(absl::InvalidArgumentError("--init and --index apply to --arch retro only"));
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
  job.trainer.seed = a.seed;
  job.trainer.show_progress = !a.quiet;
  if (a.steps > 0) {
    job.trainer.steps = a.steps;
    job.trainer.warmup_steps = std::min(job.trainer.warmup_steps, std::max<int64_t>(1, a.steps / 10));
  }
  if (a.batch_size > 0) job.trainer.batch_size = a.batch_size;
  if (a.seq_len > 0) job.trainer.seq_len = a.seq_len;
  if (a.lr > 0) job.trainer.lr = a.lr;
  if (a.warmup >= 0) job.trainer.warmup_steps = a.warmup;
  if (a.checkpoint_every >= 0) job.trainer.checkpoint_every = a.checkpoint_every;
  if (a.eval_every >= 0) job.trainer.eval_every = a.eval_every;
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

int RunScore(const std::string& model_dir, const std::string& text_arg, const std::string& text_file,
             const std::string& mode, bool json_out) {
  if (auto s = CheckMode(mode); !s.ok()) return Fail(s);
  auto text = TextArg(text_arg, text_file, "--text");
  if (!text.ok()) return Fail(text.status());
  if (text->empty()) return Fail(absl::InvalidArgumentError("--text is empty: nothing to score"));
  auto model = OpenModel(model_dir);
  if (!model.ok()) return Fail(model.status());
  auto ids = (*model)->tokenizer().Encode(*text);
  auto logprobs = rag::lm::ScoreTokens((*model)->module(), ids, (*model)->tokenizer().eot_id());
  double nll = 0;
  for (float lp : logprobs) nll -= lp;
  nll /= static_cast<double>(logprobs.size());
  if (json_out) {
    json per_token = json::array();
    for (size_t i = 0; i < ids.size(); ++i) {
      per_token.push_back({{"token", ids[i]}, {"text", (*model)->tokenizer().TokenBytes(ids[i])}, {"logprob", logprobs[i]}});
    }
    PrintJson({{"mode", mode}, {"tokens", ids.size()}, {"nll", nll}, {"perplexity", std::exp(nll)},
               {"token_logprobs", per_token}});
  } else {
    std::printf("tokens %zu  nll %.4f  perplexity %.2f\n", ids.size(), nll, std::exp(nll));
  }
  return 0;
}

struct GenerateArgs {
  std::string model, prompt, prompt_file, mode = "lm";
  rag::lm::SamplingOptions sampling;
  bool json_out = false;
};

int RunGenerate(GenerateArgs a) {
  if (auto s = CheckMode(a.mode); !s.ok()) return Fail(s);
  auto prompt = TextArg(a.prompt, a.prompt_file, "--prompt");
  if (!prompt.ok()) return Fail(prompt.status());
  auto model = OpenModel(a.model);
  if (!model.ok()) return Fail(model.status());
  const auto& tok = (*model)->tokenizer();
  auto ids = tok.Encode(*prompt);
  std::vector<rag::lm::TokenId> out_ids;
  auto generated = rag::lm::Generate((*model)->module(), ids, tok.eot_id(), a.sampling,
                                     [&](rag::lm::TokenId id) {
                                       if (!a.json_out && id != tok.eot_id()) {
                                         std::cout << tok.TokenBytes(id) << std::flush;
                                       }
                                       return true;
                                     });
  if (!generated.ok()) return Fail(generated.status());
  std::vector<rag::lm::TokenId> text_ids;
  for (auto id : *generated) {
    if (id != tok.eot_id()) text_ids.push_back(id);
  }
  auto text = tok.Decode(text_ids);
  if (!text.ok()) return Fail(text.status());
  if (a.json_out) {
    PrintJson({{"mode", a.mode}, {"prompt", *prompt}, {"text", *text}, {"tokens", generated->size()}});
  } else {
    std::cout << std::endl;
  }
  return 0;
}

struct EvalPplArgs {
  std::string model, corpus, split = "all", mode = "lm", baseline = "unigram", output;
  int64_t stride = 0;
  bool json_out = false, quiet = false;
};

int RunEvalPerplexity(const EvalPplArgs& a) {
  if (auto s = CheckMode(a.mode); !s.ok()) return Fail(s);
  if (a.baseline != "unigram" && a.baseline != "none") {
    return Fail(absl::InvalidArgumentError("--baseline must be unigram or none"));
  }
  auto model = OpenModel(a.model);
  if (!model.ok()) return Fail(model.status());
  auto docs = rag::index_builder::ReadCorpus(a.corpus);
  if (!docs.ok()) return Fail(docs.status());
  std::vector<rag::Document> all = *docs;
  std::vector<rag::Document> selected = std::move(*docs);
  std::string split_json;
  if (a.split != "all" || a.baseline == "unigram") {
    auto text = rag::ReadFile((fs::path(a.model) / rag::lm::kSplitFile).string());
    if (!text.ok()) return Fail(rag::Annotate(text.status(), "reading the model's split"));
    split_json = *text;
  }
  if (a.split != "all") {
    auto sel = rag::lm::SelectSplit(std::move(selected), split_json, a.split);
    if (!sel.ok()) return Fail(sel.status());
    selected = std::move(*sel);
    if (selected.empty()) {
      return Fail(absl::InvalidArgumentError("no document of --corpus is in the model's " + a.split + " split"));
    }
  }
  rag::lm::ScoreOptions opts;
  opts.stride = a.stride;
  auto r = rag::eval::EvaluatePerplexity(**model, selected, opts, !a.quiet);
  json j = {{"mode", a.mode}, {"split", a.split}, {"documents", r.documents}, {"tokens", r.tokens},
            {"nll", r.nll},   {"perplexity", r.perplexity}};
  if (a.baseline == "unigram") {
    auto train = rag::lm::SelectSplit(all, split_json, "train");
    if (!train.ok()) return Fail(train.status());
    auto u = rag::eval::UnigramPerplexity((*model)->tokenizer(), *train, selected);
    j["unigram_perplexity"] = u.perplexity;
    j["ratio_to_unigram"] = r.perplexity / u.perplexity;
  }
  if (!a.output.empty()) {
    if (auto s = rag::WriteFileAtomic(a.output, j.dump(2) + "\n"); !s.ok()) return Fail(s);
  }
  if (a.json_out) {
    PrintJson(j);
  } else {
    std::printf("%-10s %-10s %8s %10s %12s", "mode", "split", "docs", "tokens", "perplexity");
    if (j.contains("unigram_perplexity")) std::printf(" %12s %8s", "unigram", "ratio");
    std::printf("\n%-10s %-10s %8lld %10lld %12.2f", a.mode.c_str(), a.split.c_str(),
                static_cast<long long>(r.documents), static_cast<long long>(r.tokens), r.perplexity);
    if (j.contains("unigram_perplexity")) {
      std::printf(" %12.2f %8.3f", j["unigram_perplexity"].get<double>(), j["ratio_to_unigram"].get<double>());
    }
    std::printf("\n");
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
  std::string corpus, model, out, factory, embedder;
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
  std::string model, index, text, text_file, embedder;
  std::vector<std::string> exclude;
  int k = 5, nprobe = 16;
  bool json_out = false;
};

int RunQuery(const QueryArgs& a) {
  if (a.index.empty()) return Fail(absl::InvalidArgumentError("--index INDEX_DIR is required with --model"));
  auto text = TextArg(a.text, a.text_file, "--text");
  if (!text.ok()) return Fail(text.status());
  if (text->empty()) return Fail(absl::InvalidArgumentError("--text is empty: nothing to search for"));
  auto model = OpenModel(a.model);
  if (!model.ok()) return Fail(model.status());
  auto embedder = MakeEmbedder(model->get(), a.embedder);
  if (!embedder.ok()) return Fail(embedder.status());
  auto retriever = rag::retriever::Retriever::Open(a.index, embedder->get(), (*model)->content_hash(),
                                                   (*model)->tokenizer().Hash());
  if (!retriever.ok()) return Fail(retriever.status());
  rag::retriever::SearchOptions so;
  so.k = a.k;
  so.nprobe = a.nprobe;
  so.exclude_doc_ids = a.exclude;
  const auto& tok = (*model)->tokenizer();
  auto results = (*retriever)->Search({tok.Encode(*text)}, so);
  if (!results.ok()) return Fail(results.status());
  auto decode = [&](const std::vector<int32_t>& ids) { return tok.Decode(ids).value_or(""); };
  json neighbours = json::array();
  for (const auto& n : (*results)[0]) {
    neighbours.push_back({{"chunk_id", n.chunk_id}, {"doc_id", n.doc_id}, {"offset", n.offset},
                          {"text", decode(n.tokens)}, {"continuation", decode(n.continuation)},
                          {"distance", n.distance}});
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
  app.add_option("--threads", threads, "intra-op threads (default: all cores)");

  TrainArgs train;
  auto* train_cmd = app.add_subcommand("train", "train a language model (and its tokenizer)");
  train_cmd->add_option("--corpus", train.corpus, "corpus: .txt, .jsonl or directory")->required();
  train_cmd->add_option("--out", train.out, "model directory to write")->required();
  train_cmd->add_option("--arch", train.arch, "lm or retro")->capture_default_str();
  train_cmd->add_option("--index", train.index, "index directory (--arch retro)");
  train_cmd->add_option("--init", train.init, "model directory to start from (--arch retro)");
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

  std::string score_model, score_text, score_file, score_mode = "lm";
  bool score_json = false;
  auto* score_cmd = app.add_subcommand("score", "log-likelihood and perplexity of a text");
  score_cmd->add_option("--model", score_model, "model directory")->required();
  score_cmd->add_option("--text", score_text, "text to score");
  score_cmd->add_option("--text-file", score_file, "file whose bytes are the text");
  score_cmd->add_option("--mode", score_mode, "lm, knnlm or retro")->capture_default_str();
  score_cmd->add_flag("--json", score_json, "JSON with per-token log-probs");

  GenerateArgs gen;
  gen.sampling.max_tokens = 40;
  auto* gen_cmd = app.add_subcommand("generate", "continue a prompt");
  gen_cmd->add_option("--model", gen.model, "model directory")->required();
  gen_cmd->add_option("--prompt", gen.prompt, "prompt text");
  gen_cmd->add_option("--prompt-file", gen.prompt_file, "file whose bytes are the prompt");
  gen_cmd->add_option("--mode", gen.mode, "lm, knnlm or retro")->capture_default_str();
  gen_cmd->add_option("--max-tokens", gen.sampling.max_tokens, "tokens to generate")->capture_default_str();
  gen_cmd->add_option("--temperature", gen.sampling.temperature, "0 = greedy")->capture_default_str();
  gen_cmd->add_option("--top-k", gen.sampling.top_k, "sample from the k most likely (0 = all)")->capture_default_str();
  gen_cmd->add_option("--top-p", gen.sampling.top_p, "nucleus mass")->capture_default_str();
  gen_cmd->add_option("--seed", gen.sampling.seed, "sampling seed")->capture_default_str();
  gen_cmd->add_flag("--json", gen.json_out, "print JSON");

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
  build_cmd->add_flag("--json", build.json_out, "print the manifest as JSON");
  build_cmd->add_flag("--quiet", build.quiet, "no progress lines");

  QueryArgs query;
  auto* query_cmd = app.add_subcommand("query", "nearest chunks of a text");
  query_cmd->add_option("--model", query.model, "model directory")->required();
  query_cmd->add_option("--index", query.index, "index directory");
  query_cmd->add_option("--text", query.text, "query text");
  query_cmd->add_option("--text-file", query.text_file, "file whose bytes are the query");
  query_cmd->add_option("-k,--k", query.k, "neighbours")->capture_default_str();
  query_cmd->add_option("--nprobe", query.nprobe, "IVF lists to visit")->capture_default_str();
  query_cmd->add_option("--exclude-doc", query.exclude, "document id never to return (repeatable)");
  query_cmd->add_option("--embedder", query.embedder, "the TorchScript encoder the index was built with");
  query_cmd->add_flag("--json", query.json_out, "print JSON");

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
  ppl_cmd->add_option("--model", ppl.model, "model directory")->required();
  ppl_cmd->add_option("--corpus", ppl.corpus, "corpus: .txt, .jsonl or directory")->required();
  ppl_cmd->add_option("--split", ppl.split, "all, train or validation (the model's own split)")->capture_default_str();
  ppl_cmd->add_option("--mode", ppl.mode, "lm, knnlm or retro")->capture_default_str();
  ppl_cmd->add_option("--baseline", ppl.baseline, "unigram or none")->capture_default_str();
  ppl_cmd->add_option("--stride", ppl.stride, "new tokens per sliding window (0 = context/2)");
  ppl_cmd->add_flag("--json", ppl.json_out, "print JSON");
  ppl_cmd->add_option("--output", ppl.output, "also write the JSON result to this file");
  ppl_cmd->add_flag("--quiet", ppl.quiet, "no progress lines");

  CLI11_PARSE(app, argc, argv);
  if (threads < 0) {
    std::fprintf(stderr, "rag: error: --threads must be >= 0\n");
    return 2;
  }
  rag::lm::ConfigureRuntime(threads);

  try {
    if (train_cmd->parsed()) return RunTrain(train);
    if (score_cmd->parsed()) return RunScore(score_model, score_text, score_file, score_mode, score_json);
    if (gen_cmd->parsed()) return RunGenerate(gen);
    if (ppl_cmd->parsed()) return RunEvalPerplexity(ppl);
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

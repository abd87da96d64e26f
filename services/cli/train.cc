#include "services/cli/train.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>

#include "common/file_util.h"
#include "common/status.h"
#include "index_builder/corpus_reader.h"
#include "index_builder/retro_training.h"
#include "lm/distributed.h"
#include "lm/train_pipeline.h"

namespace rag::cli {
namespace {

namespace fs = std::filesystem;

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
  int nprobe = rag::retriever::kDefaultNprobe;
  bool dist = false;
  std::string dist_store, dist_interface;
  double dist_timeout = 300;
};

// With --dist, joins the data-parallel group the launcher's environment
// describes (lm/distributed.h); nullptr without.
absl::StatusOr<std::unique_ptr<rag::lm::DistContext>> JoinGroupIfDist(const TrainArgs& a) {
  if (!a.dist) {
    if (!a.dist_store.empty() || !a.dist_interface.empty()) {
      return absl::InvalidArgumentError("--dist-store and --dist-interface apply to --dist only");
    }
    return std::unique_ptr<rag::lm::DistContext>();
  }
  rag::lm::DistOptions o;
  o.store_path = a.dist_store;
  o.interface = a.dist_interface;
  o.timeout = std::chrono::milliseconds(static_cast<int64_t>(a.dist_timeout * 1000));
  auto ctx = rag::lm::DistContext::FromEnvironment(o);
  if (ctx.ok()) std::fprintf(stderr, "train: data-parallel, %s\n", (*ctx)->Describe().c_str());
  return ctx;
}

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
  job.validation_fraction = a.validation_fraction;
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
  auto group = JoinGroupIfDist(a);
  if (!group.ok()) return Fail(group.status());
  job.trainer.dist = group->get();
  InstallStopHandlers();
  auto summary = rag::index_builder::TrainRetro(job, &g_stop);
  if (!summary.ok()) return Fail(summary.status());
  if (*group && !(*group)->is_root()) return 0;  // rank 0 reports
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
    std::printf(
        "trained %s (RETRO, %s): %lld steps in %.0f s; validation loss %.3f with neighbours, %.3f "
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
  auto group = JoinGroupIfDist(a);
  if (!group.ok()) return Fail(group.status());
  job.trainer.dist = group->get();
  const bool root = !*group || (*group)->is_root();
  if (!a.gpt2_vocab.empty() && root) {
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
  if (!a.gpt2_vocab.empty() && *group) {
    // The other ranks read the tokenizer rank 0 just wrote (--out shared).
    if (auto s = (*group)->Barrier("writing the GPT-2 tokenizer"); !s.ok()) return Fail(s);
  }
  InstallStopHandlers();
  auto summary = rag::lm::TrainLanguageModel(std::move(*docs), job, &g_stop);
  if (!summary.ok()) return Fail(summary.status());
  if (!root) return 0;  // rank 0 reports
  json j = {{"model_dir", a.out},
            {"steps", summary->steps},
            {"train_tokens", summary->train_tokens},
            {"validation_tokens", summary->validation_tokens},
            {"final_train_loss", summary->final_loss},
            {"validation_loss", summary->validation_loss},
            {"seconds", summary->seconds}};
  // Step costs of this run (rank 0's): what bench/bench_dist_train.sh reads.
  const auto& t = summary->step_times;
  if (t.steps > 0) {
    j["step_seconds"] = t.step_seconds;
    j["steps_timed"] = t.steps;
    j["train_tokens_per_second"] = static_cast<double>(summary->tokens_per_step * t.steps) / t.step_seconds;
    j["allreduce_ms_per_step"] = 1e3 * t.allreduce_seconds / static_cast<double>(t.steps);
    j["allreduce_bytes_per_step"] = t.allreduce_bytes;
  }
  if (a.json_out) {
    PrintJson(j);
  } else {
    std::printf(
        "trained %s: %lld steps in %.0f s, train loss %.3f, validation loss %.3f (ppl %.1f on the trainer's windows)\n",
        a.out.c_str(), static_cast<long long>(summary->steps), summary->seconds, summary->final_loss,
        summary->validation_loss, std::exp(summary->validation_loss));
  }
  return 0;
}

}  // namespace

Command AddTrainCommand(CLI::App* app) {
  auto a = std::make_shared<TrainArgs>();
  auto* cmd = app->add_subcommand("train", "train a language model (and its tokenizer)");
  cmd->add_option("--corpus", a->corpus,
                  "corpus: .txt, .jsonl or directory (retro: optional, restricts the index's documents)");
  cmd->add_option("--out", a->out, "model directory to write")->required();
  cmd->add_option("--arch", a->arch, "lm or retro")->capture_default_str();
  cmd->add_option("--index", a->index, "index directory (--arch retro)");
  cmd->add_option("--init", a->init,
                  "retro: the LM the index was built with (its decoder, tokenizer, split): a `rag train` "
                  "directory or a downloaded Hugging Face GPT-2 / GPT-NeoX one");
  cmd->add_flag("--train-all", a->train_all, "retro: train the decoder too (default: retrofit, decoder frozen)");
  cmd->add_option("--exclude-documents", a->exclude_documents,
                  "retro: a corpus (.jsonl/.txt/dir) whose document ids are never trained on nor retrieved "
                  "for prompt windows (e.g. the facts a probe set asks)");
  cmd->add_option("--prompt-windows", a->prompt_windows,
                  "retro: prompt windows per step (a prompt ending a chunk, the next chunk attending its "
                  "neighbours; default: the preset's, 0 = off)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--prompts-per-document", a->prompts_per_document, "retro: prompt windows drawn per document")
      ->capture_default_str();
  cmd->add_option("--prompt-own-document", a->prompt_own_document,
                  "retro: fraction of prompts whose neighbours may come from their own document "
                  "(an experiment against RETRO's rule; default never)")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  cmd->add_option("--prompt-search", a->prompt_search, "retro: dense or bm25, how prompt neighbours are found")
      ->capture_default_str();
  cmd->add_option("--neighbour-search", a->neighbour_search,
                  "retro: dense or bm25, how every training chunk's neighbours are found (evaluate with the "
                  "same --search-method)")
      ->check(CLI::IsMember({"dense", "bm25"}))
      ->capture_default_str();
  cmd->add_option("--own-document-filter", a->own_document_filter,
                  "retro: 0 = a training chunk never retrieves its own document (RETRO's rule); N > 0 = it may, "
                  "and neighbours sharing a run of N tokens with the chunk they help predict are dropped (the "
                  "leakage filter of `rag eval perplexity` without --exclude-own-doc)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--nprobe", a->nprobe, "retro: IVF lists visited when precomputing neighbours")
      ->capture_default_str();
  cmd->add_option("--preset", a->preset, "tiny, small or base")->capture_default_str();
  cmd->add_option("--config", a->config_file, "JSON file of model config overrides");
  cmd->add_option("--steps", a->steps, "optimizer steps (default: the preset's)");
  cmd->add_option("--batch-size", a->batch_size, "sequences per step");
  cmd->add_option("--seq-len", a->seq_len, "tokens per training sequence (<= context)");
  cmd->add_option("--lr", a->lr, "peak learning rate");
  cmd->add_option("--warmup", a->warmup, "warm-up steps");
  cmd->add_option("--gpt2-vocab", a->gpt2_vocab,
                  "directory with GPT-2's encoder.json + vocab.bpe to use as the tokenizer");
  cmd->add_option("--vocab-size", a->vocab_size, "tokenizer vocabulary when one is trained")->capture_default_str();
  cmd->add_option("--validation-fraction", a->validation_fraction,
                  "fraction of documents held out (retro: only when --init has no split.json, i.e. a "
                  "downloaded model)")
      ->capture_default_str();
  cmd->add_option("--checkpoint-every", a->checkpoint_every, "steps between checkpoints");
  cmd->add_option("--eval-every", a->eval_every, "steps between validation losses");
  cmd->add_option("--seed", a->seed, "seed for split, init and batches")->capture_default_str();
  cmd->add_flag("--resume", a->resume, "continue from the checkpoint in --out");
  cmd->add_flag("--overwrite", a->overwrite, "start over even if --out holds a run");
  cmd->add_flag("--json", a->json_out, "print the summary as JSON");
  cmd->add_flag("--quiet", a->quiet, "no progress lines");
  cmd->add_flag("--dist", a->dist,
                "data-parallel training over c10d/Gloo: rank and world from RANK/WORLD_SIZE (torchrun style), "
                "mpirun's or srun's variables, rendezvous at MASTER_ADDR:MASTER_PORT (rank 0 serves); "
                "--batch-size must be divisible by the world size; rank 0 writes --out");
  cmd->add_option("--dist-store", a->dist_store,
                  "--dist: rendezvous through this file (c10d FileStore, one machine or a shared filesystem) "
                  "instead of MASTER_ADDR:MASTER_PORT");
  cmd->add_option("--dist-interface", a->dist_interface,
                  "--dist: network interface (e.g. eth0) or address Gloo binds (default: the one that reaches "
                  "MASTER_ADDR)");
  cmd->add_option("--dist-timeout", a->dist_timeout,
                  "--dist: seconds before a silent rank counts as dead (rendezvous and every collective)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  return {cmd, [a] { return RunTrain(*a); }};
}

}  // namespace rag::cli

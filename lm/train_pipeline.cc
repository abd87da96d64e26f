#include "lm/train_pipeline.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "common/file_util.h"
#include "common/progress.h"
#include "common/status.h"
#include "lm/data_split.h"
#include "lm/language_model.h"

namespace rag::lm {
namespace fs = std::filesystem;

absl::StatusOr<TrainerOptions> PresetTrainerOptions(const std::string& preset) {
  TrainerOptions o;
  if (preset == "tiny") {
    o.steps = 300; o.batch_size = 16; o.lr = 3e-3; o.warmup_steps = 30;
    o.checkpoint_every = 100; o.eval_every = 50;
  } else if (preset == "small") {
    // Sized for the demo's budget: ~8 minutes on 2 cores (~2.2k tokens/s).
    // Full-context sequences: positions never trained would hurt evaluation.
    o.steps = 500; o.batch_size = 8; o.lr = 2e-3; o.warmup_steps = 50;
    o.checkpoint_every = 100; o.eval_every = 50;
  } else if (preset == "base") {
    o.steps = 4000; o.batch_size = 16; o.lr = 1e-3; o.warmup_steps = 200;
    o.checkpoint_every = 250; o.eval_every = 250;
  } else {
    return absl::InvalidArgumentError("unknown preset '" + preset + "' (known: tiny, small, base)");
  }
  return o;
}

namespace {

std::vector<TokenId> EncodeStream(const Tokenizer& tok, const std::vector<Document>& docs, const char* label) {
  size_t total = 0;
  for (const auto& d : docs) total += d.text.size();
  Progress progress(std::string("tokenize ") + label, static_cast<int64_t>(total), "bytes");
  std::vector<TokenId> out;
  size_t done = 0;
  for (const auto& d : docs) {
    auto ids = tok.Encode(d.text);
    out.insert(out.end(), ids.begin(), ids.end());
    out.push_back(tok.eot_id());
    done += d.text.size();
    progress.Update(static_cast<int64_t>(done));
  }
  progress.Finish(std::to_string(out.size()) + " tokens");
  return out;
}

}  // namespace

absl::StatusOr<TrainSummary> TrainLanguageModel(std::vector<Document> documents, const TrainJob& job,
                                                const std::atomic<bool>* stop) {
  const auto started = std::chrono::steady_clock::now();
  if (job.out_dir.empty()) return absl::InvalidArgumentError("no output model directory given");
  if (documents.empty()) return absl::InvalidArgumentError("corpus has no documents");
  if (job.validation_fraction < 0 || job.validation_fraction >= 1) {
    return absl::InvalidArgumentError("validation fraction must be in [0, 1)");
  }
  RAG_ASSIGN_OR_RETURN(TransformerConfig config, TransformerConfig::Preset(job.preset));
  const fs::path dir(job.out_dir);
  const std::string checkpoint = (dir / kCheckpointFile).string();
  if (job.resume && !fs::exists(checkpoint)) {
    return absl::FailedPreconditionError("--resume: no checkpoint at '" + checkpoint + "'");
  }
  if (!job.resume && !job.overwrite && (fs::exists(checkpoint) || fs::exists(dir / kInfoFile))) {
    return absl::FailedPreconditionError("'" + job.out_dir +
                                         "' already holds a model or checkpoint; pass --resume to continue "
                                         "it or --overwrite to start over");
  }
  // Data-parallel, rank 0 alone writes the model directory; the other ranks
  // compute the same split and tokenizer (deterministic from the seed and
  // corpus) and only read it. The ranks' corpora are compared at the start.
  const bool writer = job.trainer.dist == nullptr || job.trainer.dist->is_root();
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError("creating '" + job.out_dir + "': " + ec.message());
  if (job.overwrite && writer) fs::remove(dir / kInfoFile, ec);

  DataSplit split = SplitDocuments(std::move(documents), job.validation_fraction, job.trainer.seed);
  if (split.train.empty()) return absl::InvalidArgumentError("no training documents after the split");
  if (writer) {
    RAG_RETURN_IF_ERROR(WriteFileAtomic((dir / kSplitFile).string(),
                                        SplitToJson(split, job.validation_fraction, job.trainer.seed)));
  }

  // The tokenizer is trained on the training side only, and reused when the
  // directory already has one (a resumed run, or one a user brought).
  const std::string tok_path = (dir / kTokenizerFile).string();
  absl::StatusOr<Tokenizer> tokenizer = absl::NotFoundError("");
  if (fs::exists(tok_path)) {
    tokenizer = Tokenizer::Load(tok_path);
    if (!tokenizer.ok()) return Annotate(tokenizer.status(), "reading existing tokenizer");
    std::fprintf(stderr, "train: using the tokenizer in %s (%d tokens)\n", tok_path.c_str(), tokenizer->vocab_size());
  } else {
    std::vector<std::string> texts;
    texts.reserve(split.train.size());
    for (const auto& d : split.train) texts.push_back(d.text);
    TokenizerTrainOptions topts;
    topts.vocab_size = job.vocab_size;
    topts.show_progress = job.trainer.show_progress;
    tokenizer = Tokenizer::Train(texts, topts);
    if (!tokenizer.ok()) return Annotate(tokenizer.status(), "training tokenizer");
    if (writer) RAG_RETURN_IF_ERROR(tokenizer->Save(tok_path));
  }
  config.vocab_size = tokenizer->vocab_size();
  if (!job.config_overrides_json.empty()) {
    RAG_RETURN_IF_ERROR(Annotate(config.ApplyOverrides(job.config_overrides_json), "--config"));
    if (config.vocab_size < tokenizer->vocab_size()) {
      return absl::InvalidArgumentError("--config: vocab_size is smaller than the tokenizer's");
    }
  }

  TrainingData data;
  data.train = EncodeStream(*tokenizer, split.train, "train");
  data.validation = EncodeStream(*tokenizer, split.validation, "validation");

  TrainSummary summary;
  summary.train_tokens = static_cast<int64_t>(data.train.size());
  summary.validation_tokens = static_cast<int64_t>(data.validation.size());
  summary.train_documents = split.train.size();
  summary.validation_documents = split.validation.size();

  RAG_ASSIGN_OR_RETURN(auto trainer, Trainer::Create(config, job.trainer, std::move(data), checkpoint, job.resume));
  if (job.resume) std::fprintf(stderr, "train: resuming at step %lld\n", static_cast<long long>(trainer->step()));
  std::fprintf(stderr, "train: %lld parameters, %lld train tokens, %lld validation tokens\n",
               static_cast<long long>(trainer->model()->NumParameters()),
               static_cast<long long>(summary.train_tokens), static_cast<long long>(summary.validation_tokens));
  RAG_RETURN_IF_ERROR(trainer->Run(stop));

  const auto& hist = trainer->history();
  const size_t tail = std::max<size_t>(1, hist.size() / 20);
  double sum = 0;
  for (size_t i = hist.size() - tail; i < hist.size(); ++i) sum += hist[i].loss;
  summary.steps = trainer->step();
  summary.step_times = trainer->step_times();
  summary.tokens_per_step = job.trainer.batch_size * trainer->seq_len();
  summary.final_loss = sum / static_cast<double>(tail);
  summary.validation_loss = trainer->ValidationLoss();
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();

  if (!writer) return summary;  // rank 0 saves the (identical) model
  trainer->model()->eval();
  LanguageModel model(config, std::move(*tokenizer), trainer->model());
  nlohmann::json info = {{"arch", "lm"},
                         {"preset", job.preset},
                         {"steps", summary.steps},
                         {"seed", job.trainer.seed},
                         {"train_tokens", summary.train_tokens},
                         {"validation_tokens", summary.validation_tokens},
                         {"train_documents", summary.train_documents},
                         {"validation_documents", summary.validation_documents},
                         {"final_train_loss", summary.final_loss},
                         {"validation_loss", std::isfinite(summary.validation_loss) ? nlohmann::json(summary.validation_loss) : nlohmann::json()}};
  RAG_RETURN_IF_ERROR(model.Save(job.out_dir, info.dump()));
  return summary;
}

}  // namespace rag::lm

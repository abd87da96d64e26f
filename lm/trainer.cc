#include "lm/trainer.h"

#include <xxhash.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <mutex>
#include <random>
#include <sstream>

#include "common/progress.h"
#include "common/status.h"

namespace rag::lm {

Trainer::Trainer(const TransformerConfig& config, const TrainerOptions& options, TrainingData data)
    : config_(config),
      options_(options),
      data_(std::move(data)),
      seq_len_(options.seq_len > 0 ? std::min(options.seq_len, config.context) : config.context) {}

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(const TransformerConfig& config,
                                                         const TrainerOptions& options, TrainingData data,
                                                         std::string checkpoint_path, bool resume) {
  RAG_RETURN_IF_ERROR(config.Validate());
  RAG_RETURN_IF_ERROR(ValidateTrainingLoopOptions(options));
  std::unique_ptr<Trainer> t(new Trainer(config, options, std::move(data)));
  if (static_cast<int64_t>(t->data_.train.size()) < t->seq_len_ + 1) {
    return absl::InvalidArgumentError("training data has " + std::to_string(t->data_.train.size()) +
                                      " tokens, fewer than one sequence of " + std::to_string(t->seq_len_ + 1));
  }
  for (TokenId id : t->data_.train) {
    if (id < 0 || id >= config.vocab_size) {
      return absl::InvalidArgumentError("training token id " + std::to_string(id) + " outside the vocabulary");
    }
  }
  {
    // Ranks run as threads of one process (tests) share the CPU generator:
    // seeding and drawing the initial weights is one critical section.
    static std::mutex init_mutex;
    std::lock_guard<std::mutex> lock(init_mutex);
    torch::manual_seed(options.seed);
    t->model_ = TransformerLM(config);
  }
  t->model_->train();
  TrainingTask* task = t.get();  // a private base: converted here, where it is accessible
  t->loop_ = std::make_unique<TrainingLoop>(options, task, t->model_.ptr(), t->model_->parameters(),
                                            CheckpointSpec{std::move(checkpoint_path), t->Fingerprint(),
                                                           "model config"},
                                            "train");
  if (resume) RAG_RETURN_IF_ERROR(t->loop_->Resume());
  RAG_RETURN_IF_ERROR(t->loop_->JoinGroup(
      {{"model config", config.ToJson() + "|seq=" + std::to_string(t->seq_len_)},
       {"corpus", std::to_string(t->data_.train.size()) + " training tokens, XXH3 " +
                      std::to_string(XXH3_64bits(t->data_.train.data(), t->data_.train.size() * sizeof(TokenId)))},
       {"validation data",
        std::to_string(t->data_.validation.size()) + " tokens, XXH3 " +
            std::to_string(XXH3_64bits(t->data_.validation.data(), t->data_.validation.size() * sizeof(TokenId)))}}));
  return t;
}

torch::Tensor Trainer::BatchForStep(int64_t step) const {
  // Window starts drawn from an RNG seeded by (seed, step) alone: resuming at
  // step s replays exactly the batches an uninterrupted run would see.
  std::mt19937_64 rng(options_.seed * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(step));
  const int64_t max_start = static_cast<int64_t>(data_.train.size()) - (seq_len_ + 1);
  std::uniform_int_distribution<int64_t> pick(0, max_start);
  auto batch = torch::empty({options_.batch_size, seq_len_ + 1}, torch::kLong);
  auto acc = batch.accessor<int64_t, 2>();
  for (int64_t b = 0; b < options_.batch_size; ++b) {
    const int64_t s = pick(rng);
    for (int64_t j = 0; j <= seq_len_; ++j) acc[b][j] = data_.train[s + j];
  }
  return batch;
}

torch::Tensor Trainer::StepLoss(int64_t step) {
  auto batch = BatchForStep(step);                        // [B, S + 1]
  // Data-parallel: this rank's rows of the same global batch ([B/N, S + 1]).
  const BatchShare share = ShareOfBatch(options_, batch.size(0));
  if (share.world_size > 1) batch = batch.narrow(0, share.first, share.count);
  auto inputs = batch.narrow(1, 0, seq_len_);             // [B, S]
  auto targets = batch.narrow(1, 1, seq_len_);            // [B, S]
  auto logits = model_->forward(inputs);                  // [B, S, V]
  auto loss = torch::nn::functional::cross_entropy(logits.view({-1, logits.size(-1)}), targets.reshape({-1}));
  // Every row has S targets, so the global mean is the mean of the ranks'
  // means: shares of loss / N sum to it (and their gradients to its).
  return share.world_size > 1 ? loss / static_cast<double>(share.world_size) : loss;
}

double Trainer::Step() { return loop_->Step(); }

absl::Status Trainer::Run(const std::atomic<bool>* stop) { return loop_->Run(stop); }

absl::Status Trainer::SaveCheckpoint() { return loop_->SaveCheckpoint(); }

double Trainer::ValidationLoss() {
  const auto& val = data_.validation;
  const int64_t span = seq_len_ + 1;
  if (static_cast<int64_t>(val.size()) < span) return std::nan("");
  torch::NoGradGuard no_grad;
  model_->eval();
  // Evenly spaced windows over the whole validation stream: fixed, so losses
  // from different steps are comparable.
  const int64_t n_windows = std::max<int64_t>(1, options_.eval_batches * options_.batch_size);
  const int64_t max_start = static_cast<int64_t>(val.size()) - span;
  double total = 0;
  int64_t count = 0;
  for (int64_t first = 0; first < n_windows; first += options_.batch_size) {
    const int64_t b = std::min(options_.batch_size, n_windows - first);
    auto batch = torch::empty({b, span}, torch::kLong);
    auto acc = batch.accessor<int64_t, 2>();
    for (int64_t i = 0; i < b; ++i) {
      const int64_t s = n_windows == 1 ? 0 : (first + i) * max_start / (n_windows - 1);
      for (int64_t j = 0; j < span; ++j) acc[i][j] = val[s + j];
    }
    auto logits = model_->forward(batch.narrow(1, 0, seq_len_));
    auto loss = torch::nn::functional::cross_entropy(
        logits.view({-1, logits.size(-1)}), batch.narrow(1, 1, seq_len_).reshape({-1}),
        torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
    total += loss.item<double>();
    count += b * seq_len_;
  }
  model_->train();
  return total / static_cast<double>(count);
}

std::vector<double> Trainer::Evaluate() { return {ValidationLoss()}; }

std::string Trainer::ProgressLine(const StepReport& report) {
  const double val = report.evaluation->empty() ? std::nan("") : report.evaluation->front();
  const int64_t tokens_per_step = options_.batch_size * seq_len_;
  char extra[160];
  std::snprintf(extra, sizeof(extra), "loss %.3f, val %.3f, lr %.2e, %s tok/s", report.loss, val, report.lr,
                HumanCount(tokens_per_step * report.steps_this_run / std::max(report.seconds, 1e-9)).c_str());
  return extra;
}

std::string Trainer::Fingerprint() const {
  std::ostringstream s;
  s << config_.ToJson() << "|seq=" << seq_len_ << ScheduleFingerprint(options_) << "|clip=" << options_.grad_clip
    << "|data=" << XXH3_64bits(data_.train.data(), data_.train.size() * sizeof(TokenId));
  return s.str();
}

}  // namespace rag::lm

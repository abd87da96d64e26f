#include "lm/trainer.h"

#include <unistd.h>
#include <xxhash.h>

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <mutex>
#include <cstdio>
#include <random>
#include <sstream>

#include "common/file_util.h"
#include "common/progress.h"
#include "common/status.h"
#include "lm/internal/checkpoint.h"

namespace rag::lm {

Trainer::Trainer(const TransformerConfig& config, const TrainerOptions& options, TrainingData data,
                 std::string checkpoint_path)
    : config_(config),
      options_(options),
      data_(std::move(data)),
      checkpoint_path_(std::move(checkpoint_path)),
      seq_len_(options.seq_len > 0 ? std::min(options.seq_len, config.context) : config.context) {}

absl::StatusOr<std::unique_ptr<Trainer>> Trainer::Create(const TransformerConfig& config,
                                                         const TrainerOptions& options, TrainingData data,
                                                         std::string checkpoint_path, bool resume) {
  RAG_RETURN_IF_ERROR(config.Validate());
  if (options.steps < 1) return absl::InvalidArgumentError("steps must be >= 1");
  if (options.batch_size < 1) return absl::InvalidArgumentError("batch_size must be >= 1");
  if (!(options.lr > 0)) return absl::InvalidArgumentError("lr must be > 0");
  std::unique_ptr<Trainer> t(new Trainer(config, options, std::move(data), std::move(checkpoint_path)));
  if (static_cast<int64_t>(t->data_.train.size()) < t->seq_len_ + 1) {
    return absl::InvalidArgumentError("training data has " + std::to_string(t->data_.train.size()) +
                                      " tokens, fewer than one sequence of " + std::to_string(t->seq_len_ + 1));
  }
  for (TokenId id : t->data_.train) {
    if (id < 0 || id >= config.vocab_size) {
      return absl::InvalidArgumentError("training token id " + std::to_string(id) + " outside the vocabulary");
    }
  }
  torch::manual_seed(options.seed);
  t->model_ = TransformerLM(config);
  t->model_->train();
  // Weight decay on matrices only: decaying norms and biases hurts small models.
  std::vector<torch::Tensor> decay, no_decay;
  for (auto& p : t->model_->parameters()) (p.dim() >= 2 ? decay : no_decay).push_back(p);
  auto opts = torch::optim::AdamWOptions(options.lr).betas({options.beta1, options.beta2});
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(
                                 torch::optim::AdamWOptions(opts).weight_decay(options.weight_decay)));
  groups.emplace_back(no_decay, std::make_unique<torch::optim::AdamWOptions>(
                                    torch::optim::AdamWOptions(opts).weight_decay(0.0)));
  t->optimizer_ = std::make_unique<torch::optim::AdamW>(std::move(groups), opts);
  if (resume) RAG_RETURN_IF_ERROR(t->LoadCheckpoint());
  return t;
}

double Trainer::LearningRate(int64_t step) const {
  if (options_.warmup_steps > 0 && step < options_.warmup_steps) {
    return options_.lr * static_cast<double>(step + 1) / static_cast<double>(options_.warmup_steps);
  }
  const double span = std::max<int64_t>(1, options_.steps - options_.warmup_steps);
  const double progress = std::min(1.0, static_cast<double>(step - options_.warmup_steps) / span);
  const double min_lr = options_.lr * options_.min_lr_ratio;
  return min_lr + 0.5 * (options_.lr - min_lr) * (1.0 + std::cos(M_PI * progress));
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

double Trainer::Step() {
  const double lr = LearningRate(step_);
  for (auto& group : optimizer_->param_groups()) {
    static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
  }
  auto batch = BatchForStep(step_);                       // [B, S + 1]
  auto inputs = batch.narrow(1, 0, seq_len_);             // [B, S]
  auto targets = batch.narrow(1, 1, seq_len_);            // [B, S]
  optimizer_->zero_grad();
  auto logits = model_->forward(inputs);                  // [B, S, V]
  auto loss = torch::nn::functional::cross_entropy(logits.view({-1, logits.size(-1)}), targets.reshape({-1}));
  loss.backward();
  if (options_.grad_clip > 0) torch::nn::utils::clip_grad_norm_(model_->parameters(), options_.grad_clip);
  optimizer_->step();
  const double value = loss.item<double>();
  history_.push_back({step_, value, lr});
  ++step_;
  return value;
}

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

std::string Trainer::Fingerprint() const {
  std::ostringstream s;
  s << config_.ToJson() << "|seq=" << seq_len_ << "|batch=" << options_.batch_size << "|seed=" << options_.seed
    << "|lr=" << options_.lr << "|warmup=" << options_.warmup_steps << "|min_lr=" << options_.min_lr_ratio
    << "|wd=" << options_.weight_decay << "|clip=" << options_.grad_clip << "|data="
    << XXH3_64bits(data_.train.data(), data_.train.size() * sizeof(TokenId));
  return s.str();
}

absl::Status Trainer::SaveCheckpoint() {
  return internal::SaveCheckpoint(checkpoint_path_, *model_, *optimizer_, step_, history_, Fingerprint());
}

absl::Status Trainer::LoadCheckpoint() {
  return internal::LoadCheckpoint(checkpoint_path_, Fingerprint(), "model config", *model_, *optimizer_, &step_, &history_);
}

absl::Status Trainer::Run(const std::atomic<bool>* stop) {
  std::unique_ptr<Progress> progress;
  if (options_.show_progress) progress = std::make_unique<Progress>("train", options_.steps, "steps");
  const int64_t tokens_per_step = options_.batch_size * seq_len_;
  auto started = std::chrono::steady_clock::now();
  const int64_t first_step = step_;
  double last_val = std::nan("");
  while (step_ < options_.steps) {
    if (stop != nullptr && stop->load()) {
      if (progress) progress->Finish("interrupted");
      RAG_RETURN_IF_ERROR(SaveCheckpoint());
      return absl::CancelledError("training interrupted at step " + std::to_string(step_) +
                                  "; checkpoint saved, continue with --resume");
    }
    const double loss = Step();
    if (options_.eval_every > 0 && step_ % options_.eval_every == 0) last_val = ValidationLoss();
    if (options_.checkpoint_every > 0 && step_ % options_.checkpoint_every == 0 && step_ < options_.steps) {
      RAG_RETURN_IF_ERROR(SaveCheckpoint());
    }
    if (progress) {
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
      char extra[160];
      std::snprintf(extra, sizeof(extra), "loss %.3f, val %.3f, lr %.2e, %s tok/s", loss, last_val,
                    history_.back().lr, HumanCount(tokens_per_step * (step_ - first_step) / std::max(secs, 1e-9)).c_str());
      progress->Update(step_, extra);
      if (step_ == options_.steps) progress->Finish(extra);
    }
  }
  return SaveCheckpoint();
}

}  // namespace rag::lm

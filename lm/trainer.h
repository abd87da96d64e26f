// Trains a TransformerLM on token streams: AdamW with linear warm-up and
// cosine decay, gradient clipping, periodic validation, checkpoints that
// resume exactly (weights, optimizer moments, RNG, step). Batches are a pure
// function of (seed, step), so a resumed run sees the same data as an
// uninterrupted one. Not thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "lm/model_config.h"
#include "lm/tokenizer.h"
#include "lm/transformer_lm.h"

namespace rag::lm {

struct TrainerOptions {
  int64_t steps = 1000;           // optimizer steps in total. Default: 1000
  int64_t batch_size = 16;        // sequences per step. Default: 16
  int64_t seq_len = 0;            // tokens per sequence; 0 = model context. Default: 0
  double lr = 1e-3;               // peak learning rate. Default: 1e-3
  double min_lr_ratio = 0.1;      // cosine decays to lr * min_lr_ratio. Default: 0.1
  int64_t warmup_steps = 100;     // linear warm-up. Default: 100
  double weight_decay = 0.1;      // on matrices only, not on norms/biases. Default: 0.1
  double beta1 = 0.9;             // Default: 0.9
  double beta2 = 0.95;            // Default: 0.95
  double grad_clip = 1.0;         // max global gradient norm; 0 = off. Default: 1.0
  int64_t checkpoint_every = 200; // steps between checkpoints; 0 = only at the end/interrupt. Default: 200
  int64_t eval_every = 100;       // steps between validation losses; 0 = never. Default: 100
  int64_t eval_batches = 4;       // validation batches per evaluation. Default: 4
  uint64_t seed = 1234;           // weights init, batches and dropout. Default: 1234
  bool show_progress = true;      // progress line on stderr. Default: true
};

// Token streams: documents concatenated, each followed by the end-of-text id.
struct TrainingData {
  std::vector<TokenId> train;
  std::vector<TokenId> validation;
};

struct TrainingRecord {
  int64_t step;
  double loss;
  double lr;
};

class Trainer {
 public:
  // Builds a fresh model from `config` (seeded by options.seed), or, when
  // `resume` is set, restores the state saved at `checkpoint_path`.
  // InvalidArgument when the data is too short for one sequence, DataLoss
  // for an unreadable checkpoint, FailedPrecondition when the checkpoint was
  // written for another config or other data.
  static absl::StatusOr<std::unique_ptr<Trainer>> Create(const TransformerConfig& config,
                                                         const TrainerOptions& options, TrainingData data,
                                                         std::string checkpoint_path, bool resume);

  // One optimizer step on the batch of the current step. Returns its loss.
  double Step();

  // Runs until options.steps, saving checkpoints on schedule. When `*stop`
  // becomes true (SIGINT), saves a checkpoint and returns Cancelled.
  absl::Status Run(const std::atomic<bool>* stop = nullptr);

  // Mean cross-entropy (nats/token) on a fixed set of validation batches.
  double ValidationLoss();

  absl::Status SaveCheckpoint();

  // [B, S + 1] token windows for `step` (inputs are [:, :-1], targets [:, 1:]).
  torch::Tensor BatchForStep(int64_t step) const;

  TransformerLM& model() { return model_; }
  int64_t step() const { return step_; }
  const std::vector<TrainingRecord>& history() const { return history_; }
  double LearningRate(int64_t step) const;
  int64_t seq_len() const { return seq_len_; }

 private:
  Trainer(const TransformerConfig& config, const TrainerOptions& options, TrainingData data,
          std::string checkpoint_path);
  absl::Status LoadCheckpoint();
  std::string Fingerprint() const;  // config + options that must match on resume + data hash

  TransformerConfig config_;
  TrainerOptions options_;
  TrainingData data_;
  std::string checkpoint_path_;
  int64_t seq_len_;
  TransformerLM model_{nullptr};
  std::unique_ptr<torch::optim::AdamW> optimizer_;
  int64_t step_ = 0;
  std::vector<TrainingRecord> history_;
};

}  // namespace rag::lm

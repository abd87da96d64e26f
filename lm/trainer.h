// Trains a TransformerLM on token streams: supplies batches of token
// windows, the next-token loss and the validation loss to lm::TrainingLoop,
// which owns the schedule, AdamW, checkpoints and exact resume. Batches are
// a pure function of (seed, step), so a resumed run sees the same data as an
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
#include "lm/training_loop.h"
#include "lm/transformer_lm.h"

namespace rag::lm {

// The loop's options (lm/training_loop.h) plus the sequence length.
struct TrainerOptions : TrainingLoopOptions {
  int64_t seq_len = 0;  // tokens per sequence; 0 = model context. Default: 0
};

// Token streams: documents concatenated, each followed by the end-of-text id.
struct TrainingData {
  std::vector<TokenId> train;
  std::vector<TokenId> validation;
};

class Trainer : private TrainingTask {
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
  int64_t step() const { return loop_->step(); }
  const StepTimes& step_times() const { return loop_->step_times(); }
  const std::vector<TrainingRecord>& history() const { return loop_->history(); }
  double LearningRate(int64_t step) const { return loop_->LearningRate(step); }
  int64_t seq_len() const { return seq_len_; }

 private:
  Trainer(const TransformerConfig& config, const TrainerOptions& options, TrainingData data);
  std::string Fingerprint() const;  // config + options that must match on resume + data hash

  // TrainingTask: the next-token loss of BatchForStep(step); the validation
  // loss; "loss, val, lr, tok/s".
  torch::Tensor StepLoss(int64_t step) override;
  std::vector<double> Evaluate() override;
  std::string ProgressLine(const StepReport& report) override;

  TransformerConfig config_;
  TrainerOptions options_;
  TrainingData data_;
  int64_t seq_len_;
  TransformerLM model_{nullptr};
  std::unique_ptr<TrainingLoop> loop_;
};

}  // namespace rag::lm

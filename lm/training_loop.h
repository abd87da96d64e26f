// The training loop the LM and RETRO trainers share: AdamW with weight
// decay on matrices only, linear warm-up then cosine decay, gradient
// clipping, validation and checkpoints on schedule, exact resume (weights,
// optimizer moments, CPU RNG, step, loss history) and the progress line. A
// trainer supplies the loss of a step's batch, its evaluation and its
// progress fields through TrainingTask. With a DistContext in the options
// the step is data-parallel: each rank's share of the loss, one flat
// allreduce of the gradients, then identical clipping and AdamW on every
// rank (lm/distributed.h). Not thread-safe.
#pragma once

#include <torch/torch.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "lm/distributed.h"

namespace rag::lm {

// The options every trainer's options contain (TrainerOptions,
// RetroTrainerOptions derive from it).
struct TrainingLoopOptions {
  int64_t steps = 1000;            // optimizer steps in total. Default: 1000
  int64_t batch_size = 16;         // sequences (windows) per step. Default: 16
  double lr = 1e-3;                // peak learning rate. Default: 1e-3
  double min_lr_ratio = 0.1;       // cosine decays to lr * min_lr_ratio. Default: 0.1
  int64_t warmup_steps = 100;      // linear warm-up. Default: 100
  double weight_decay = 0.1;       // on matrices only, not on norms/biases. Default: 0.1
  double beta1 = 0.9;              // Default: 0.9
  double beta2 = 0.95;             // Default: 0.95
  double grad_clip = 1.0;          // max global gradient norm; 0 = off. Default: 1.0
  int64_t checkpoint_every = 200;  // steps between checkpoints; 0 = only at the end/interrupt. Default: 200
  int64_t eval_every = 100;        // steps between validation losses; 0 = never. Default: 100
  int64_t eval_batches = 4;        // validation batches per evaluation. Default: 4
  uint64_t seed = 1234;            // weights init, batches and dropout. Default: 1234
  bool show_progress = true;       // progress line on stderr (rank 0's only). Default: true
  // Data-parallel group this process trains in (not owned; outlives the
  // trainer); nullptr = one process. Every rank must run the same options on
  // the same data: the global batch of a step is the one a single process
  // would use, and rank r computes its batch_size / N rows. Default: nullptr
  DistContext* dist = nullptr;
};

// InvalidArgument when steps < 1, batch_size < 1 or lr <= 0.
absl::Status ValidateTrainingLoopOptions(const TrainingLoopOptions& options);

// The learning rate of `step` (0-based): linear warm-up to options.lr over
// warmup_steps, then cosine decay to lr * min_lr_ratio at options.steps.
double ScheduledLearningRate(const TrainingLoopOptions& options, int64_t step);

// "|batch=..|seed=..|lr=..|warmup=..|min_lr=..|wd=..": the schedule part of
// a checkpoint fingerprint, as both trainers have always written it (each
// adds its config, data hash, clip and, for RETRO, betas around it).
std::string ScheduleFingerprint(const TrainingLoopOptions& options);

// The rows [first, first + count) of a step's global batch this process
// computes: all of them without options.dist, else rank r's equal share.
struct BatchShare {
  int64_t first;
  int64_t count;
  int world_size;
};
BatchShare ShareOfBatch(const TrainingLoopOptions& options, int64_t global_rows);

struct TrainingRecord {
  int64_t step;
  double loss;
  double lr;
};

// What the loop tells the task's progress line after a step.
// Where a process's optimizer steps spent their time (bench_dist_train):
// the whole step (batch, forward, backward, allreduce, clip, AdamW) and, data-
// parallel, the allreduce alone (flattening and copying back included).
struct StepTimes {
  int64_t steps = 0;               // steps this process ran
  double step_seconds = 0;         // their total wall time
  double allreduce_seconds = 0;    // of which in AllreduceStep
  int64_t allreduce_bytes = 0;     // size of one step's flat buffer (0 in one process)
};

struct StepReport {
  int64_t step;                          // steps done, this one included
  double loss;                           // this step's training loss
  double lr;                             // this step's learning rate
  int64_t steps_this_run;                // steps since Run() began
  double seconds;                        // since Run() began
  const std::vector<double>* evaluation; // the latest Evaluate() of this Run(); empty before the first
};

// What a trainer supplies to the loop.
class TrainingTask {
 public:
  virtual ~TrainingTask() = default;
  // The loss of `step`'s batch: a scalar the loop calls backward() on. The
  // batch must be a function of (seed, step) alone so resuming is exact.
  // Data-parallel (options.dist set): this rank's share of the global
  // batch's loss, scaled so that the ranks' shares SUM to the loss one
  // process computes on the whole batch (e.g. a token sum over the global
  // token count); the loop sums gradients and shares over the ranks.
  virtual torch::Tensor StepLoss(int64_t step) = 0;
  // Validation numbers, every eval_every steps (after the step), kept for
  // ProgressLine. Must leave the model in training mode.
  virtual std::vector<double> Evaluate() = 0;
  // The text after the progress bar for `report` (only with show_progress).
  virtual std::string ProgressLine(const StepReport& report) = 0;
};

// Where and how the loop checkpoints.
struct CheckpointSpec {
  std::string path;         // the checkpoint file, replaced atomically
  std::string fingerprint;  // what must match on resume (config, options, data hash)
  std::string config_name;  // names the config in the mismatch error, e.g. "model config"
};

class TrainingLoop {
 public:
  // Trains `parameters` (those of `model` that learn; matrices get weight
  // decay, the rest none) with AdamW. `model` is checkpointed whole. `task`
  // must outlive the loop. `progress_label` starts the progress line.
  TrainingLoop(const TrainingLoopOptions& options, TrainingTask* task, std::shared_ptr<torch::nn::Module> model,
               std::vector<torch::Tensor> parameters, CheckpointSpec checkpoint, std::string progress_label);

  // Restores the state saved at the checkpoint path. DataLoss for an
  // unreadable checkpoint, FailedPrecondition when its fingerprint differs
  // or it was written by a run of another number of processes.
  absl::Status Resume();

  // Data-parallel start (a no-op without options.dist), after Resume() if
  // any: InvalidArgument when batch_size is not divisible by the ranks;
  // FailedPrecondition naming the rank and field when the ranks' `fields`
  // (config, corpus...), options or resumed steps differ; then rank 0's
  // weights and buffers are broadcast and checked, and the ranks' dropout
  // RNGs are set apart.
  absl::Status JoinGroup(const std::vector<FingerprintField>& fields);

  // One optimizer step on the batch of the current step. Returns its loss
  // (data-parallel: the global batch's; NaN when a collective failed, which
  // Run() reports as an error).
  double Step();

  // Runs until options.steps: evaluating, checkpointing and showing
  // progress on schedule, and saving a checkpoint at the end. When `*stop`
  // becomes true (SIGINT), saves a checkpoint and returns Cancelled.
  absl::Status Run(const std::atomic<bool>* stop = nullptr);

  absl::Status SaveCheckpoint();

  int64_t step() const { return step_; }
  const std::vector<TrainingRecord>& history() const { return history_; }
  double LearningRate(int64_t step) const { return ScheduledLearningRate(options_, step); }
  const StepTimes& step_times() const { return times_; }

 private:
  // The optimizer step; data-parallel, `stop_here` is this rank's stop
  // request and *stop_any whether any rank made one (same on every rank).
  absl::StatusOr<double> DoStep(bool stop_here, bool* stop_any);
  // Sums the gradients of parameters_ and the loss share over the ranks:
  // one flat buffer, one allreduce.
  absl::StatusOr<double> AllreduceStep(const torch::Tensor& loss, bool stop_here, bool* stop_any);

  TrainingLoopOptions options_;
  TrainingTask* task_;
  std::shared_ptr<torch::nn::Module> model_;
  std::vector<torch::Tensor> parameters_;
  CheckpointSpec checkpoint_;
  std::string progress_label_;
  std::unique_ptr<torch::optim::AdamW> optimizer_;
  int64_t step_ = 0;
  std::vector<TrainingRecord> history_;
  StepTimes times_;
};

}  // namespace rag::lm

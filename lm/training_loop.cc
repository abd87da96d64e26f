#include "lm/training_loop.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <sstream>

#include "common/progress.h"
#include "common/status.h"
#include "lm/internal/checkpoint.h"

namespace rag::lm {

absl::Status ValidateTrainingLoopOptions(const TrainingLoopOptions& options) {
  if (options.steps < 1) return absl::InvalidArgumentError("steps must be >= 1");
  if (options.batch_size < 1) return absl::InvalidArgumentError("batch_size must be >= 1");
  if (!(options.lr > 0)) return absl::InvalidArgumentError("lr must be > 0");
  return absl::OkStatus();
}

double ScheduledLearningRate(const TrainingLoopOptions& options, int64_t step) {
  if (options.warmup_steps > 0 && step < options.warmup_steps) {
    return options.lr * static_cast<double>(step + 1) / static_cast<double>(options.warmup_steps);
  }
  const double span = std::max<int64_t>(1, options.steps - options.warmup_steps);
  const double progress = std::min(1.0, static_cast<double>(step - options.warmup_steps) / span);
  const double min_lr = options.lr * options.min_lr_ratio;
  return min_lr + 0.5 * (options.lr - min_lr) * (1.0 + std::cos(M_PI * progress));
}

std::string ScheduleFingerprint(const TrainingLoopOptions& options) {
  std::ostringstream s;
  s << "|batch=" << options.batch_size << "|seed=" << options.seed << "|lr=" << options.lr
    << "|warmup=" << options.warmup_steps << "|min_lr=" << options.min_lr_ratio << "|wd=" << options.weight_decay;
  return s.str();
}

TrainingLoop::TrainingLoop(const TrainingLoopOptions& options, TrainingTask* task,
                           std::shared_ptr<torch::nn::Module> model, std::vector<torch::Tensor> parameters,
                           CheckpointSpec checkpoint, std::string progress_label)
    : options_(options),
      task_(task),
      model_(std::move(model)),
      parameters_(std::move(parameters)),
      checkpoint_(std::move(checkpoint)),
      progress_label_(std::move(progress_label)) {
  // Weight decay on matrices only: decaying norms and biases hurts small models.
  std::vector<torch::Tensor> decay, no_decay;
  for (auto& p : parameters_) (p.dim() >= 2 ? decay : no_decay).push_back(p);
  auto opts = torch::optim::AdamWOptions(options_.lr).betas({options_.beta1, options_.beta2});
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(
                                 torch::optim::AdamWOptions(opts).weight_decay(options_.weight_decay)));
  groups.emplace_back(no_decay,
                      std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(opts).weight_decay(0.0)));
  optimizer_ = std::make_unique<torch::optim::AdamW>(std::move(groups), opts);
}

absl::Status TrainingLoop::Resume() {
  return internal::LoadCheckpoint(checkpoint_.path, checkpoint_.fingerprint, checkpoint_.config_name, *model_,
                                  *optimizer_, &step_, &history_);
}

absl::Status TrainingLoop::SaveCheckpoint() {
  return internal::SaveCheckpoint(checkpoint_.path, *model_, *optimizer_, step_, history_, checkpoint_.fingerprint);
}

double TrainingLoop::Step() {
  const double lr = LearningRate(step_);
  for (auto& group : optimizer_->param_groups()) {
    static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
  }
  // The task builds the batch after zero_grad (the trainers used to build it
  // just before): batches draw from their own (seed, step) RNG and touch no
  // gradient, so the order does not change a value.
  optimizer_->zero_grad();
  torch::Tensor loss = task_->StepLoss(step_);
  loss.backward();
  if (options_.grad_clip > 0) torch::nn::utils::clip_grad_norm_(parameters_, options_.grad_clip);
  optimizer_->step();
  const double value = loss.item<double>();
  history_.push_back({step_, value, lr});
  ++step_;
  return value;
}

absl::Status TrainingLoop::Run(const std::atomic<bool>* stop) {
  std::unique_ptr<Progress> progress;
  if (options_.show_progress) progress = std::make_unique<Progress>(progress_label_, options_.steps, "steps");
  const auto started = std::chrono::steady_clock::now();
  const int64_t first_step = step_;
  std::vector<double> evaluation;  // none yet in this run
  while (step_ < options_.steps) {
    if (stop != nullptr && stop->load()) {
      if (progress) progress->Finish("interrupted");
      RAG_RETURN_IF_ERROR(SaveCheckpoint());
      return absl::CancelledError("training interrupted at step " + std::to_string(step_) +
                                  "; checkpoint saved, continue with --resume");
    }
    const double loss = Step();
    if (options_.eval_every > 0 && step_ % options_.eval_every == 0) evaluation = task_->Evaluate();
    if (options_.checkpoint_every > 0 && step_ % options_.checkpoint_every == 0 && step_ < options_.steps) {
      RAG_RETURN_IF_ERROR(SaveCheckpoint());
    }
    if (progress) {
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
      const StepReport report{step_, loss, history_.back().lr, step_ - first_step, secs, &evaluation};
      const std::string extra = task_->ProgressLine(report);
      progress->Update(step_, extra);
      if (step_ == options_.steps) progress->Finish(extra);
    }
  }
  return SaveCheckpoint();
}

}  // namespace rag::lm

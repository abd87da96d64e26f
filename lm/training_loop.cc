#include "lm/training_loop.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <random>
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

BatchShare ShareOfBatch(const TrainingLoopOptions& options, int64_t global_rows) {
  if (options.dist == nullptr) return {0, global_rows, 1};
  const int n = options.dist->world_size();
  const int64_t rows = global_rows / n;  // JoinGroup refused a batch not divisible by n
  return {options.dist->rank() * rows, rows, n};
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
  const int64_t world = options_.dist == nullptr ? 1 : options_.dist->world_size();
  return internal::LoadCheckpoint(checkpoint_.path, checkpoint_.fingerprint, checkpoint_.config_name, world,
                                  *model_, *optimizer_, &step_, &history_);
}

absl::Status TrainingLoop::JoinGroup(const std::vector<FingerprintField>& fields) {
  DistContext* dist = options_.dist;
  if (dist == nullptr) return absl::OkStatus();
  const int n = dist->world_size();
  if (options_.batch_size % n != 0) {
    // Each rank must hold an equal share of the one global batch, or the
    // ranks' gradients would not add up to a single process's.
    return absl::InvalidArgumentError("--dist: the batch of " + std::to_string(options_.batch_size) +
                                      " sequences is not divisible by the " + std::to_string(n) +
                                      " ranks; choose --batch-size as a multiple of WORLD_SIZE");
  }
  std::vector<FingerprintField> all = fields;
  std::ostringstream schedule;
  schedule << "steps=" << options_.steps << ScheduleFingerprint(options_) << "|clip=" << options_.grad_clip
           << "|betas=" << options_.beta1 << "," << options_.beta2 << "|checkpoint_every=" << options_.checkpoint_every
           << "|eval_every=" << options_.eval_every << "|eval_batches=" << options_.eval_batches;
  all.emplace_back("training options", schedule.str());
  all.emplace_back("step resumed at", std::to_string(step_));
  RAG_RETURN_IF_ERROR(dist->CheckSame(all));
  std::vector<torch::Tensor> state = model_->parameters();
  for (const auto& b : model_->buffers()) state.push_back(b);
  RAG_RETURN_IF_ERROR(dist->BroadcastFromRoot(state));
  if (dist->rank() != 0) {
    // Dropout masks must differ between ranks (each masks its own rows) and
    // be reproducible: seeded by (seed, rank, step). Rank 0 keeps the stream
    // a single process (or the checkpoint) has.
    std::seed_seq seq{options_.seed, static_cast<uint64_t>(dist->rank()), static_cast<uint64_t>(step_)};
    uint32_t words[2];
    seq.generate(words, words + 2);
    torch::manual_seed((static_cast<uint64_t>(words[0]) << 32) | words[1]);
  }
  return absl::OkStatus();
}

absl::Status TrainingLoop::SaveCheckpoint() {
  const int64_t world = options_.dist == nullptr ? 1 : options_.dist->world_size();
  absl::Status saved = absl::OkStatus();
  if (options_.dist == nullptr || options_.dist->is_root()) {
    saved = internal::SaveCheckpoint(checkpoint_.path, *model_, *optimizer_, step_, history_, checkpoint_.fingerprint,
                                     world);
  }
  if (options_.dist == nullptr) return saved;
  // The barrier after the checkpoint: no rank runs ahead of a checkpoint a
  // resume would start from, and a failed write stops every rank.
  return options_.dist->Agree(saved, "the checkpoint at step " + std::to_string(step_));
}

double TrainingLoop::Step() {
  bool stop_any = false;
  absl::StatusOr<double> loss = DoStep(false, &stop_any);
  return loss.ok() ? *loss : std::numeric_limits<double>::quiet_NaN();
}

absl::StatusOr<double> TrainingLoop::DoStep(bool stop_here, bool* stop_any) {
  *stop_any = stop_here;
  const auto step_started = std::chrono::steady_clock::now();
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
  double value;
  if (options_.dist == nullptr) {
    value = loss.item<double>();
  } else {
    const auto t0 = std::chrono::steady_clock::now();
    RAG_ASSIGN_OR_RETURN(value, AllreduceStep(loss, stop_here, stop_any));
    times_.allreduce_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  // Data-parallel, clipping sees the summed gradients: the same global norm
  // (and the same AdamW step) on every rank as in one process.
  if (options_.grad_clip > 0) torch::nn::utils::clip_grad_norm_(parameters_, options_.grad_clip);
  optimizer_->step();
  history_.push_back({step_, value, lr});
  ++step_;
  ++times_.steps;
  times_.step_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - step_started).count();
  return value;
}

absl::StatusOr<double> TrainingLoop::AllreduceStep(const torch::Tensor& loss, bool stop_here, bool* stop_any) {
  torch::NoGradGuard no_grad;
  // One buffer: [gradients of every parameter | one "has a gradient" flag
  // per parameter | the loss share | the stop flag]. A parameter no rank
  // produced a gradient for stays without one, as in one process (AdamW
  // then skips it, weight decay included).
  const auto dtype = parameters_.empty() ? torch::kFloat : parameters_.front().scalar_type();
  std::vector<torch::Tensor> parts;
  parts.reserve(parameters_.size() + 1);
  auto flags = torch::zeros({static_cast<int64_t>(parameters_.size()) + 2}, dtype);
  for (size_t i = 0; i < parameters_.size(); ++i) {
    const auto& p = parameters_[i];
    if (p.grad().defined()) {
      parts.push_back(p.grad().reshape({-1}).to(dtype));
      flags[static_cast<int64_t>(i)] = 1;
    } else {
      parts.push_back(torch::zeros({p.numel()}, dtype));
    }
  }
  flags[static_cast<int64_t>(parameters_.size())] = loss.detach().to(dtype);
  flags[static_cast<int64_t>(parameters_.size()) + 1] = stop_here ? 1 : 0;
  parts.push_back(flags);
  torch::Tensor flat = torch::cat(parts);
  times_.allreduce_bytes = flat.numel() * static_cast<int64_t>(flat.element_size());
  RAG_RETURN_IF_ERROR(options_.dist->AllreduceSum(flat, "gradients at step " + std::to_string(step_)));
  int64_t offset = 0;
  const int64_t flag_base = flat.numel() - flags.numel();
  for (size_t i = 0; i < parameters_.size(); ++i) {
    auto& p = parameters_[i];
    const int64_t n = p.numel();
    if (flat[flag_base + static_cast<int64_t>(i)].item<double>() > 0) {
      auto summed = flat.narrow(0, offset, n).view(p.sizes()).to(p.scalar_type());
      if (p.grad().defined()) {
        p.mutable_grad().copy_(summed);
      } else {
        p.mutable_grad() = summed.clone();
      }
    }
    offset += n;
  }
  *stop_any = flat[flag_base + static_cast<int64_t>(parameters_.size()) + 1].item<double>() > 0;
  return flat[flag_base + static_cast<int64_t>(parameters_.size())].item<double>();
}

absl::Status TrainingLoop::Run(const std::atomic<bool>* stop) {
  std::unique_ptr<Progress> progress;
  const bool root = options_.dist == nullptr || options_.dist->is_root();
  if (options_.show_progress && root) {
    progress = std::make_unique<Progress>(progress_label_, options_.steps, "steps");
  }
  const auto started = std::chrono::steady_clock::now();
  const int64_t first_step = step_;
  std::vector<double> evaluation;  // none yet in this run
  auto interrupted = [&]() -> absl::Status {
    if (progress) progress->Finish("interrupted");
    RAG_RETURN_IF_ERROR(SaveCheckpoint());
    return absl::CancelledError("training interrupted at step " + std::to_string(step_) +
                                "; checkpoint saved, continue with --resume");
  };
  while (step_ < options_.steps) {
    const bool stop_here = stop != nullptr && stop->load();
    // Data-parallel, the stop request travels with the step's allreduce so
    // that every rank stops after the same step.
    if (stop_here && options_.dist == nullptr) return interrupted();
    bool stop_any = false;
    absl::StatusOr<double> step_loss = DoStep(stop_here, &stop_any);
    if (!step_loss.ok()) {
      if (progress) progress->Finish("failed");
      return step_loss.status();
    }
    const double loss = *step_loss;
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
    if (stop_any && step_ < options_.steps) return interrupted();
  }
  return SaveCheckpoint();
}

}  // namespace rag::lm

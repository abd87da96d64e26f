#include "lm/training_loop.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "tests/status_matchers.h"
#include "tests/test_util.h"

namespace rag::lm {
namespace {

namespace fs = std::filesystem;

// A linear regression as the task: batches are a function of the step
// alone, as the loop's exact resume requires.
class Regression : public TrainingTask {
 public:
  explicit Regression(uint64_t seed) {
    torch::manual_seed(seed);
    model = torch::nn::Linear(4, 1);
  }

  torch::Tensor StepLoss(int64_t step) override {
    auto x = torch::linspace(-1, 1, 32).view({8, 4}) * static_cast<double>(1 + step % 3);  // [8, 4]
    return torch::mse_loss(model->forward(x), Target(x));
  }

  std::vector<double> Evaluate() override {
    ++evaluations;
    torch::NoGradGuard no_grad;
    auto x = torch::linspace(-2, 2, 16).view({4, 4});
    return {torch::mse_loss(model->forward(x), Target(x)).item<double>()};
  }

  std::string ProgressLine(const StepReport& report) override {
    reports.push_back(report);
    last_evaluation_size.push_back(report.evaluation->size());
    return "ok";
  }

  static torch::Tensor Target(const torch::Tensor& x) { return x.sum(1, /*keepdim=*/true) * 0.5 - 1.0; }

  torch::nn::Linear model{nullptr};
  int evaluations = 0;
  std::vector<StepReport> reports;
  std::vector<size_t> last_evaluation_size;
};

TrainingLoopOptions Options(int64_t steps) {
  TrainingLoopOptions o;
  o.steps = steps;
  o.batch_size = 8;
  o.lr = 1e-2;
  o.warmup_steps = 3;
  o.checkpoint_every = 0;
  o.eval_every = 0;
  o.show_progress = false;
  return o;
}

std::unique_ptr<TrainingLoop> MakeLoop(const TrainingLoopOptions& options, Regression* task, const fs::path& path,
                                       const std::string& fingerprint = "fp") {
  return std::make_unique<TrainingLoop>(options, task, task->model.ptr(), task->model->parameters(),
                                        CheckpointSpec{path.string(), fingerprint, "test config"}, "test");
}

TEST(TrainingLoopTest, OptionsAreValidated) {
  RAG_EXPECT_OK(ValidateTrainingLoopOptions(Options(1)));
  TrainingLoopOptions o = Options(0);
  EXPECT_EQ(ValidateTrainingLoopOptions(o).code(), absl::StatusCode::kInvalidArgument);
  o = Options(1);
  o.batch_size = 0;
  EXPECT_EQ(ValidateTrainingLoopOptions(o).code(), absl::StatusCode::kInvalidArgument);
  o = Options(1);
  o.lr = 0;
  EXPECT_EQ(ValidateTrainingLoopOptions(o).code(), absl::StatusCode::kInvalidArgument);
}

TEST(TrainingLoopTest, ScheduleWarmsUpLinearlyThenDecaysToTheFloor) {
  TrainingLoopOptions o = Options(100);
  o.lr = 1.0;
  o.warmup_steps = 10;
  o.min_lr_ratio = 0.1;
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(o, 0), 0.1);
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(o, 9), 1.0);
  EXPECT_DOUBLE_EQ(ScheduledLearningRate(o, 10), 1.0);
  EXPECT_NEAR(ScheduledLearningRate(o, 55), 0.55, 1e-12);  // half-way down the cosine
  EXPECT_NEAR(ScheduledLearningRate(o, 100), 0.1, 1e-12);
  EXPECT_GT(ScheduledLearningRate(o, 50), ScheduledLearningRate(o, 60));
}

// Checkpoints written before the loop existed hash this text: it must not change.
TEST(TrainingLoopTest, ScheduleFingerprintKeepsItsFormat) {
  EXPECT_EQ(ScheduleFingerprint(TrainingLoopOptions()), "|batch=16|seed=1234|lr=0.001|warmup=100|min_lr=0.1|wd=0.1");
}

TEST(TrainingLoopTest, ResumeGivesTheSameCurveAsAnUninterruptedRun) {
  testing::TempDir dir;
  Regression full_task(7);
  auto full = MakeLoop(Options(20), &full_task, dir / "full.pt");
  RAG_ASSERT_OK(full->Run());
  ASSERT_EQ(full->history().size(), 20u);
  EXPECT_LT(full->history()[18].loss, full->history()[0].loss);  // steps of the same input scale

  Regression first_task(7);
  auto first = MakeLoop(Options(20), &first_task, dir / "part.pt");
  for (int i = 0; i < 7; ++i) first->Step();
  std::atomic<bool> stop{true};
  EXPECT_EQ(first->Run(&stop).code(), absl::StatusCode::kCancelled);

  Regression resumed_task(99);  // other initial weights: the checkpoint replaces them
  auto resumed = MakeLoop(Options(20), &resumed_task, dir / "part.pt");
  RAG_ASSERT_OK(resumed->Resume());
  EXPECT_EQ(resumed->step(), 7);
  RAG_ASSERT_OK(resumed->Run());
  ASSERT_EQ(resumed->history().size(), 20u);
  for (size_t i = 0; i < 20; ++i) {
    EXPECT_EQ(resumed->history()[i].loss, full->history()[i].loss) << "step " << i;
    EXPECT_EQ(resumed->history()[i].lr, full->history()[i].lr) << "step " << i;
  }
  EXPECT_TRUE(torch::equal(resumed_task.model->weight, full_task.model->weight));
}

TEST(TrainingLoopTest, ResumeRefusesAnotherFingerprintOrACorruptFile) {
  testing::TempDir dir;
  Regression task(1);
  auto loop = MakeLoop(Options(3), &task, dir / "c.pt");
  RAG_ASSERT_OK(loop->Run());
  Regression other(1);
  const absl::Status mismatch = MakeLoop(Options(3), &other, dir / "c.pt", "other")->Resume();
  EXPECT_EQ(mismatch.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(mismatch.message().find("test config"), std::string::npos) << mismatch;
  EXPECT_EQ(MakeLoop(Options(3), &other, dir / "missing.pt")->Resume().code(), absl::StatusCode::kDataLoss);
}

TEST(TrainingLoopTest, OnlyTheGivenParametersTrain) {
  testing::TempDir dir;
  Regression task(3);
  const torch::Tensor bias = task.model->bias.clone();
  TrainingLoop loop(Options(5), &task, task.model.ptr(), {task.model->weight},
                    CheckpointSpec{dir / "w.pt", "fp", "test config"}, "test");
  const torch::Tensor weight = task.model->weight.clone();
  RAG_ASSERT_OK(loop.Run());
  EXPECT_TRUE(torch::equal(task.model->bias, bias));
  EXPECT_FALSE(torch::equal(task.model->weight, weight));
}

TEST(TrainingLoopTest, EvaluatesAndReportsProgressOnSchedule) {
  testing::TempDir dir;
  Regression task(5);
  TrainingLoopOptions o = Options(6);
  o.eval_every = 2;
  o.checkpoint_every = 4;
  o.show_progress = true;
  auto loop = MakeLoop(o, &task, dir / "p.pt");
  RAG_ASSERT_OK(loop->Run());
  EXPECT_EQ(task.evaluations, 3);
  ASSERT_EQ(task.reports.size(), 6u);
  EXPECT_EQ(task.last_evaluation_size, (std::vector<size_t>{0, 1, 1, 1, 1, 1}));
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_EQ(task.reports[i].step, static_cast<int64_t>(i + 1));
    EXPECT_EQ(task.reports[i].steps_this_run, static_cast<int64_t>(i + 1));
    EXPECT_EQ(task.reports[i].loss, loop->history()[i].loss);
    EXPECT_EQ(task.reports[i].lr, loop->history()[i].lr);
  }
  EXPECT_TRUE(fs::exists(dir / "p.pt"));
}

}  // namespace
}  // namespace rag::lm

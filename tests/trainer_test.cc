#include "lm/trainer.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "lm/data_split.h"
#include "lm/language_model.h"
#include "lm/train_pipeline.h"
#include "tests/status_matchers.h"
#include "tests/test_util.h"

namespace rag::lm {
namespace {

namespace fs = std::filesystem;

struct Fixture {
  Tokenizer tokenizer;
  TrainingData data;
  TransformerConfig config;
};

Fixture MakeFixture() {
  auto docs = testing::MakeCorpus(24, 3);
  DataSplit split = SplitDocuments(docs, 0.2, 1);
  std::vector<std::string> texts;
  for (const auto& d : split.train) texts.push_back(d.text);
  TokenizerTrainOptions topts;
  topts.vocab_size = 320;
  auto tok = Tokenizer::Train(texts, topts);
  EXPECT_TRUE(tok.ok());
  Fixture f{std::move(*tok), {}, *TransformerConfig::Preset("tiny")};
  for (const auto& d : split.train) {
    for (auto id : f.tokenizer.Encode(d.text)) f.data.train.push_back(id);
    f.data.train.push_back(f.tokenizer.eot_id());
  }
  for (const auto& d : split.validation) {
    for (auto id : f.tokenizer.Encode(d.text)) f.data.validation.push_back(id);
    f.data.validation.push_back(f.tokenizer.eot_id());
  }
  f.config.vocab_size = f.tokenizer.vocab_size();
  f.config.context = 32;
  return f;
}

TrainerOptions FastOptions(int64_t steps) {
  TrainerOptions o;
  o.steps = steps;
  o.batch_size = 8;
  o.lr = 3e-3;
  o.warmup_steps = 5;
  o.checkpoint_every = 0;
  o.eval_every = 0;
  o.show_progress = false;
  return o;
}

TEST(TrainerTest, TinyRunLowersValidationLoss) {
  Fixture f = MakeFixture();
  testing::TempDir dir;
  auto trainer = Trainer::Create(f.config, FastOptions(120), f.data, dir / "ckpt.pt", false);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  const double before = (*trainer)->ValidationLoss();
  RAG_ASSERT_OK((*trainer)->Run());
  const double after = (*trainer)->ValidationLoss();
  EXPECT_LT(after, before - 1.0) << "before " << before << " after " << after;
  EXPECT_LT(after, std::log(static_cast<double>(f.config.vocab_size)) - 1.0);
}

TEST(TrainerTest, DeterministicForASeed) {
  Fixture f = MakeFixture();
  testing::TempDir dir;
  auto a = Trainer::Create(f.config, FastOptions(10), f.data, dir / "a.pt", false);
  auto b = Trainer::Create(f.config, FastOptions(10), f.data, dir / "b.pt", false);
  ASSERT_TRUE(a.ok() && b.ok());
  RAG_ASSERT_OK((*a)->Run());
  RAG_ASSERT_OK((*b)->Run());
  for (size_t i = 0; i < 10; ++i) EXPECT_EQ((*a)->history()[i].loss, (*b)->history()[i].loss);
}

TEST(TrainerTest, ResumeGivesTheSameLossCurveAsAnUninterruptedRun) {
  Fixture f = MakeFixture();
  testing::TempDir dir;
  auto full = Trainer::Create(f.config, FastOptions(30), f.data, dir / "full.pt", false);
  ASSERT_TRUE(full.ok());
  RAG_ASSERT_OK((*full)->Run());

  // Interrupt after 12 steps, as SIGINT would.
  auto first = Trainer::Create(f.config, FastOptions(30), f.data, dir / "part.pt", false);
  ASSERT_TRUE(first.ok());
  for (int i = 0; i < 12; ++i) (*first)->Step();
  std::atomic<bool> stop{true};
  EXPECT_EQ((*first)->Run(&stop).code(), absl::StatusCode::kCancelled);

  auto resumed = Trainer::Create(f.config, FastOptions(30), f.data, dir / "part.pt", true);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ((*resumed)->step(), 12);
  RAG_ASSERT_OK((*resumed)->Run());
  ASSERT_EQ((*resumed)->history().size(), 30u);
  for (size_t i = 0; i < 30; ++i) {
    EXPECT_EQ((*resumed)->history()[i].loss, (*full)->history()[i].loss) << "step " << i;
  }
  auto tokens = torch::randint(0, f.config.vocab_size, {1, 16}, torch::kLong);
  torch::NoGradGuard no_grad;
  (*full)->model()->eval();
  (*resumed)->model()->eval();
  EXPECT_TRUE(torch::equal((*full)->model()->forward(tokens), (*resumed)->model()->forward(tokens)));
}

TEST(TrainerTest, ResumeWithOtherSettingsOrCorruptCheckpointIsRefused) {
  Fixture f = MakeFixture();
  testing::TempDir dir;
  auto t = Trainer::Create(f.config, FastOptions(4), f.data, dir / "c.pt", false);
  ASSERT_TRUE(t.ok());
  RAG_ASSERT_OK((*t)->Run());
  TrainerOptions other = FastOptions(4);
  other.lr = 1e-2;
  EXPECT_EQ(Trainer::Create(f.config, other, f.data, dir / "c.pt", true).status().code(),
            absl::StatusCode::kFailedPrecondition);
  fs::resize_file(dir / "c.pt", fs::file_size(dir / "c.pt") / 2);
  EXPECT_EQ(Trainer::Create(f.config, FastOptions(4), f.data, dir / "c.pt", true).status().code(),
            absl::StatusCode::kDataLoss);
}

TEST(TrainerTest, TooLittleDataIsAnError) {
  Fixture f = MakeFixture();
  TrainingData small;
  small.train = {1, 2, 3};
  auto t = Trainer::Create(f.config, FastOptions(4), small, "/nonexistent/x.pt", false);
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(TrainerTest, LearningRateWarmsUpThenDecays) {
  Fixture f = MakeFixture();
  TrainerOptions o = FastOptions(100);
  o.warmup_steps = 10;
  auto t = Trainer::Create(f.config, o, f.data, "/tmp/unused.pt", false);
  ASSERT_TRUE(t.ok());
  EXPECT_LT((*t)->LearningRate(0), (*t)->LearningRate(9));
  EXPECT_NEAR((*t)->LearningRate(9), o.lr, 1e-12);
  EXPECT_GT((*t)->LearningRate(20), (*t)->LearningRate(80));
  EXPECT_NEAR((*t)->LearningRate(99), o.lr * o.min_lr_ratio, o.lr * 0.01);
}

TEST(TrainPipelineTest, WritesAModelDirectoryThatOpens) {
  testing::TempDir dir;
  TrainJob job;
  job.out_dir = dir / "model";
  job.preset = "tiny";
  job.vocab_size = 300;
  job.validation_fraction = 0.2;
  job.trainer = FastOptions(20);
  auto summary = TrainLanguageModel(testing::MakeCorpus(10, 5), job);
  ASSERT_TRUE(summary.ok()) << summary.status();
  EXPECT_EQ(summary->steps, 20);
  EXPECT_GE(summary->validation_documents, 1u);
  EXPECT_EQ(summary->validation_documents + summary->train_documents, 10u);
  auto model = LanguageModel::Open(job.out_dir);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->tokenizer().vocab_size(), 300);
  // A second run into the same directory must not clobber it by accident.
  EXPECT_EQ(TrainLanguageModel(testing::MakeCorpus(10, 5), job).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(TrainLanguageModel({}, job).status().code(), absl::StatusCode::kInvalidArgument);
  job.preset = "enormous";
  job.overwrite = true;
  EXPECT_EQ(TrainLanguageModel(testing::MakeCorpus(10, 5), job).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace rag::lm

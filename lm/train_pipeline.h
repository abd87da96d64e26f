// `rag train --arch lm` as a library call: split the corpus by document,
// train (or reuse) the tokenizer, encode, train the model, and save a model
// directory. Resumable from the checkpoint in the model directory.
#pragma once

#include <atomic>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/document.h"
#include "lm/trainer.h"

namespace rag::lm {

struct TrainJob {
  std::string out_dir;
  std::string preset = "small";           // Default: "small"
  std::string config_overrides_json;      // JSON object applied over the preset; "" = none
  int vocab_size = 4096;                  // when a tokenizer is trained. Default: 4096
  double validation_fraction = 0.05;      // of documents. Default: 0.05
  TrainerOptions trainer;
  bool resume = false;                    // continue from out_dir/checkpoint.pt
  bool overwrite = false;                 // start over even if out_dir holds a checkpoint
};

struct TrainSummary {
  int64_t steps = 0;
  int64_t train_tokens = 0;
  int64_t validation_tokens = 0;
  size_t train_documents = 0;
  size_t validation_documents = 0;
  double final_loss = 0;         // mean training loss over the last 5% of steps
  double validation_loss = 0;    // nats/token on the trainer's validation windows
  double seconds = 0;
  StepTimes step_times;          // this process's steps (this run only)
  int64_t tokens_per_step = 0;   // global batch x sequence length
};

// Trainer defaults that suit each preset (steps, batch, learning rate).
absl::StatusOr<TrainerOptions> PresetTrainerOptions(const std::string& preset);

// Runs the job. Cancelled when `*stop` was raised (a checkpoint is saved);
// FailedPrecondition when out_dir already holds a run and neither resume
// nor overwrite is set. Data-parallel (job.trainer.dist), every rank runs
// the job with the same arguments and corpus; rank 0 alone writes out_dir,
// and a resume reads the checkpoint on every rank (out_dir on a filesystem
// every rank sees, or a copy of it).
absl::StatusOr<TrainSummary> TrainLanguageModel(std::vector<Document> documents, const TrainJob& job,
                                                const std::atomic<bool>* stop = nullptr);

}  // namespace rag::lm

// Trains a RetroLM on tokenised documents whose chunks come with
// precomputed neighbours: from scratch, or retrofitting a trained
// TransformerLM with its decoder frozen. Supplies windows, prompt windows and
// their losses to lm::TrainingLoop, which owns the schedule, AdamW,
// checkpoints and exact resume. Batches are a pure function of (seed, step),
// so a resumed run sees the same data as an uninterrupted one. Not
// thread-safe.
//
// Tensor legend as lm/retro_lm.h: B batch, T tokens (= decoder.context),
// m chunk size, C input chunks (T / m), K neighbours, R neighbour tokens,
// V vocabulary.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "lm/retro_lm.h"
#include "lm/tokenizer.h"
#include "lm/training_loop.h"
#include "lm/transformer_lm.h"

namespace rag::lm {

// Documents tokenised; chunk j of document d is tokens[d][j*m, (j+1)*m) (the
// last may be shorter). neighbours[d] holds, for every chunk j of document
// d, the K*R token ids of the K neighbours retrieved WITH that chunk
// ([chunks, K, R] flattened), present[d] their presence flags ([chunks, K],
// 0 = missing neighbour).
struct RetroDocuments {
  std::vector<std::vector<TokenId>> tokens;
  std::vector<std::vector<int32_t>> neighbours;
  std::vector<std::vector<uint8_t>> present;
};

// Prompt windows teach the CCA to read a neighbour set retrieved with a
// prompt, as `rag eval probes --mode retro` and prompted generation use it:
// window i is tokens[i] = a prompt of prompt_tokens[i] tokens (1..m) then
// its continuation (up to m tokens), laid out with end-of-text padding in
// front so the prompt ends input chunk 0 and the continuation fills input
// chunk 1, which attends the set retrieved with the prompt alone
// (neighbours[i]: [K, R] flattened, present[i]: [K]). Only the
// continuation's tokens are targets: the rest cannot depend on the set.
struct RetroPromptWindows {
  std::vector<std::vector<TokenId>> tokens;
  std::vector<int64_t> prompt_tokens;
  std::vector<std::vector<int32_t>> neighbours;
  std::vector<std::vector<uint8_t>> present;

  size_t size() const { return tokens.size(); }
};

struct RetroTrainingData {
  RetroDocuments train;
  RetroDocuments validation;
  RetroPromptWindows train_prompts;       // drawn from when options.prompt_windows > 0
  RetroPromptWindows validation_prompts;  // scored by PromptValidationLoss
};

// (document index, start chunk c): the window starting at token c*m.
using RetroWindow = std::pair<size_t, int64_t>;

// The tensors of B windows of T tokens.
struct RetroBatch {
  torch::Tensor tokens;      // [B, T] int64 inputs
  torch::Tensor targets;     // [B, T] int64, -1 beyond the document (ignored by the loss)
  torch::Tensor neighbours;  // [B, C, K, R] int64, entry v the set attended by input chunk v
  torch::Tensor mask;        // [B, C, K] bool, false = missing neighbour
};

// Chunks of a document of `tokens` tokens: ceil(tokens / m).
int64_t RetroChunkCount(size_t tokens, int64_t chunk_size);

// Builds the windows `starts` in RetroLM's sequence convention, T =
// config.decoder.context: input = [prev, t_{cm}, ..., t_{cm+T-2}] with prev
// = `eot` when c == 0 else t_{cm-1}; targets = t_{cm} .. t_{cm+T-1}. Beyond
// the document's end inputs are `eot` and targets -1. Input chunk v >= 1
// attends the set retrieved with document chunk c+v-1 (the chunk whose last
// token sits at input position v*m); input chunk 0's set, sets beyond the
// document and sets the document has no entries for (its neighbours or
// present vectors are shorter, e.g. empty) are missing: mask false, tokens 0.
// Throws c10::Error when a start names no document or no chunk of it.
RetroBatch MakeRetroWindows(const RetroDocuments& docs, const std::vector<RetroWindow>& starts,
                            const RetroConfig& config, TokenId eot);

// The prompt windows `which` as a batch of T = 2m tokens (C = 2): input =
// [eot, pad..., prompt, continuation] (pads are eot), targets -1 except the
// continuation's; set 1 = the window's set, set 0 masked. Throws c10::Error
// when an index names no window.
RetroBatch MakeRetroPromptWindows(const RetroPromptWindows& windows, const std::vector<size_t>& which,
                                  const RetroConfig& config, TokenId eot);

// OK when every window has 1..m prompt tokens, at most m more, K*R
// neighbour tokens and K flags, ids in [0, V); else InvalidArgument.
absl::Status ValidateRetroPromptWindows(const RetroPromptWindows& windows, const RetroConfig& config,
                                        const std::string& what);

// OK when every document has exactly chunks*K*R neighbour tokens and
// chunks*K flags and every token id is in [0, V); else InvalidArgument
// naming `what` ("train", "validation"), the document and the mismatch.
absl::Status ValidateRetroDocuments(const RetroDocuments& docs, const RetroConfig& config, const std::string& what);

// The loop's options (lm/training_loop.h) plus RETRO's own. No seq_len: a
// window is always the decoder's context, starting at a chunk boundary.
struct RetroTrainerOptions : TrainingLoopOptions {
  // Retrofitting: the decoder (loaded from the trained LM) stays fixed and
  // only the encoder and CCA layers train. Needs an LM to start from. Default: true
  bool freeze_decoder = true;
  // Prompt windows (RetroPromptWindows) added to each step's batch; their
  // mean loss is added to the windows' mean loss. 0 = none. Default: 0
  int64_t prompt_windows = 0;
};

class RetroTrainer : private TrainingTask {
 public:
  // Builds a model from `config` (seeded by options.seed); when `init` is
  // given its weights are copied into the decoder (retrofitting), and with
  // options.freeze_decoder only RetrievalParameters() train. When `resume`
  // is set, restores the state saved at `checkpoint_path`. `eot` is the
  // end-of-text id that pads windows.
  // InvalidArgument for bad options, freeze_decoder without `init`, an
  // `init` whose architecture differs from config.decoder, documents whose
  // neighbours/present sizes do not match their chunk counts x K (x R), and
  // when no training document has a token; DataLoss for an unreadable
  // checkpoint, FailedPrecondition when the checkpoint was written for
  // another config, other options or other data.
  static absl::StatusOr<std::unique_ptr<RetroTrainer>> Create(const RetroConfig& config,
                                                              const RetroTrainerOptions& options,
                                                              RetroTrainingData data, TokenId eot,
                                                              std::string checkpoint_path, bool resume,
                                                              TransformerLM* init);

  // One optimizer step on the batch of the current step. Returns its loss
  // (mean cross-entropy over the targets inside the documents).
  double Step();

  // Runs until options.steps with a progress line on stderr, validating and
  // saving checkpoints on schedule. When `*stop` becomes true (SIGINT),
  // saves a checkpoint and returns Cancelled.
  absl::Status Run(const std::atomic<bool>* stop = nullptr);

  // Mean cross-entropy (nats/token) over validation_windows(); with
  // `retrieval` false the model runs without neighbours (its decoder's
  // function). NaN when there is no validation window.
  double ValidationLoss(bool retrieval = true);
  // The same over data.validation_prompts' continuations: whether the
  // model reads a prompt's neighbours. NaN when there are none.
  double PromptValidationLoss(bool retrieval = true);

  absl::Status SaveCheckpoint();

  // The (document, start chunk) pairs of `step`: uniform over all chunk
  // starts of all training documents, drawn from (seed, step) alone.
  std::vector<RetroWindow> WindowsForStep(int64_t step) const;
  // MakeRetroWindows(train, WindowsForStep(step)).
  RetroBatch BatchForStep(int64_t step) const;
  // The prompt windows of `step` (options.prompt_windows of them, uniform,
  // from (seed, step) alone); empty when off or there are none.
  std::vector<size_t> PromptWindowsForStep(int64_t step) const;
  // Fixed validation windows: the chunk-aligned windows with stride T of
  // every validation document, evenly thinned to eval_batches * batch_size.
  const std::vector<RetroWindow>& validation_windows() const { return validation_windows_; }

  RetroLM& model() { return model_; }
  int64_t step() const { return loop_->step(); }
  const std::vector<TrainingRecord>& history() const { return loop_->history(); }
  double LearningRate(int64_t step) const { return loop_->LearningRate(step); }

 private:
  RetroTrainer(const RetroConfig& config, const RetroTrainerOptions& options, RetroTrainingData data, TokenId eot);
  // Mean cross-entropy over the targets of n items, batched by `make`
  // (items [first, last)); NaN for none. Runs in eval mode, no gradients.
  double MeanLoss(size_t n, size_t batch_size, const std::function<RetroBatch(size_t first, size_t last)>& make,
                  bool retrieval);
  std::string Fingerprint() const;  // config + options that must match on resume + data hash

  // TrainingTask: the windows' loss (plus the prompt windows'); the
  // validation and prompt losses with and without retrieval; "loss, val
  // (w/o retrieval), prompts, lr".
  torch::Tensor StepLoss(int64_t step) override;
  std::vector<double> Evaluate() override;
  std::string ProgressLine(const StepReport& report) override;

  RetroConfig config_;
  RetroTrainerOptions options_;
  RetroTrainingData data_;
  TokenId eot_;
  std::vector<int64_t> chunk_offsets_;  // [documents + 1]: first global chunk index of each train document
  std::vector<RetroWindow> validation_windows_;
  RetroLM model_{nullptr};
  std::unique_ptr<TrainingLoop> loop_;
};

}  // namespace rag::lm

#include "lm/retro_trainer.h"

#include <xxhash.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <mutex>
#include <numeric>
#include <random>
#include <sstream>

#include "common/progress.h"
#include "common/status.h"

namespace rag::lm {

namespace F = torch::nn::functional;

namespace {

// Targets beyond a document's end.
constexpr int64_t kIgnore = -1;

// Chains the hash of one vector (its length included, so documents cannot
// shift between each other) into `seed`.
template <typename T>
uint64_t HashVector(const std::vector<T>& v, uint64_t seed) {
  const uint64_t size = v.size();
  seed = XXH3_64bits_withSeed(&size, sizeof(size), seed);
  return XXH3_64bits_withSeed(v.data(), v.size() * sizeof(T), seed);
}

uint64_t HashDocuments(const RetroDocuments& docs) {
  uint64_t h = docs.tokens.size();
  for (size_t d = 0; d < docs.tokens.size(); ++d) {
    h = HashVector(docs.tokens[d], h);
    h = HashVector(docs.neighbours[d], h);
    h = HashVector(docs.present[d], h);
  }
  return h;
}

uint64_t HashPrompts(const RetroPromptWindows& w) {
  uint64_t h = HashVector(w.prompt_tokens, w.size());
  for (size_t i = 0; i < w.size(); ++i) {
    h = HashVector(w.tokens[i], h);
    h = HashVector(w.neighbours[i], h);
    h = HashVector(w.present[i], h);
  }
  return h;
}

// Mean cross-entropy over the targets >= 0 of `batch` (summed with `sum`).
torch::Tensor BatchLoss(RetroLM& model, const RetroBatch& batch, bool retrieval, bool sum = false) {
  auto logits = retrieval ? model->forward(batch.tokens, batch.neighbours, batch.mask)  // [B, T, V]
                          : model->forward(batch.tokens, torch::Tensor(), torch::Tensor());
  auto options = F::CrossEntropyFuncOptions().ignore_index(kIgnore);
  if (sum) {
    options.reduction(torch::kSum);
  } else {
    options.reduction(torch::kMean);
  }
  return F::cross_entropy(logits.view({-1, logits.size(-1)}), batch.targets.view({-1}), options);
}

// Rows [first, first + count) of `batch`.
RetroBatch BatchRows(const RetroBatch& batch, int64_t first, int64_t count) {
  return {batch.tokens.narrow(0, first, count), batch.targets.narrow(0, first, count),
          batch.neighbours.narrow(0, first, count), batch.mask.narrow(0, first, count)};
}

// This rank's share of the mean loss over the targets of the global
// `batch`: its rows' token sum over the global target count, so that the
// ranks' shares (and their gradients) sum to the single-process mean even
// though windows that run past a document's end hold fewer targets.
torch::Tensor ShareOfMeanLoss(RetroLM& model, const RetroBatch& batch, const BatchShare& share) {
  const int64_t targets = batch.targets.ge(0).sum().item<int64_t>();
  auto sum = BatchLoss(model, BatchRows(batch, share.first, share.count), true, /*sum=*/true);
  return sum / static_cast<double>(std::max<int64_t>(1, targets));
}

}  // namespace

int64_t RetroChunkCount(size_t tokens, int64_t chunk_size) {
  return (static_cast<int64_t>(tokens) + chunk_size - 1) / chunk_size;
}

RetroBatch MakeRetroWindows(const RetroDocuments& docs, const std::vector<RetroWindow>& starts,
                            const RetroConfig& config, TokenId eot) {
  const int64_t t = config.decoder.context, m = config.chunk_size;
  const int64_t nk = config.neighbours, nr = config.neighbour_tokens;
  const int64_t c_max = t / m, b = static_cast<int64_t>(starts.size());
  RetroBatch batch;
  batch.tokens = torch::full({b, t}, static_cast<int64_t>(eot), torch::kLong);  // [B, T]
  batch.targets = torch::full({b, t}, kIgnore, torch::kLong);                   // [B, T]
  batch.neighbours = torch::zeros({b, c_max, nk, nr}, torch::kLong);            // [B, C, K, R]
  batch.mask = torch::zeros({b, c_max, nk}, torch::kBool);                      // [B, C, K]
  auto tokens = batch.tokens.accessor<int64_t, 2>();
  auto targets = batch.targets.accessor<int64_t, 2>();
  auto neighbours = batch.neighbours.accessor<int64_t, 4>();
  auto mask = batch.mask.accessor<bool, 3>();
  for (int64_t i = 0; i < b; ++i) {
    const auto [d, c] = starts[static_cast<size_t>(i)];
    TORCH_CHECK(d < docs.tokens.size(), "MakeRetroWindows: document ", d, " of ", docs.tokens.size());
    const std::vector<TokenId>& doc = docs.tokens[d];
    const int64_t n = static_cast<int64_t>(doc.size()), chunks = RetroChunkCount(doc.size(), m);
    TORCH_CHECK(c >= 0 && c < chunks, "MakeRetroWindows: document ", d, " has ", chunks, " chunks, start chunk ", c);
    const int64_t first = c * m;
    if (c > 0) tokens[i][0] = doc[static_cast<size_t>(first - 1)];
    for (int64_t p = 0; p < t && first + p < n; ++p) {
      const TokenId id = doc[static_cast<size_t>(first + p)];
      targets[i][p] = id;
      if (p + 1 < t) tokens[i][p + 1] = id;
    }
    if (d >= docs.neighbours.size() || d >= docs.present.size()) continue;
    const std::vector<int32_t>& sets = docs.neighbours[d];
    const std::vector<uint8_t>& present = docs.present[d];
    // Input chunk v attends the set retrieved with document chunk c + v - 1,
    // whose last token is the input at position v*m. Chunk 0's retrieving
    // chunk lies before the window, so it stays masked as in RETRO.
    for (int64_t v = 1; v < c_max; ++v) {
      const int64_t j = c + v - 1;
      if (j >= chunks || static_cast<int64_t>(sets.size()) < (j + 1) * nk * nr ||
          static_cast<int64_t>(present.size()) < (j + 1) * nk) {
        continue;
      }
      for (int64_t k = 0; k < nk; ++k) {
        if (present[static_cast<size_t>(j * nk + k)] == 0) continue;
        mask[i][v][k] = true;
        const int32_t* from = sets.data() + (j * nk + k) * nr;
        for (int64_t r = 0; r < nr; ++r) neighbours[i][v][k][r] = from[r];
      }
    }
  }
  return batch;
}

RetroBatch MakeRetroPromptWindows(const RetroPromptWindows& windows, const std::vector<size_t>& which,
                                  const RetroConfig& config, TokenId eot) {
  const int64_t m = config.chunk_size, t = 2 * m, nk = config.neighbours, nr = config.neighbour_tokens;
  const int64_t b = static_cast<int64_t>(which.size());
  RetroBatch batch;
  batch.tokens = torch::full({b, t}, static_cast<int64_t>(eot), torch::kLong);  // [B, 2m]
  batch.targets = torch::full({b, t}, kIgnore, torch::kLong);                   // [B, 2m]
  batch.neighbours = torch::zeros({b, 2, nk, nr}, torch::kLong);                // [B, 2, K, R]
  batch.mask = torch::zeros({b, 2, nk}, torch::kBool);                          // [B, 2, K]
  auto tokens = batch.tokens.accessor<int64_t, 2>();
  auto targets = batch.targets.accessor<int64_t, 2>();
  auto neighbours = batch.neighbours.accessor<int64_t, 4>();
  auto mask = batch.mask.accessor<bool, 3>();
  for (int64_t i = 0; i < b; ++i) {
    const size_t w = which[static_cast<size_t>(i)];
    TORCH_CHECK(w < windows.size(), "MakeRetroPromptWindows: window ", w, " of ", windows.size());
    const std::vector<TokenId>& seq = windows.tokens[w];
    const int64_t p = windows.prompt_tokens[w], pad = m - p;
    // laid_out[q] = seq[q - pad] for q >= pad; input position q + 1 holds
    // laid_out[q], target position q predicts it.
    for (int64_t q = pad; q < t && q - pad < static_cast<int64_t>(seq.size()); ++q) {
      const TokenId id = seq[static_cast<size_t>(q - pad)];
      if (q >= m) targets[i][q] = id;
      if (q + 1 < t) tokens[i][q + 1] = id;
    }
    for (int64_t k = 0; k < nk; ++k) {
      if (windows.present[w][static_cast<size_t>(k)] == 0) continue;
      mask[i][1][k] = true;
      for (int64_t r = 0; r < nr; ++r) neighbours[i][1][k][r] = windows.neighbours[w][static_cast<size_t>(k * nr + r)];
    }
  }
  return batch;
}

absl::Status ValidateRetroPromptWindows(const RetroPromptWindows& windows, const RetroConfig& config,
                                        const std::string& what) {
  const int64_t m = config.chunk_size, nk = config.neighbours, nr = config.neighbour_tokens;
  const int64_t vocab = config.decoder.vocab_size;
  const size_t n = windows.size();
  if (windows.prompt_tokens.size() != n || windows.neighbours.size() != n || windows.present.size() != n) {
    return absl::InvalidArgumentError(what + " prompt windows: " + std::to_string(n) + " token lists but " +
                                      std::to_string(windows.prompt_tokens.size()) + " prompt lengths, " +
                                      std::to_string(windows.neighbours.size()) + " neighbour and " +
                                      std::to_string(windows.present.size()) + " presence lists");
  }
  auto valid = [&](int64_t id) { return id >= 0 && id < vocab; };
  for (size_t i = 0; i < n; ++i) {
    const std::string where = what + " prompt window " + std::to_string(i);
    const int64_t p = windows.prompt_tokens[i], len = static_cast<int64_t>(windows.tokens[i].size());
    if (p < 1 || p > m || p >= len || len > p + m) {
      return absl::InvalidArgumentError(where + ": " + std::to_string(len) + " tokens with a prompt of " +
                                        std::to_string(p) + "; expected a prompt of 1.." + std::to_string(m) +
                                        " tokens followed by 1.." + std::to_string(m) + " more");
    }
    if (static_cast<int64_t>(windows.neighbours[i].size()) != nk * nr ||
        static_cast<int64_t>(windows.present[i].size()) != nk) {
      return absl::InvalidArgumentError(where + ": expected K*R = " + std::to_string(nk * nr) +
                                        " neighbour tokens and K = " + std::to_string(nk) + " flags, got " +
                                        std::to_string(windows.neighbours[i].size()) + " and " +
                                        std::to_string(windows.present[i].size()));
    }
    for (TokenId id : windows.tokens[i]) {
      if (!valid(id)) return absl::InvalidArgumentError(where + ": token id " + std::to_string(id) + " outside the vocabulary");
    }
    for (int64_t k = 0; k < nk; ++k) {
      if (windows.present[i][static_cast<size_t>(k)] == 0) continue;
      for (int64_t r = 0; r < nr; ++r) {
        const int32_t id = windows.neighbours[i][static_cast<size_t>(k * nr + r)];
        if (!valid(id)) {
          return absl::InvalidArgumentError(where + ": neighbour token id " + std::to_string(id) +
                                            " outside the vocabulary");
        }
      }
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateRetroDocuments(const RetroDocuments& docs, const RetroConfig& config, const std::string& what) {
  const int64_t m = config.chunk_size, nk = config.neighbours, nr = config.neighbour_tokens;
  const int64_t vocab = config.decoder.vocab_size;
  if (docs.neighbours.size() != docs.tokens.size() || docs.present.size() != docs.tokens.size()) {
    return absl::InvalidArgumentError(what + " data: " + std::to_string(docs.tokens.size()) + " documents but " +
                                      std::to_string(docs.neighbours.size()) + " neighbour and " +
                                      std::to_string(docs.present.size()) + " presence lists");
  }
  for (size_t d = 0; d < docs.tokens.size(); ++d) {
    const std::string where = what + " document " + std::to_string(d);
    const int64_t chunks = RetroChunkCount(docs.tokens[d].size(), m);
    const auto& sets = docs.neighbours[d];
    const auto& present = docs.present[d];
    if (static_cast<int64_t>(sets.size()) != chunks * nk * nr) {
      return absl::InvalidArgumentError(where + ": expected " + std::to_string(chunks) +
                                        " chunks x K=" + std::to_string(nk) + " x R=" + std::to_string(nr) + " = " +
                                        std::to_string(chunks * nk * nr) + " neighbour tokens, got " +
                                        std::to_string(sets.size()));
    }
    if (static_cast<int64_t>(present.size()) != chunks * nk) {
      return absl::InvalidArgumentError(where + ": expected " + std::to_string(chunks) +
                                        " chunks x K=" + std::to_string(nk) + " = " + std::to_string(chunks * nk) +
                                        " presence flags, got " + std::to_string(present.size()));
    }
    for (TokenId id : docs.tokens[d]) {
      if (id < 0 || id >= vocab) {
        return absl::InvalidArgumentError(where + ": token id " + std::to_string(id) + " outside the vocabulary");
      }
    }
    // Missing neighbours are never embedded, so only present ones must be valid ids.
    for (int64_t s = 0; s < chunks * nk; ++s) {
      if (present[static_cast<size_t>(s)] == 0) continue;
      for (int64_t r = 0; r < nr; ++r) {
        const int32_t id = sets[static_cast<size_t>(s * nr + r)];
        if (id < 0 || id >= vocab) {
          return absl::InvalidArgumentError(where + ": neighbour token id " + std::to_string(id) +
                                            " outside the vocabulary");
        }
      }
    }
  }
  return absl::OkStatus();
}

RetroTrainer::RetroTrainer(const RetroConfig& config, const RetroTrainerOptions& options, RetroTrainingData data,
                           TokenId eot)
    : config_(config), options_(options), data_(std::move(data)), eot_(eot) {}

absl::StatusOr<std::unique_ptr<RetroTrainer>> RetroTrainer::Create(const RetroConfig& config,
                                                                   const RetroTrainerOptions& options,
                                                                   RetroTrainingData data, TokenId eot,
                                                                   std::string checkpoint_path, bool resume,
                                                                   TransformerLM* init) {
  if (init != nullptr && (*init)->scripted()) {
    return absl::InvalidArgumentError(
        "RETRO cannot start from a TorchScript language model: its decoder copies the LM's own layers, which a "
        "TorchScript module does not expose");
  }
  RAG_RETURN_IF_ERROR(config.Validate());
  RAG_RETURN_IF_ERROR(ValidateTrainingLoopOptions(options));
  if (options.freeze_decoder && init == nullptr) {
    return absl::InvalidArgumentError(
        "freeze_decoder: retrofitting needs a trained LM to start from (no init model given)");
  }
  if (eot < 0 || eot >= config.decoder.vocab_size) {
    return absl::InvalidArgumentError("end-of-text id " + std::to_string(eot) + " outside the vocabulary");
  }
  RAG_RETURN_IF_ERROR(ValidateRetroDocuments(data.train, config, "train"));
  RAG_RETURN_IF_ERROR(ValidateRetroDocuments(data.validation, config, "validation"));
  RAG_RETURN_IF_ERROR(ValidateRetroPromptWindows(data.train_prompts, config, "train"));
  RAG_RETURN_IF_ERROR(ValidateRetroPromptWindows(data.validation_prompts, config, "validation"));
  if (options.prompt_windows < 0) return absl::InvalidArgumentError("prompt_windows must be >= 0");
  if (options.prompt_windows > 0 && data.train_prompts.size() == 0) {
    return absl::InvalidArgumentError("prompt_windows is " + std::to_string(options.prompt_windows) +
                                      " but there is no training prompt window");
  }
  std::unique_ptr<RetroTrainer> t(new RetroTrainer(config, options, std::move(data), eot));

  const int64_t m = config.chunk_size, stride = config.decoder.context / m;
  t->chunk_offsets_.push_back(0);
  for (const auto& doc : t->data_.train.tokens) {
    t->chunk_offsets_.push_back(t->chunk_offsets_.back() + RetroChunkCount(doc.size(), m));
  }
  if (t->chunk_offsets_.back() == 0) {
    return absl::InvalidArgumentError("no training window: the " + std::to_string(t->data_.train.tokens.size()) +
                                      " training documents hold no token");
  }
  std::vector<RetroWindow> all;
  for (size_t d = 0; d < t->data_.validation.tokens.size(); ++d) {
    const int64_t chunks = RetroChunkCount(t->data_.validation.tokens[d].size(), m);
    for (int64_t c = 0; c < chunks; c += stride) all.emplace_back(d, c);
  }
  const size_t cap = static_cast<size_t>(std::max<int64_t>(1, options.eval_batches * options.batch_size));
  if (all.size() <= cap) {
    t->validation_windows_ = std::move(all);
  } else {
    for (size_t i = 0; i < cap; ++i) t->validation_windows_.push_back(all[i * all.size() / cap]);
  }

  if (options.dist != nullptr && options.prompt_windows % options.dist->world_size() != 0) {
    return absl::InvalidArgumentError("--dist: the " + std::to_string(options.prompt_windows) +
                                      " prompt windows per step are not divisible by the " +
                                      std::to_string(options.dist->world_size()) +
                                      " ranks; choose --prompt-windows as a multiple of WORLD_SIZE");
  }
  try {
    // Ranks run as threads of one process (tests) share the CPU generator:
    // seeding and drawing the initial weights is one critical section.
    static std::mutex init_mutex;
    std::lock_guard<std::mutex> lock(init_mutex);
    torch::manual_seed(options.seed);
    t->model_ = RetroLM(config);
    if (init != nullptr) t->model_->LoadDecoderFrom(*init);
  } catch (const c10::Error& e) {
    return absl::InvalidArgumentError(std::string("init: the language model does not fit the RETRO decoder: ") +
                                      e.what_without_backtrace());
  }
  t->model_->train();
  std::vector<torch::Tensor> trained;  // the parameters the optimizer updates
  if (options.freeze_decoder) {
    for (auto& p : t->model_->decoder->parameters()) p.set_requires_grad(false);
    trained = t->model_->RetrievalParameters();
  } else {
    trained = t->model_->parameters();
  }
  TrainingTask* task = t.get();  // a private base: converted here, where it is accessible
  t->loop_ = std::make_unique<TrainingLoop>(options, task, t->model_.ptr(), std::move(trained),
                                            CheckpointSpec{std::move(checkpoint_path), t->Fingerprint(),
                                                           "RETRO config"},
                                            "retro train");
  if (resume) RAG_RETURN_IF_ERROR(t->loop_->Resume());
  std::ostringstream model;
  model << config.ToJson() << "|freeze=" << options.freeze_decoder << "|eot=" << eot
        << "|prompt_windows=" << options.prompt_windows;
  RAG_RETURN_IF_ERROR(t->loop_->JoinGroup(
      {{"RETRO config", model.str()},
       {"corpus", std::to_string(t->data_.train.tokens.size()) + " training documents with neighbours, hash " +
                      std::to_string(HashDocuments(t->data_.train))},
       {"prompt windows", std::to_string(t->data_.train_prompts.size()) + " training prompt windows, hash " +
                              std::to_string(HashPrompts(t->data_.train_prompts))},
       {"validation data", std::to_string(t->data_.validation.tokens.size()) + " documents, hash " +
                               std::to_string(HashDocuments(t->data_.validation))}}));
  return t;
}

std::vector<RetroWindow> RetroTrainer::WindowsForStep(int64_t step) const {
  // Drawn from an RNG seeded by (seed, step) alone: resuming at step s
  // replays exactly the batches an uninterrupted run would see. Uniform over
  // global chunk indices, so documents are sampled in proportion to length.
  std::mt19937_64 rng(options_.seed * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(step));
  std::uniform_int_distribution<int64_t> pick(0, chunk_offsets_.back() - 1);
  std::vector<RetroWindow> windows;
  windows.reserve(static_cast<size_t>(options_.batch_size));
  for (int64_t i = 0; i < options_.batch_size; ++i) {
    const int64_t g = pick(rng);
    // The last document whose first chunk is <= g: never an empty one, as its successor starts after g.
    const auto it = std::upper_bound(chunk_offsets_.begin(), chunk_offsets_.end(), g) - 1;
    windows.emplace_back(static_cast<size_t>(it - chunk_offsets_.begin()), g - *it);
  }
  return windows;
}

RetroBatch RetroTrainer::BatchForStep(int64_t step) const {
  return MakeRetroWindows(data_.train, WindowsForStep(step), config_, eot_);
}

std::vector<size_t> RetroTrainer::PromptWindowsForStep(int64_t step) const {
  std::vector<size_t> which;
  const size_t n = data_.train_prompts.size();
  if (options_.prompt_windows == 0 || n == 0) return which;
  // Its own stream, so the ordinary windows are those of a run without prompts.
  std::mt19937_64 rng((options_.seed ^ 0x5851F42D4C957F2DULL) * 0x9E3779B97F4A7C15ULL + static_cast<uint64_t>(step));
  std::uniform_int_distribution<size_t> pick(0, n - 1);
  for (int64_t i = 0; i < options_.prompt_windows; ++i) which.push_back(pick(rng));
  return which;
}

torch::Tensor RetroTrainer::StepLoss(int64_t step) {
  RetroBatch batch = BatchForStep(step);
  const BatchShare share = ShareOfBatch(options_, options_.batch_size);
  if (share.world_size > 1) {
    // Data-parallel: this rank's rows of the same global batch (and of the
    // same prompt windows), each term scaled by its global target count.
    auto loss = ShareOfMeanLoss(model_, batch, share);
    if (const std::vector<size_t> prompts = PromptWindowsForStep(step); !prompts.empty()) {
      const BatchShare prompt_share = ShareOfBatch(options_, static_cast<int64_t>(prompts.size()));
      loss = loss + ShareOfMeanLoss(model_, MakeRetroPromptWindows(data_.train_prompts, prompts, config_, eot_),
                                    prompt_share);
    }
    return loss;
  }
  // Mean over the targets inside the documents; every window has at least one.
  auto loss = BatchLoss(model_, batch, true);
  if (const std::vector<size_t> prompts = PromptWindowsForStep(step); !prompts.empty()) {
    loss = loss + BatchLoss(model_, MakeRetroPromptWindows(data_.train_prompts, prompts, config_, eot_), true);
  }
  return loss;
}

double RetroTrainer::Step() { return loop_->Step(); }

absl::Status RetroTrainer::Run(const std::atomic<bool>* stop) { return loop_->Run(stop); }

absl::Status RetroTrainer::SaveCheckpoint() { return loop_->SaveCheckpoint(); }

double RetroTrainer::MeanLoss(size_t n, size_t batch_size,
                              const std::function<RetroBatch(size_t first, size_t last)>& make, bool retrieval) {
  if (n == 0) return std::nan("");
  torch::NoGradGuard no_grad;
  model_->eval();
  double total = 0;
  int64_t count = 0;
  for (size_t first = 0; first < n; first += batch_size) {
    RetroBatch batch = make(first, std::min(n, first + batch_size));
    total += BatchLoss(model_, batch, retrieval, /*sum=*/true).item<double>();
    count += batch.targets.ge(0).sum().item<int64_t>();
  }
  model_->train();
  return total / static_cast<double>(count);
}

double RetroTrainer::ValidationLoss(bool retrieval) {
  const auto& all = validation_windows_;
  return MeanLoss(all.size(), static_cast<size_t>(options_.batch_size), [&](size_t first, size_t last) {
    return MakeRetroWindows(data_.validation, std::vector<RetroWindow>(all.begin() + first, all.begin() + last),
                            config_, eot_);
  }, retrieval);
}

double RetroTrainer::PromptValidationLoss(bool retrieval) {
  // Prompt windows are short (2m tokens): larger batches than the trainer's.
  const size_t batch_size = static_cast<size_t>(std::max<int64_t>(options_.batch_size, 16));
  return MeanLoss(data_.validation_prompts.size(), batch_size, [&](size_t first, size_t last) {
    std::vector<size_t> which(last - first);
    std::iota(which.begin(), which.end(), first);
    return MakeRetroPromptWindows(data_.validation_prompts, which, config_, eot_);
  }, retrieval);
}

std::string RetroTrainer::Fingerprint() const {
  std::ostringstream s;
  s << config_.ToJson() << ScheduleFingerprint(options_) << "|betas=" << options_.beta1 << "," << options_.beta2
    << "|clip=" << options_.grad_clip << "|freeze=" << options_.freeze_decoder << "|eot=" << eot_
    << "|data=" << HashDocuments(data_.train);
  // Only with prompts, so checkpoints of runs without them still resume.
  if (options_.prompt_windows > 0) {
    s << "|prompt_windows=" << options_.prompt_windows << "|prompts=" << HashPrompts(data_.train_prompts);
  }
  return s.str();
}

std::vector<double> RetroTrainer::Evaluate() {
  const double val = ValidationLoss(true);
  // What retrieval buys: the same model without neighbours.
  const double plain = ValidationLoss(false);
  const double prompt = PromptValidationLoss(true);
  const double prompt_plain = PromptValidationLoss(false);
  return {val, plain, prompt, prompt_plain};
}

std::string RetroTrainer::ProgressLine(const StepReport& report) {
  const std::vector<double>& e = *report.evaluation;
  const double nan = std::nan("");
  const double last_val = e.empty() ? nan : e[0], last_plain = e.empty() ? nan : e[1];
  const double last_prompt = e.empty() ? nan : e[2], last_prompt_plain = e.empty() ? nan : e[3];
  char extra[224];
  if (std::isnan(last_val) && std::isnan(last_prompt)) {  // no validation pass yet
    std::snprintf(extra, sizeof(extra), "loss %.3f, lr %.2e", report.loss, report.lr);
  } else if (std::isnan(last_prompt)) {
    std::snprintf(extra, sizeof(extra), "loss %.3f, val %.3f (%.3f without retrieval), lr %.2e", report.loss,
                  last_val, last_plain, report.lr);
  } else {
    std::snprintf(extra, sizeof(extra), "loss %.3f, val %.3f (%.3f w/o retrieval), prompts %.3f (%.3f), lr %.2e",
                  report.loss, last_val, last_plain, last_prompt, last_prompt_plain, report.lr);
  }
  return extra;
}

}  // namespace rag::lm

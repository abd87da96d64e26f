#include "lm/embedder.h"

#include <torch/script.h>
#include <torch/torch.h>

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <exception>
#include <filesystem>
#include <limits>
#include <mutex>
#include <numeric>
#include <utility>

#include "common/file_util.h"
#include "common/status.h"
#include "lm/internal/torch_error.h"
#include "lm/language_model.h"

namespace rag::lm {
namespace {

namespace F = torch::nn::functional;

// Sequences a foreign encoder sees per forward pass (all of one length).
constexpr int64_t kTorchScriptBatch = 32;

// Message of a LibTorch or TorchScript exception without the C++ backtrace.
// TorchScript's `raise` throws torch::jit::JITException, which is not a
// c10::Error, so callers catch std::exception.
// Lengths after truncation to `max_tokens`; InvalidArgument naming the first
// empty sequence.
absl::StatusOr<std::vector<int64_t>> TruncatedLengths(const std::vector<std::vector<TokenId>>& sequences,
                                                      int64_t max_tokens) {
  std::vector<int64_t> lengths(sequences.size());
  for (size_t i = 0; i < sequences.size(); ++i) {
    if (sequences[i].empty()) {
      return absl::InvalidArgumentError("sequence " + std::to_string(i) + " is empty; cannot embed it");
    }
    lengths[i] = std::min<int64_t>(static_cast<int64_t>(sequences[i].size()), max_tokens);
  }
  return lengths;
}

// Indices of the sequences, longest first (ties keep input order), so that
// consecutive runs need little or no padding.
std::vector<int64_t> OrderByLength(const std::vector<int64_t>& lengths) {
  std::vector<int64_t> order(lengths.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return lengths[a] > lengths[b]; });
  return order;
}

// Writes the rows of `vectors` [B, D] (already normalised) to rows
// order[first..first+B) of `out` [n, D].
void ScatterRows(const torch::Tensor& vectors, const std::vector<int64_t>& order, size_t first, std::vector<float>* out) {
  const torch::Tensor rows = vectors.to(torch::kFloat).contiguous();
  const int64_t b = rows.size(0);
  const int64_t d = rows.size(1);
  const float* src = rows.data_ptr<float>();
  for (int64_t r = 0; r < b; ++r) {
    std::copy(src + r * d, src + (r + 1) * d, out->data() + order[first + r] * d);
  }
}

class LmEmbedder final : public Embedder {
 public:
  LmEmbedder(LanguageModel* model, int64_t batch_size)
      : model_(model), batch_size_(std::max<int64_t>(1, batch_size)) {}

  int dim() const override { return static_cast<int>(model_->config().d_model); }
  int64_t max_tokens() const override { return model_->config().context; }
  std::string hash() const override { return model_->content_hash(); }
  std::string description() const override { return "lm-mean-pool(" + hash() + ")"; }

  absl::Status Embed(const std::vector<std::vector<TokenId>>& sequences, std::vector<float>* out) override {
    RAG_ASSIGN_OR_RETURN(std::vector<int64_t> lengths, TruncatedLengths(sequences, max_tokens()));
    // Checked here so a bad id is the caller's InvalidArgument with a
    // position, not an opaque index error from inside the embedding layer.
    const int64_t vocab = model_->config().vocab_size;
    for (size_t i = 0; i < sequences.size(); ++i) {
      for (int64_t j = 0; j < lengths[i]; ++j) {
        const TokenId t = sequences[i][j];
        if (t < 0 || t >= vocab) {
          return absl::InvalidArgumentError("sequence " + std::to_string(i) + ": token " + std::to_string(t) +
                                            " at position " + std::to_string(j) + " is outside the vocabulary [0, " +
                                            std::to_string(vocab) + ")");
        }
      }
    }
    TransformerLM& module = model_->module();
    // Switching to eval here would race with other threads using the module,
    // so a model that trains with dropout must be put in eval mode by its owner.
    if (module->is_training() && model_->config().dropout > 0) {
      return absl::FailedPreconditionError(
          "LM embedder: the model is in training mode with dropout, so embeddings would be random; "
          "call module()->eval() first");
    }

    const int64_t d = dim();
    out->assign(sequences.size() * static_cast<size_t>(d), 0.0f);
    if (sequences.empty()) return absl::OkStatus();
    const std::vector<int64_t> order = OrderByLength(lengths);
    try {
      torch::NoGradGuard no_grad;
      for (size_t first = 0; first < order.size(); first += static_cast<size_t>(batch_size_)) {
        const int64_t b = std::min<int64_t>(batch_size_, static_cast<int64_t>(order.size() - first));
        const int64_t t_max = lengths[order[first]];  // longest in this batch: sorted descending
        // Padding goes at the end: with causal attention no real position
        // attends to a later pad, so masking the mean is all it takes.
        auto tokens = torch::zeros({b, t_max}, torch::kLong);  // [B, T], pad id 0
        auto mask = torch::zeros({b, t_max}, torch::kFloat);   // [B, T], 1 for real tokens
        auto token_acc = tokens.accessor<int64_t, 2>();
        auto mask_acc = mask.accessor<float, 2>();
        std::vector<float> counts(static_cast<size_t>(b));
        for (int64_t r = 0; r < b; ++r) {
          const std::vector<TokenId>& seq = sequences[order[first + r]];
          const int64_t len = lengths[order[first + r]];
          for (int64_t j = 0; j < len; ++j) {
            token_acc[r][j] = seq[j];
            mask_acc[r][j] = 1.0f;
          }
          counts[r] = static_cast<float>(len);
        }
        auto hidden = module->ForwardHidden(tokens);                        // [B, T, D]
        auto summed = (hidden * mask.unsqueeze(-1)).sum(1);                 // [B, D]
        auto mean = summed / torch::tensor(counts, torch::kFloat).unsqueeze(1);  // [B, D]
        ScatterRows(F::normalize(mean, F::NormalizeFuncOptions().p(2).dim(1)), order, first, out);
      }
    } catch (const std::exception& e) {
      return absl::InternalError("embedding with the LM: " + internal::TorchErrorText(e));
    }
    return absl::OkStatus();
  }

 private:
  LanguageModel* model_;  // not owned
  int64_t batch_size_;
};

// Checks that a foreign encoder's output is [batch, D] floating point (and
// D == want_dim when want_dim > 0); returns it as float.
absl::StatusOr<torch::Tensor> CheckEncoderOutput(const c10::IValue& value, int64_t batch, int64_t want_dim) {
  if (!value.isTensor()) {
    return absl::InvalidArgumentError(std::string("forward returned ") + value.tagKind() +
                                      ", expected a Tensor [B, D]");
  }
  torch::Tensor t = value.toTensor();
  if (t.dim() != 2 || t.size(0) != batch || t.size(1) < 1 || (want_dim > 0 && t.size(1) != want_dim)) {
    std::string want = want_dim > 0 ? "[" + std::to_string(batch) + ", " + std::to_string(want_dim) + "]"
                                    : "[" + std::to_string(batch) + ", D] with D >= 1";
    std::string got = "[";
    for (int64_t i = 0; i < t.dim(); ++i) got += (i ? ", " : "") + std::to_string(t.size(i));
    return absl::InvalidArgumentError("forward output: expected " + want + ", got " + got + "]");
  }
  if (!t.is_floating_point()) {
    return absl::InvalidArgumentError(std::string("forward output: expected floating point, got ") +
                                      std::string(c10::toString(t.scalar_type())));
  }
  return t.to(torch::kFloat);
}

class TorchScriptEmbedder final : public Embedder {
 public:
  TorchScriptEmbedder(torch::jit::Module module, std::string path, std::string hash, int dim, int64_t max_tokens)
      : module_(std::move(module)),
        path_(std::move(path)),
        hash_(std::move(hash)),
        dim_(dim),
        max_tokens_(max_tokens) {}

  int dim() const override { return dim_; }
  int64_t max_tokens() const override { return max_tokens_; }
  std::string hash() const override { return hash_; }
  std::string description() const override { return "torchscript(" + path_ + ")"; }

  absl::Status Embed(const std::vector<std::vector<TokenId>>& sequences, std::vector<float>* out) override {
    RAG_ASSIGN_OR_RETURN(std::vector<int64_t> lengths, TruncatedLengths(sequences, max_tokens_));
    out->assign(sequences.size() * static_cast<size_t>(dim_), 0.0f);
    const std::vector<int64_t> order = OrderByLength(lengths);
    size_t first = 0;
    while (first < order.size()) {
      // The encoder takes no mask, so each call holds sequences of one length only.
      const int64_t len = lengths[order[first]];
      size_t end = first + 1;
      while (end < order.size() && lengths[order[end]] == len && end - first < static_cast<size_t>(kTorchScriptBatch)) {
        ++end;
      }
      const int64_t b = static_cast<int64_t>(end - first);
      try {
        torch::NoGradGuard no_grad;
        auto ids = torch::empty({b, len}, torch::kLong);  // [B, T]
        auto acc = ids.accessor<int64_t, 2>();
        for (int64_t r = 0; r < b; ++r) {
          const std::vector<TokenId>& seq = sequences[order[first + r]];
          for (int64_t j = 0; j < len; ++j) acc[r][j] = seq[j];
        }
        auto result = CheckEncoderOutput(module_.forward({ids}), b, dim_);  // [B, D]
        if (!result.ok()) return Annotate(result.status(), "torchscript encoder '" + path_ + "'");
        ScatterRows(F::normalize(*result, F::NormalizeFuncOptions().p(2).dim(1)), order, first, out);
      } catch (const std::exception& e) {
        // Most likely ids the encoder does not accept (e.g. beyond its vocabulary).
        return absl::InvalidArgumentError("torchscript encoder '" + path_ + "' failed on " + std::to_string(b) +
                                          " sequence(s) of " + std::to_string(len) + " tokens: " + internal::TorchErrorText(e));
      }
      first = end;
    }
    return absl::OkStatus();
  }

 private:
  // Method calls on a jit::Module are safe from many threads; Embed never
  // changes the module.
  torch::jit::Module module_;
  std::string path_;
  std::string hash_;
  int dim_;
  int64_t max_tokens_;
};

}  // namespace

std::unique_ptr<Embedder> MakeLmEmbedder(LanguageModel* model, int64_t batch_size) {
  return std::make_unique<LmEmbedder>(model, batch_size);
}

absl::StatusOr<std::unique_ptr<Embedder>> LoadTorchScriptEmbedder(const std::string& path, int64_t max_tokens) {
  namespace fs = std::filesystem;
  if (max_tokens < 1) {
    return absl::InvalidArgumentError("torchscript embedder: max_tokens must be >= 1, got " +
                                      std::to_string(max_tokens));
  }
  std::error_code ec;
  if (!fs::exists(path, ec)) return absl::NotFoundError("torchscript encoder '" + path + "' does not exist");
  if (!fs::is_regular_file(path, ec)) {
    return absl::InvalidArgumentError("torchscript encoder '" + path + "' is not a regular file");
  }
  auto hash = HashFileHex(path);
  if (!hash.ok()) return Annotate(hash.status(), "hashing torchscript encoder");

  torch::jit::Module module;
  try {
    module = torch::jit::load(path);
    module.eval();  // our own copy: a foreign encoder's dropout must be off
  } catch (const std::exception& e) {
    return absl::DataLossError("'" + path + "' is not a loadable TorchScript archive (save it with " +
                               "torch.jit.script(model).save(path)): " + internal::TorchErrorText(e));
  }
  if (!module.find_method("forward")) {
    return absl::InvalidArgumentError("torchscript encoder '" + path + "' has no forward method");
  }
  // Probe once so a wrong signature or output shape fails here, not at query time.
  int64_t dim = 0;
  try {
    torch::NoGradGuard no_grad;
    auto probe = CheckEncoderOutput(module.forward({torch::zeros({1, 4}, torch::kLong)}), 1, 0);
    if (!probe.ok()) {
      return Annotate(probe.status(), "torchscript encoder '" + path +
                                          "' must map ids [B, T] int64 to [B, D] float; probe with [1, 4]");
    }
    dim = probe->size(1);
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError("torchscript encoder '" + path +
                                      "' failed on a probe input ids [1, 4] int64 (forward must take one " +
                                      "Tensor of token ids [B, T] and return [B, D] float): " + internal::TorchErrorText(e));
  }
  if (dim > std::numeric_limits<int>::max()) {
    return absl::InvalidArgumentError("torchscript encoder '" + path + "': output width " + std::to_string(dim) +
                                      " is too large");
  }
  return std::unique_ptr<Embedder>(
      std::make_unique<TorchScriptEmbedder>(std::move(module), path, *std::move(hash), static_cast<int>(dim), max_tokens));
}

namespace {

class BatchingEmbedder final : public Embedder {
 public:
  BatchingEmbedder(Embedder* inner, int64_t max_sequences)
      : inner_(inner), max_sequences_(std::max<int64_t>(1, max_sequences)) {}

  int dim() const override { return inner_->dim(); }
  int64_t max_tokens() const override { return inner_->max_tokens(); }
  std::string hash() const override { return inner_->hash(); }
  std::string description() const override { return inner_->description(); }

  absl::Status Embed(const std::vector<std::vector<TokenId>>& sequences, std::vector<float>* out) override {
    if (static_cast<int64_t>(sequences.size()) >= max_sequences_) {
      Count(static_cast<int64_t>(sequences.size()));
      return inner_->Embed(sequences, out);
    }
    Pending me{&sequences, out, absl::OkStatus(), false};
    std::unique_lock<std::mutex> lock(mu_);
    queue_.push_back(&me);
    // Wait until a running batch served us, or nobody runs one: then we do.
    cv_.wait(lock, [&] { return me.done || !running_; });
    if (me.done) return me.status;
    running_ = true;
    while (!me.done) {
      std::vector<Pending*> batch;
      int64_t n = 0;
      while (!queue_.empty() && (batch.empty() || n + static_cast<int64_t>(queue_.front()->sequences->size()) <=
                                                      max_sequences_)) {
        n += static_cast<int64_t>(queue_.front()->sequences->size());
        batch.push_back(queue_.front());
        queue_.pop_front();
      }
      lock.unlock();
      Count(n);
      Run(batch);
      lock.lock();
      for (Pending* p : batch) p->done = true;
      cv_.notify_all();
    }
    running_ = false;
    cv_.notify_all();  // a caller queued meanwhile takes over
    return me.status;
  }

 BatchingStats stats() const {
    BatchingStats s;
    {
      const std::lock_guard<std::mutex> lock(mu_);
      s.waiting = static_cast<int64_t>(queue_.size());
    }
    const std::lock_guard<std::mutex> lock(stats_mu_);
    s.batches = batches_;
    s.sequences = sequences_;
    s.largest_batch = largest_batch_;
    return s;
  }

 private:
  struct Pending {
    const std::vector<std::vector<TokenId>>* sequences;
    std::vector<float>* out;
    absl::Status status;
    bool done = false;
  };

  void Run(const std::vector<Pending*>& batch) {
    if (batch.size() == 1) {
      batch[0]->status = inner_->Embed(*batch[0]->sequences, batch[0]->out);
      return;
    }
    std::vector<std::vector<TokenId>> all;
    for (const Pending* p : batch) all.insert(all.end(), p->sequences->begin(), p->sequences->end());
    std::vector<float> vectors;
    if (!inner_->Embed(all, &vectors).ok()) {
      // Someone's input is bad: run each alone for its own status.
      for (Pending* p : batch) p->status = inner_->Embed(*p->sequences, p->out);
      return;
    }
    const size_t d = static_cast<size_t>(inner_->dim());
    size_t row = 0;
    for (Pending* p : batch) {
      const size_t rows = p->sequences->size();
      p->out->assign(vectors.begin() + static_cast<std::ptrdiff_t>(row * d),
                     vectors.begin() + static_cast<std::ptrdiff_t>((row + rows) * d));
      p->status = absl::OkStatus();
      row += rows;
    }
  }

  // One forward pass of n sequences.
  void Count(int64_t n) {
    const std::lock_guard<std::mutex> lock(stats_mu_);
    ++batches_;
    sequences_ += n;
    largest_batch_ = std::max(largest_batch_, n);
  }

  Embedder* inner_;
  const int64_t max_sequences_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Pending*> queue_;
  bool running_ = false;
  mutable std::mutex stats_mu_;  // the counts below
  int64_t batches_ = 0;
  int64_t sequences_ = 0;
  int64_t largest_batch_ = 0;
};

}  // namespace

std::optional<BatchingStats> BatchingStatsOf(const Embedder& embedder) {
  const auto* batching = dynamic_cast<const BatchingEmbedder*>(&embedder);
  if (batching == nullptr) return std::nullopt;
  return batching->stats();
}

std::unique_ptr<Embedder> MakeBatchingEmbedder(Embedder* inner, int64_t max_sequences) {
  return std::make_unique<BatchingEmbedder>(inner, max_sequences);
}

}  // namespace rag::lm

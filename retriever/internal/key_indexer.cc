#include "retriever/internal/key_indexer.h"

#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <utility>

#include "common/progress.h"
#include "common/status.h"
#include "retriever/internal/datastore_format.h"
#include "retriever/internal/posix_io.h"

namespace rag::retriever::internal {
namespace {

// The datastore's training sample: 64 keys per IVF list (FAISS wants 39 to
// 256) and at least 20k, which also covers PQ's 256 codewords per
// sub-quantizer: training then costs a fixed ~20 s instead of growing with
// nlist, which matters because the datastore build is measured against the
// bare forward pass.
constexpr VectorIndex::TrainingSampleRule kDatastoreTrainingSample = {64, 20000};
// Default Finish batch: this many bytes of float32 keys.
constexpr int64_t kAddBatchBytes = int64_t{64} << 20;

// The calling thread gives way to every other runnable thread of normal
// priority (Linux nice values are per thread). Best effort.
void LowestThreadPriority() { ::setpriority(PRIO_PROCESS, static_cast<id_t>(::syscall(SYS_gettid)), 19); }

}  // namespace

absl::StatusOr<DatastoreIndexPlan> PlanDatastoreIndexImpl(const DatastoreFinishOptions& options, int64_t total,
                                                          int dim) {
  DatastoreIndexPlan plan;
  const std::string requested = options.factory.empty() ? VectorIndex::DefaultFactory(total, dim) : options.factory;
  const int64_t trainable = options.max_train > 0 ? std::min(total, options.max_train) : total;
  RAG_ASSIGN_OR_RETURN(plan.choice, VectorIndex::AdaptFactory(requested, trainable, dim));
  RAG_ASSIGN_OR_RETURN(plan.index, VectorIndex::Create(dim, plan.choice.factory));
  if (!plan.index->is_trained()) {
    plan.sample_rows = plan.index->TrainingSampleSize(total, options.max_train, kDatastoreTrainingSample);
  }
  return plan;
}

KeyIndexer::KeyIndexer(const DatastoreFinishOptions& options, int dim, int keys_fd, std::string keys_path,
                       StreamingChecksum payload_hash)
    : options_(options),
      dim_(dim),
      keys_fd_(keys_fd),
      keys_path_(std::move(keys_path)),
      payload_hash_(std::move(payload_hash)) {}

absl::StatusOr<std::unique_ptr<KeyIndexer>> KeyIndexer::Create(const DatastoreFinishOptions& options, int64_t total,
                                                               bool prefix_sample, int dim, int keys_fd,
                                                               std::string keys_path) {
  RAG_ASSIGN_OR_RETURN(StreamingChecksum hash, StreamingChecksum::Create());
  auto k = std::unique_ptr<KeyIndexer>(new KeyIndexer(options, dim, keys_fd, std::move(keys_path), std::move(hash)));
  if (!options.trained_index.empty()) {
    RAG_ASSIGN_OR_RETURN(k->index_, OpenTrainedKeyIndex(options.trained_index, dim));
    k->choice_ = {k->index_->factory(), ""};
  } else {
    RAG_ASSIGN_OR_RETURN(DatastoreIndexPlan plan, PlanDatastoreIndex(options, total, dim));
    k->choice_ = plan.choice;
    k->index_ = std::move(plan.index);
    k->sample_ = plan.sample_rows;
    if (!k->index_->is_trained()) {
      k->train_from_ = prefix_sample ? std::min(total, std::max(4 * k->sample_, total / 4)) : total;
    }
  }
  k->index_->DropSearchTables();  // only added to and saved here
  const int64_t batch =
      options.batch_rows > 0 ? options.batch_rows : std::max<int64_t>(1, kAddBatchBytes / (4 * int64_t{dim}));
  k->batch_ = batch;
  k->index_->Reserve(total);
  return k;
}

absl::StatusOr<std::unique_ptr<VectorIndex>> OpenTrainedKeyIndex(const std::string& path, int dim) {
  const std::string context = "trained datastore index '" + path + "'";
  auto index = VectorIndex::Open(path);
  if (!index.ok()) return Annotate(index.status(), context);
  if ((*index)->dim() != dim) {
    return absl::FailedPreconditionError(context + ": dim " + std::to_string((*index)->dim()) +
                                         ", the model's hidden states have " + std::to_string(dim));
  }
  if (!(*index)->is_trained() || (*index)->size() != 0) {
    return absl::FailedPreconditionError(context + ": not a trained, empty index (made by rag build --train-only)");
  }
  return index;
}

absl::Status KeyIndexer::Train(int64_t rows) {
  if (trained()) return absl::OkStatus();
  const int64_t from = std::min(train_from_, rows);
  const int64_t m = std::min(sample_, from);
  const size_t d = static_cast<size_t>(dim_);
  std::vector<float> sample(static_cast<size_t>(m) * d);
  std::vector<uint16_t> row(d);
  const std::vector<int64_t> picked = VectorIndex::SampleRows(from, m, options_.seed);
  for (size_t i = 0; i < picked.size(); ++i) {
    RAG_RETURN_IF_ERROR(PreadAll(keys_fd_, row.data(), d * 2, RowOffset(picked[i]), keys_path_));
    HalvesToFloats(row.data(), d, sample.data() + i * d);
  }
  absl::Status s = index_->TrainOnSample(std::move(sample), options_.seed);
  if (!s.ok()) {
    // An interrupted FAISS training can leave a half-trained coarse
    // quantizer that a retry would keep: start the next try afresh.
    auto fresh = VectorIndex::Create(dim_, choice_.factory);
    if (fresh.ok()) {
      index_ = std::move(fresh).value();
      index_->DropSearchTables();
    }
    return s;
  }
  trained_rows_ = m;
  return absl::OkStatus();
}

absl::Status KeyIndexer::AddUpTo(int64_t rows, const std::atomic<bool>* cancel) {
  const size_t d = static_cast<size_t>(dim_);
  while (added_.load() < rows) {
    if (cancel != nullptr && cancel->load()) return absl::CancelledError("indexing keys: cancelled");
    const int64_t r = added_.load();
    const int64_t m = std::min(batch_, rows - r);
    const size_t count = static_cast<size_t>(m) * d;
    halves_.resize(count);
    floats_.resize(count);
    RAG_RETURN_IF_ERROR(PreadAll(keys_fd_, halves_.data(), count * 2, RowOffset(r), keys_path_));
    HalvesToFloats(halves_.data(), count, floats_.data());
    RAG_RETURN_IF_ERROR(index_->Add(floats_.data(), m));
    payload_hash_.Update(halves_.data(), count * 2);
    added_.store(r + m);
  }
  return absl::OkStatus();
}

bool SameFinishOptions(const DatastoreFinishOptions& a, const DatastoreFinishOptions& b) {
  return a.factory == b.factory && a.seed == b.seed && a.max_train == b.max_train && a.batch_rows == b.batch_rows &&
         a.trained_index == b.trained_index;
}

BackgroundIndexer::BackgroundIndexer(const DatastoreFinishOptions& options, std::unique_ptr<KeyIndexer> indexer,
                                     int64_t synced)
    : options_(options), indexer_(std::move(indexer)), synced_(synced), thread_([this] { Run(); }) {}

BackgroundIndexer::~BackgroundIndexer() { Stop(); }

void BackgroundIndexer::Synced(int64_t rows) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    synced_ = rows;
  }
  cv_.notify_all();
}

void BackgroundIndexer::Stop() {
  if (!thread_.joinable()) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    cancel_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

absl::Status BackgroundIndexer::status() const {
  std::lock_guard<std::mutex> lock(mu_);
  return status_;
}

std::string BackgroundIndexer::Describe() const {
  if (indexer_ == nullptr) return "";
  const KeyIndexer& k = *indexer_;
  if (training_.load()) return "training the index";
  if (!k.trained()) return "index trains after " + HumanCount(static_cast<double>(k.train_from())) + " keys";
  return HumanCount(static_cast<double>(k.added())) + " keys indexed";
}

void BackgroundIndexer::Run() {
  LowestThreadPriority();
  absl::Status s = [&]() -> absl::Status {
    // Wait for `rows` synced rows; false once cancelled.
    auto wait_for = [&](int64_t rows, int64_t* available) {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return cancel_.load() || synced_ >= rows; });
      *available = synced_;
      return !cancel_.load();
    };
    int64_t available = 0;
    if (!indexer_->trained()) {
      if (!wait_for(indexer_->train_from(), &available)) return absl::OkStatus();
      training_ = true;
      absl::Status trained;
      {
        // Only training is interrupted inside FAISS (KeyIndexer::Train
        // then starts over); adds stop between batches, so none is half done.
        VectorIndex::CancelScope scope(&cancel_);
        trained = indexer_->Train(available);
      }
      training_ = false;
      if (!trained.ok()) return trained;
    }
    while (wait_for(indexer_->added() + 1, &available)) {
      absl::Status added = indexer_->AddUpTo(available, &cancel_);
      if (!added.ok()) return added;
    }
    return absl::OkStatus();
  }();
  // Cancelled work is simply picked up again by Finish.
  if (!s.ok() && !absl::IsCancelled(s)) {
    std::lock_guard<std::mutex> lock(mu_);
    status_ = s;
  }
}

}  // namespace rag::retriever::internal

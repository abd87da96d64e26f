// Builds a datastore's keys.faiss from the rows of keys.f16 (KeyIndexer), in
// DatastoreWriter::Finish or on a background thread while rows are still
// appended (BackgroundIndexer, for DatastoreWriter::IndexInBackground).
// KeyIndexer is not thread-safe except added(), which may be polled;
// BackgroundIndexer's methods are thread-safe as documented on each.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/binary_file.h"
#include "retriever/datastore.h"
#include "retriever/vector_index.h"

namespace rag::retriever::internal {

// The factory is chosen for `total` rows, training uses a seeded sample of
// the first train_from() rows, and rows are then added in order, a batch at
// a time, hashing the payload as it is read so the caller can check the file
// still holds what was appended.
class KeyIndexer {
 public:
  // `prefix_sample`: sample the training rows from a prefix of the rows
  // (background indexing, which cannot wait for all of them) instead of
  // from all `total`. `keys_fd` (keys.f16 at `keys_path`) must outlive the
  // indexer.
  static absl::StatusOr<std::unique_ptr<KeyIndexer>> Create(const DatastoreFinishOptions& options, int64_t total,
                                                            bool prefix_sample, int dim, int keys_fd,
                                                            std::string keys_path);

  bool trained() const { return index_->is_trained(); }
  // Rows that must be written before Train can run.
  int64_t train_from() const { return train_from_; }
  int64_t train_rows() const { return trained_rows_; }
  int64_t added() const { return added_.load(); }
  const FactoryChoice& choice() const { return choice_; }
  uint64_t payload_hash() const { return payload_hash_.Digest(); }
  const VectorIndex& index() const { return *index_; }

  // Trains on the sample, from the first min(train_from(), rows) rows.
  absl::Status Train(int64_t rows);

  // Adds rows [added(), rows), a batch at a time; stops between batches
  // (Cancelled) once `*cancel` is true.
  absl::Status AddUpTo(int64_t rows, const std::atomic<bool>* cancel = nullptr);

 private:
  KeyIndexer(const DatastoreFinishOptions& options, int dim, int keys_fd, std::string keys_path,
             StreamingChecksum payload_hash);
  int64_t RowOffset(int64_t row) const { return kDatastoreHeaderBytes + row * int64_t{dim_} * 2; }

  DatastoreFinishOptions options_;
  int dim_;
  int keys_fd_;
  std::string keys_path_;
  FactoryChoice choice_;
  std::unique_ptr<VectorIndex> index_;
  StreamingChecksum payload_hash_;
  int64_t sample_ = 0, train_from_ = 0, trained_rows_ = 0, batch_ = 1;
  std::atomic<int64_t> added_{0};
  std::vector<uint16_t> halves_;
  std::vector<float> floats_;
};

// PlanDatastoreIndex (retriever/datastore.h), where the sample rule lives.
absl::StatusOr<DatastoreIndexPlan> PlanDatastoreIndexImpl(const DatastoreFinishOptions& options, int64_t total,
                                                          int dim);

// Opens DatastoreFinishOptions::trained_index: a trained, empty index of
// `dim` dimensions, else FailedPrecondition (or Open's error) naming `path`.
absl::StatusOr<std::unique_ptr<VectorIndex>> OpenTrainedKeyIndex(const std::string& path, int dim);

// Whether Finish got the options IndexInBackground got.
bool SameFinishOptions(const DatastoreFinishOptions& a, const DatastoreFinishOptions& b);

// A KeyIndexer run on its own thread, at the lowest CPU priority, over the
// rows the writer reports durable: it trains once train_from() rows are
// synced, then adds every synced row. Cancelled work is left for Finish.
class BackgroundIndexer {
 public:
  // Starts the thread; `synced` rows are durable already.
  BackgroundIndexer(const DatastoreFinishOptions& options, std::unique_ptr<KeyIndexer> indexer, int64_t synced);
  // Stops the thread (Stop).
  ~BackgroundIndexer();
  BackgroundIndexer(const BackgroundIndexer&) = delete;
  BackgroundIndexer& operator=(const BackgroundIndexer&) = delete;

  // The writer made `rows` rows durable. Thread-safe.
  void Synced(int64_t rows);
  // Cancels the work in progress and waits for the thread; idempotent.
  void Stop();
  // The thread's error (OK when cancelled). Thread-safe.
  absl::Status status() const;
  // One phrase on what it is doing. Thread-safe.
  std::string Describe() const;
  const DatastoreFinishOptions& options() const { return options_; }
  // The indexer, where the thread left it. Only after Stop.
  std::unique_ptr<KeyIndexer> TakeIndexer() { return std::move(indexer_); }

 private:
  void Run();

  DatastoreFinishOptions options_;
  std::unique_ptr<KeyIndexer> indexer_;
  std::atomic<bool> cancel_{false};
  std::atomic<bool> training_{false};
  mutable std::mutex mu_;
  std::condition_variable cv_;
  int64_t synced_ = 0;   // rows durable (written and fsynced) so far; guarded by mu_
  absl::Status status_;  // the thread's error; guarded by mu_
  std::thread thread_;   // last: starts once the rest is initialised
};

}  // namespace rag::retriever::internal

// CorpusCounts: the served index's suffix array (retriever/token_counts.h),
// what the infgram mode counts in. Loaded on first use (counts.sa, or built
// from the chunk store when it is missing or older than the documents), and
// loaded afresh after documents are added. Thread-safe: a caller keeps the
// snapshot it got while newer ones replace it.
#pragma once

#include <memory>
#include <mutex>

#include "absl/status/statusor.h"
#include "common/status.h"
#include "retriever/index_dir.h"
#include "retriever/retriever.h"
#include "retriever/token_counts.h"

namespace rag::services {

class CorpusCounts {
 public:
  // `retriever` must outlive this object.
  explicit CorpusCounts(const retriever::Retriever* retriever) : retriever_(retriever) {}

  // The counts over every document the store holds now.
  absl::StatusOr<std::shared_ptr<const retriever::TokenCounts>> Get() const {
    const std::lock_guard<std::mutex> lock(mu_);
    const retriever::ChunkStore& store = retriever_->chunk_store();
    if (current_ == nullptr || current_->documents() != store.num_documents()) {
      RAG_ASSIGN_OR_RETURN(retriever::IndexTokenCounts loaded, retriever_->dir().LoadTokenCounts(store));
      current_ = std::make_shared<const retriever::TokenCounts>(std::move(loaded.counts));
    }
    return current_;
  }

 private:
  const retriever::Retriever* retriever_;
  mutable std::mutex mu_;  // guards current_; held while (re)loading
  mutable std::shared_ptr<const retriever::TokenCounts> current_;
};

}  // namespace rag::services

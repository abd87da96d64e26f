#include "retriever/searcher.h"

namespace rag::retriever {

absl::Status LocalKeySearcher::Search(const float* queries, int64_t nq, const KeySearchOptions& options,
                                      std::vector<std::vector<DatastoreNeighbour>>* out) const {
  int32_t exclude = -1;
  if (!options.exclude_doc_id.empty() && store_ != nullptr) {
    auto doc = store_->GetDocument(options.exclude_doc_id);
    if (doc.ok()) exclude = static_cast<int32_t>(doc->index);
  }
  return datastore_->Search(queries, nq, options.k, options.nprobe,
                            std::vector<int32_t>(static_cast<size_t>(std::max<int64_t>(nq, 0)), exclude),
                            options.exact, out);
}

absl::Status KeySearcher::Successors(const float* /*query*/, const std::vector<DatastoreNeighbour>& /*from*/,
                                     int32_t /*token*/, std::vector<DatastoreNeighbour>* /*out*/) const {
  return absl::UnimplementedError(
      "following datastore pointers needs the whole datastore in this process (a front's shards each hold a part)");
}

absl::Status LocalKeySearcher::Successors(const float* query, const std::vector<DatastoreNeighbour>& from,
                                          int32_t token, std::vector<DatastoreNeighbour>* out) const {
  return datastore_->Successors(query, from, token, out);
}

int LocalKeySearcher::dim() const { return datastore_->dim(); }

}  // namespace rag::retriever

#include "retriever/datastore_sync.h"

#include <cstdio>

#include "common/status.h"

namespace rag::retriever {

absl::Status AddDatastoreKeys(const ChunkStore& store, Datastore* datastore, const std::string& doc_id,
                              const DocumentKeysFn& keys, bool durable) {
  if (datastore == nullptr || datastore->HasAddedDocument(doc_id)) return absl::OkStatus();
  RAG_ASSIGN_OR_RETURN(DocumentRecord rec, store.GetDocument(doc_id));
  if (rec.tokens.empty()) return absl::OkStatus();
  // One key per token, as the builder: the hidden state that predicts it.
  RAG_ASSIGN_OR_RETURN(std::vector<float> k, keys(rec.tokens));
  const int64_t n = static_cast<int64_t>(rec.tokens.size());
  if (static_cast<int64_t>(k.size()) != n * datastore->dim()) {
    return absl::InternalError("document '" + doc_id + "': " + std::to_string(k.size()) + " key floats for " +
                               std::to_string(n) + " tokens of dim " + std::to_string(datastore->dim()));
  }
  return datastore->AddDocumentKeys(doc_id, k.data(), rec.tokens.data(), static_cast<int32_t>(rec.index), n, durable);
}

absl::Status CatchUpDatastore(const Manifest& manifest, const ChunkStore& store, Datastore* datastore,
                              const DocumentKeysFn& keys, bool durable) {
  const int64_t built = manifest.documents - manifest.documents_added;
  const int64_t chunks = store.num_chunks();
  if (store.num_documents() <= built || chunks == 0) return absl::OkStatus();
  // Chunk ids follow document order: the first chunk of a document added
  // after the build, by bisection.
  int64_t lo = 0, hi = chunks;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    RAG_ASSIGN_OR_RETURN(ChunkRecord rec, store.GetChunk(mid));
    if (rec.doc_index >= built) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  std::vector<std::string> docs;
  RAG_RETURN_IF_ERROR(store.ForEachChunk(lo, [&](const ChunkRecord& rec) {
    if (docs.empty() || docs.back() != rec.doc_id) docs.push_back(rec.doc_id);
    return true;
  }));
  int64_t added = 0;
  for (const std::string& id : docs) {
    if (datastore->HasAddedDocument(id)) continue;
    RAG_RETURN_IF_ERROR(AddDatastoreKeys(store, datastore, id, keys, durable));
    ++added;
  }
  if (added > 0) {
    std::fprintf(stderr, "datastore: computed the keys of %lld added documents it lacked\n",
                 static_cast<long long>(added));
  }
  return absl::OkStatus();
}

}  // namespace rag::retriever

#include "retriever/retriever.h"

#include <algorithm>
#include <filesystem>
#include <unordered_set>

#include "common/status.h"

namespace rag::retriever {
namespace fs = std::filesystem;

absl::StatusOr<std::unique_ptr<Retriever>> Retriever::Open(const std::string& index_dir, lm::Embedder* embedder,
                                                           const std::string& model_hash,
                                                           const std::string& tokenizer_hash) {
  std::unique_ptr<Retriever> r(new Retriever());
  RAG_ASSIGN_OR_RETURN(r->manifest_, Manifest::Load(index_dir));
  const Manifest& m = r->manifest_;
  if (m.model_hash != model_hash || m.tokenizer_hash != tokenizer_hash) {
    return absl::FailedPreconditionError(
        "index '" + index_dir + "' was built with model " + m.model_hash + " (tokenizer " + m.tokenizer_hash +
        ") but the served model is " + model_hash + " (tokenizer " + tokenizer_hash +
        "); rebuild the index with this model");
  }
  if (m.embedder_hash != embedder->hash() || m.dim != embedder->dim()) {
    return absl::FailedPreconditionError("index '" + index_dir + "' was built with embedder " + m.embedder +
                                         " (" + m.embedder_hash + ", dim " + std::to_string(m.dim) +
                                         ") but the embedder given is " + embedder->description() + " (" +
                                         embedder->hash() + ", dim " + std::to_string(embedder->dim()) + ")");
  }
  r->embedder_ = embedder;
  ChunkStoreOptions so;
  so.chunk_tokens = m.chunk_tokens;
  so.continuation_tokens = m.continuation_tokens;
  so.create_if_missing = false;
  so.read_only = true;
  auto store = ChunkStore::Open((fs::path(index_dir) / kChunkStoreDir).string(), so);
  if (!store.ok()) return Annotate(store.status(), "opening index '" + index_dir + "'");
  r->store_ = std::move(*store);
  auto index = VectorIndex::Open((fs::path(index_dir) / kChunkIndexFile).string());
  if (!index.ok()) return Annotate(index.status(), "opening index '" + index_dir + "'");
  r->index_ = std::move(*index);
  if (r->index_->size() != m.vectors || r->store_->num_chunks() != m.chunks || r->index_->dim() != m.dim) {
    return absl::DataLossError("index '" + index_dir + "' does not match its manifest (vector or chunk counts)");
  }
  return r;
}

absl::StatusOr<std::vector<std::vector<Neighbour>>> Retriever::Search(
    const std::vector<std::vector<Token>>& queries, const SearchOptions& options) const {
  if (options.k < 1 || options.k > VectorIndex::kMaxK) {
    return absl::InvalidArgumentError("k must be in [1, " + std::to_string(VectorIndex::kMaxK) + "], got " +
                                      std::to_string(options.k));
  }
  for (size_t i = 0; i < queries.size(); ++i) {
    if (queries[i].empty()) return absl::InvalidArgumentError("query " + std::to_string(i) + " is empty");
  }
  std::vector<std::vector<Neighbour>> results(queries.size());
  if (queries.empty()) return results;
  std::vector<float> embeddings;
  RAG_RETURN_IF_ERROR(embedder_->Embed(queries, &embeddings));
  const int64_t nq = static_cast<int64_t>(queries.size());
  const int64_t total = index_->size();
  const std::unordered_set<std::string> excluded(options.exclude_doc_ids.begin(), options.exclude_doc_ids.end());

  // Over-retrieve when excluding: start at 2k and double until every query
  // has k eligible chunks or the whole index was searched.
  int64_t fetch = excluded.empty() ? options.k : std::min<int64_t>(2 * options.k, VectorIndex::kMaxK);
  std::vector<bool> done(queries.size(), false);
  while (true) {
    fetch = std::min<int64_t>(fetch, std::min<int64_t>(total, VectorIndex::kMaxK));
    if (fetch <= 0) return results;
    std::vector<float> distances;
    std::vector<int64_t> ids;
    RAG_RETURN_IF_ERROR(
        index_->Search(embeddings.data(), nq, static_cast<int>(fetch), options.nprobe, &distances, &ids));
    bool all_done = true;
    for (int64_t q = 0; q < nq; ++q) {
      if (done[q]) continue;
      std::vector<ChunkId> chunk_ids;
      std::vector<float> chunk_dist;
      for (int64_t j = 0; j < fetch; ++j) {
        if (ids[q * fetch + j] < 0) continue;
        chunk_ids.push_back(ids[q * fetch + j]);
        chunk_dist.push_back(distances[q * fetch + j]);
      }
      RAG_ASSIGN_OR_RETURN(std::vector<ChunkRecord> records, store_->GetChunks(chunk_ids));
      std::vector<Neighbour> kept;
      for (size_t j = 0; j < records.size() && static_cast<int>(kept.size()) < options.k; ++j) {
        if (excluded.count(records[j].doc_id)) continue;
        ChunkRecord& rec = records[j];
        kept.push_back({rec.id, std::move(rec.doc_id), rec.offset, std::move(rec.tokens),
                        std::move(rec.continuation), chunk_dist[j]});
      }
      const bool exhausted = fetch >= std::min<int64_t>(total, VectorIndex::kMaxK);
      if (static_cast<int>(kept.size()) >= options.k || exhausted) {
        results[q] = std::move(kept);
        done[q] = true;
      } else {
        all_done = false;
      }
    }
    if (all_done) return results;
    fetch *= 2;
  }
}

}  // namespace rag::retriever

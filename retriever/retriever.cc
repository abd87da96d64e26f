#include "retriever/retriever.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <unordered_set>

#include "common/file_util.h"
#include "common/stage_timer.h"
#include "common/status.h"
#include "retriever/leakage.h"
#include "retriever/topk.h"

namespace rag::retriever {
namespace fs = std::filesystem;

absl::StatusOr<std::unique_ptr<Retriever>> Retriever::Open(const std::string& index_dir, lm::Embedder* embedder,
                                                           const std::string& model_hash,
                                                           const std::string& tokenizer_hash, bool writable) {
  IndexDirOptions o;
  o.chunk_store = true;
  o.vectors = true;
  o.writable = writable;
  o.check_model = true;
  o.model_hash = model_hash;
  o.tokenizer_hash = tokenizer_hash;
  o.embedder = embedder;
  RAG_ASSIGN_OR_RETURN(std::unique_ptr<IndexDir> dir, IndexDir::Open(index_dir, o));
  std::unique_ptr<Retriever> r(new Retriever());
  r->writable_ = writable;
  r->manifest_ = dir->manifest();
  const Manifest& m = r->manifest_;
  r->dim_ = m.dim;
  r->embedder_ = embedder;
  r->store_ = dir->chunk_store();
  r->index_ = dir->vectors();
  r->dir_ = std::move(dir);
  const int64_t vectors = r->index_->size();
  if (!writable) return r;

  // Bring the derived state up to the chunk store: embeddings.f32 to the
  // index's rows, then the index to the store's chunks.
  const fs::path emb_path = r->dir_->File(kEmbeddingsFile);
  const int64_t row_bytes = static_cast<int64_t>(m.dim) * static_cast<int64_t>(sizeof(float));
  std::error_code ec;
  const int64_t size = static_cast<int64_t>(fs::file_size(emb_path, ec));
  if (ec) return absl::DataLossError("index '" + index_dir + "' has no readable " + kEmbeddingsFile);
  int64_t rows = size / row_bytes;
  if (rows > vectors || size % row_bytes != 0) {
    rows = std::min(rows, vectors);
    fs::resize_file(emb_path, static_cast<uintmax_t>(rows * row_bytes), ec);
    if (ec) return absl::InternalError("truncating '" + emb_path.string() + "': " + ec.message());
  }
  r->persisted_rows_ = rows;
  std::lock_guard<std::mutex> lock(r->add_mu_);
  if (rows < vectors) RAG_RETURN_IF_ERROR(r->EmbedStoredChunks(rows, vectors, &r->pending_rows_));
  RAG_RETURN_IF_ERROR(r->CatchUpLocked());
  RAG_RETURN_IF_ERROR(r->CheckpointLocked());
  return r;
}

Retriever::~Retriever() {
  if (!writable_) return;
  std::lock_guard<std::mutex> lock(add_mu_);
  absl::Status s = CheckpointLocked();
  if (!s.ok()) {
    std::fprintf(stderr, "index: checkpoint at close failed (%s); the documents are safe in the chunk store and "
                 "are re-indexed at the next open\n", std::string(s.message()).c_str());
  }
}

Manifest Retriever::manifest() const {
  std::lock_guard<std::mutex> lock(add_mu_);
  return manifest_;
}

int64_t Retriever::num_vectors() const {
  std::shared_lock<std::shared_mutex> lock(index_mu_);
  return index_->size();
}

absl::Status Retriever::EmbedStoredChunks(ChunkId from, ChunkId to, std::vector<float>* out) const {
  constexpr size_t kBatch = 32;
  std::vector<std::vector<Token>> batch;
  std::vector<float> vectors;
  absl::Status status;
  auto flush = [&]() {
    if (batch.empty() || !status.ok()) return;
    status = embedder_->Embed(batch, &vectors);
    out->insert(out->end(), vectors.begin(), vectors.end());
    batch.clear();
  };
  RAG_RETURN_IF_ERROR(store_->ForEachChunk(from, [&](const ChunkRecord& rec) {
    if (rec.id >= to) return false;
    batch.push_back(rec.tokens);
    if (batch.size() == kBatch) flush();
    return status.ok();
  }));
  flush();
  return status;
}

absl::Status Retriever::CatchUpLocked() {
  const int64_t vectors = num_vectors();
  const int64_t chunks = store_->num_chunks();
  if (vectors >= chunks) return absl::OkStatus();
  std::fprintf(stderr, "index: indexing %lld stored chunks that the vector index lacks\n",
               static_cast<long long>(chunks - vectors));
  std::vector<float> x;
  RAG_RETURN_IF_ERROR(EmbedStoredChunks(vectors, chunks, &x));
  {
    std::unique_lock<std::shared_mutex> lock(index_mu_);
    RAG_RETURN_IF_ERROR(index_->Add(x.data(), chunks - vectors));
  }
  pending_rows_.insert(pending_rows_.end(), x.begin(), x.end());
  return absl::OkStatus();
}

absl::StatusOr<std::vector<ChunkId>> Retriever::AddDocument(const std::string& doc_id,
                                                            const std::vector<Token>& tokens,
                                                            const std::string& metadata_json) {
  if (!writable_) return absl::FailedPreconditionError("index '" + dir_->path() + "' was opened read-only");
  std::lock_guard<std::mutex> lock(add_mu_);
  RAG_RETURN_IF_ERROR(CatchUpLocked());
  RAG_ASSIGN_OR_RETURN(std::vector<ChunkId> ids, store_->AddDocument(doc_id, tokens, metadata_json));
  // The document is durable from here on; if indexing fails, CatchUpLocked
  // indexes it on the next add or open.
  auto unindexed = [&](const absl::Status& s) {
    return Annotate(s, "document '" + doc_id + "' is stored but not yet searchable (it is indexed on the next add "
                       "or restart)");
  };
  std::vector<float> x;
  if (absl::Status s = EmbedStoredChunks(ids.front(), ids.back() + 1, &x); !s.ok()) return unindexed(s);
  {
    std::unique_lock<std::shared_mutex> index_lock(index_mu_);
    if (absl::Status s = index_->Add(x.data(), static_cast<int64_t>(ids.size())); !s.ok()) return unindexed(s);
  }
  pending_rows_.insert(pending_rows_.end(), x.begin(), x.end());
  {
    std::unique_lock<std::shared_mutex> bm25_lock(bm25_mu_);
    if (bm25_ != nullptr) {
      if (absl::Status s = SyncBm25Locked(); !s.ok()) return unindexed(s);
    }
  }
  return ids;
}

absl::Status Retriever::Checkpoint() {
  if (!writable_) return absl::FailedPreconditionError("index '" + dir_->path() + "' was opened read-only");
  std::lock_guard<std::mutex> lock(add_mu_);
  return CheckpointLocked();
}

absl::Status Retriever::CheckpointLocked() {
  const int64_t vectors = num_vectors();
  const int64_t chunks = store_->num_chunks();
  if (pending_rows_.empty() && manifest_.vectors == vectors && manifest_.chunks == chunks) return absl::OkStatus();
  const std::string emb_path = dir_->File(kEmbeddingsFile);
  // embeddings.f32 first: it only ever grows by whole rows that the index
  // also holds, so a crash after any step leaves a directory Open repairs.
  if (!pending_rows_.empty()) {
    RAG_RETURN_IF_ERROR(AppendFileDurable(emb_path, pending_rows_.data(), pending_rows_.size() * sizeof(float)));
    persisted_rows_ += static_cast<int64_t>(pending_rows_.size()) / manifest_.dim;
    pending_rows_.clear();
  }
  {
    std::shared_lock<std::shared_mutex> index_lock(index_mu_);
    RAG_RETURN_IF_ERROR(index_->Save(dir_->File(kChunkIndexFile)));
  }
  Manifest m = manifest_;
  m.documents_added += store_->num_documents() - m.documents;
  m.documents = store_->num_documents();
  m.tokens = store_->num_tokens();
  m.chunks = chunks;
  m.vectors = vectors;
  RAG_ASSIGN_OR_RETURN(m.checksums[kEmbeddingsFile], HashFileHex(emb_path));
  RAG_ASSIGN_OR_RETURN(m.checksums[kChunkIndexFile], HashFileHex(dir_->File(kChunkIndexFile)));
  RAG_RETURN_IF_ERROR(m.Save(dir_->path()));
  manifest_ = std::move(m);
  return absl::OkStatus();
}

absl::Status Retriever::SyncBm25Locked() const {
  Bm25Index* bm25 = bm25_.get();
  absl::Status added;
  RAG_RETURN_IF_ERROR(store_->ForEachChunk(bm25->num_chunks(), [&](const ChunkRecord& c) {
    added = bm25->Add(c.id, c.doc_index, c.tokens);
    return added.ok();
  }));
  return added;
}

absl::Status Retriever::EnsureBm25() const {
  {
    std::shared_lock<std::shared_mutex> lock(bm25_mu_);
    if (bm25_ != nullptr) return absl::OkStatus();
  }
  std::unique_lock<std::shared_mutex> lock(bm25_mu_);
  if (bm25_ != nullptr) return absl::OkStatus();
  bm25_ = std::make_unique<Bm25Index>();
  if (absl::Status s = SyncBm25Locked(); !s.ok()) {
    bm25_.reset();
    return Annotate(s, "building the BM25 index");
  }
  return absl::OkStatus();
}

int64_t CopyNeighbourTokens(const Neighbour& neighbour, int64_t n, Token* out) {
  int64_t written = 0;
  for (const auto* part : {&neighbour.tokens, &neighbour.continuation}) {
    for (size_t t = 0; t < part->size() && written < n; ++t) out[written++] = (*part)[t];
  }
  return written;
}

namespace {

std::vector<Token> NeighbourText(const Neighbour& neighbour) {
  std::vector<Token> text(neighbour.tokens);
  text.insert(text.end(), neighbour.continuation.begin(), neighbour.continuation.end());
  return text;
}

}  // namespace

bool NeighbourLeaks(const Neighbour& neighbour, const std::vector<Token>& target, int64_t run) {
  return SharesTokenRun(target, NeighbourText(neighbour), run);
}

int64_t AlignNeighbourTokens(const Neighbour& neighbour, const std::vector<Token>& query, int64_t min_match,
                             int64_t chunk, int64_t n, Token pad, Token* out) {
  const std::vector<Token> text = NeighbourText(neighbour);
  const int64_t len = static_cast<int64_t>(text.size()), q = static_cast<int64_t>(query.size());
  int64_t best = 0, best_end = 0;  // match length, and the text position just after it
  // The whole of a short query must match (a generic phrase such as "is the
  // capital of" is not the prompt), at least min(4, min_match) tokens.
  const int64_t need = std::min(min_match, std::max(q, std::min<int64_t>(4, min_match)));
  if (min_match >= 1) {
    for (int64_t end = 1; end <= len; ++end) {
      int64_t l = 0;
      while (l < q && l < end && text[static_cast<size_t>(end - 1 - l)] == query[static_cast<size_t>(q - 1 - l)])
        ++l;
      if (l > best) best = l, best_end = end;
    }
  }
  std::fill(out, out + n, pad);
  if (min_match < 1 || best < need) {
    CopyNeighbourTokens(neighbour, n, out);
    return 0;
  }
  const int64_t head = std::min(chunk, n);
  for (int64_t i = 0; i < head; ++i) {
    const int64_t src = best_end - head + i;
    if (src >= 0) out[i] = text[static_cast<size_t>(src)];
  }
  for (int64_t i = head; i < n && best_end + i - head < len; ++i)
    out[i] = text[static_cast<size_t>(best_end + i - head)];
  return best;
}

absl::StatusOr<std::vector<std::vector<Neighbour>>> Retriever::SearchBm25(
    const std::vector<std::vector<Token>>& queries, const SearchOptions& options) const {
  const StageTimer timer(Stage::kDatastore);  // the records; the BM25 search below is timed apart
  RAG_RETURN_IF_ERROR(EnsureBm25());
  std::unordered_set<int64_t> excluded;  // document indexes
  for (const auto& id : options.exclude_doc_ids) {
    auto doc = store_->GetDocument(id);
    if (doc.ok()) excluded.insert(doc->index);
  }
  const size_t k = static_cast<size_t>(options.k);
  std::vector<std::vector<Neighbour>> results(queries.size());
  for (size_t q = 0; q < queries.size(); ++q) {
    // Bm25Index::Search breaks equal scores by chunk id (insertion order):
    // ask for k, then double while a tie may continue past the k-th
    // (retriever/topk.h), so the top k is the same however the documents
    // were added. Excluded chunks are skipped inside the search.
    for (int64_t fetch = options.k;; fetch *= 2) {
      std::vector<std::pair<ChunkId, float>> found;
      int64_t chunks = 0;
      {
        const StageTimer search_timer(Stage::kSearch);
        std::shared_lock<std::shared_mutex> lock(bm25_mu_);
        chunks = bm25_->num_chunks();
        fetch = std::min(fetch, chunks);
        found = bm25_->Search(queries[q], static_cast<int>(fetch), [&](ChunkId c) {
          return !excluded.empty() && excluded.count(bm25_->doc_index(c)) > 0;
        });
      }
      const bool may_hold_more = static_cast<int64_t>(found.size()) == fetch && fetch < chunks;
      const float last = found.empty() ? 0.0f : -found.back().second;
      std::vector<ChunkId> ids;
      for (const auto& f : found) ids.push_back(f.first);
      RAG_ASSIGN_OR_RETURN(std::vector<ChunkRecord> records, store_->GetChunks(ids));
      std::vector<Neighbour> candidates;
      candidates.reserve(records.size());
      for (size_t j = 0; j < records.size(); ++j) {
        ChunkRecord& rec = records[j];
        candidates.push_back({rec.id, std::move(rec.doc_id), rec.offset, std::move(rec.tokens),
                              std::move(rec.continuation), -found[j].second});
      }
      std::sort(candidates.begin(), candidates.end(), ChunkNeighbourOrder());
      if (MustFetchMore(candidates, k, last, may_hold_more)) continue;
      KeepFirst(&candidates, k);
      results[q] = std::move(candidates);
      break;
    }
  }
  return results;
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
  if (options.method != "dense" && options.method != "bm25") {
    return absl::InvalidArgumentError("method must be \"dense\" or \"bm25\", got \"" + options.method + "\"");
  }
  if (queries.empty()) return std::vector<std::vector<Neighbour>>();
  if (options.method == "bm25") return SearchBm25(queries, options);
  std::vector<float> embeddings;
  {
    const StageTimer timer(Stage::kEmbed);
    RAG_RETURN_IF_ERROR(embedder_->Embed(queries, &embeddings));
  }
  return SearchEmbeddings(embeddings.data(), static_cast<int64_t>(queries.size()), options);
}

absl::StatusOr<std::vector<std::vector<Neighbour>>> Retriever::SearchEmbeddings(const float* embeddings, int64_t nq,
                                                                                const SearchOptions& options) const {
  if (options.k < 1 || options.k > VectorIndex::kMaxK) {
    return absl::InvalidArgumentError("k must be in [1, " + std::to_string(VectorIndex::kMaxK) + "], got " +
                                      std::to_string(options.k));
  }
  if (nq < 0 || (nq > 0 && embeddings == nullptr)) return absl::InvalidArgumentError("bad embeddings to search");
  // Reading the neighbours' records; VectorIndex::Search times itself.
  const StageTimer timer(Stage::kDatastore);
  std::vector<std::vector<Neighbour>> results(static_cast<size_t>(nq));
  if (nq == 0) return results;
  const int64_t total = num_vectors();
  const std::unordered_set<std::string> excluded(options.exclude_doc_ids.begin(), options.exclude_doc_ids.end());
  const size_t k = static_cast<size_t>(options.k);
  const size_t dim = static_cast<size_t>(index_->dim());

  // Fetch k (2k when excluding) and double, searching again only the
  // queries whose top k is not settled yet (retriever/topk.h): fewer than k
  // eligible chunks, or the k-th distance tied with the last one fetched.
  // The cap is the index's size (then nothing is left unfetched) or kMaxK.
  const int64_t cap = std::min<int64_t>(total, VectorIndex::kMaxK);
  int64_t fetch = excluded.empty() ? options.k : 2 * static_cast<int64_t>(options.k);
  std::vector<int64_t> pending(static_cast<size_t>(nq));
  for (size_t q = 0; q < pending.size(); ++q) pending[q] = static_cast<int64_t>(q);
  std::vector<float> batch;
  while (!pending.empty()) {
    const int64_t f = std::min(fetch, cap);
    if (f <= 0) return results;
    const int64_t np = static_cast<int64_t>(pending.size());
    const float* qptr = embeddings;
    if (np != nq) {
      batch.resize(static_cast<size_t>(np) * dim);
      for (int64_t i = 0; i < np; ++i) {
        std::copy_n(embeddings + static_cast<size_t>(pending[static_cast<size_t>(i)]) * dim, dim,
                    batch.data() + static_cast<size_t>(i) * dim);
      }
      qptr = batch.data();
    }
    std::vector<float> distances;
    std::vector<int64_t> ids;
    {
      std::shared_lock<std::shared_mutex> lock(index_mu_);
      RAG_RETURN_IF_ERROR(index_->Search(qptr, np, static_cast<int>(f), options.nprobe, &distances, &ids));
    }
    std::vector<int64_t> still_pending;
    for (int64_t i = 0; i < np; ++i) {
      const int64_t q = pending[static_cast<size_t>(i)];
      std::vector<ChunkId> chunk_ids;
      std::vector<float> chunk_dist;
      for (int64_t j = 0; j < f; ++j) {
        const size_t at = static_cast<size_t>(i * f + j);
        if (ids[at] < 0) continue;
        chunk_ids.push_back(ids[at]);
        chunk_dist.push_back(distances[at]);
      }
      // Fewer than f results: the index (or the IVF lists probed) has no more.
      const bool may_hold_more = static_cast<int64_t>(chunk_ids.size()) == f && f < cap;
      const float last = chunk_dist.empty() ? 0.0f : *std::max_element(chunk_dist.begin(), chunk_dist.end());
      RAG_ASSIGN_OR_RETURN(std::vector<ChunkRecord> records, store_->GetChunks(chunk_ids));
      std::vector<Neighbour> candidates;
      candidates.reserve(records.size());
      for (size_t j = 0; j < records.size(); ++j) {
        if (excluded.count(records[j].doc_id)) continue;
        ChunkRecord& rec = records[j];
        candidates.push_back({rec.id, std::move(rec.doc_id), rec.offset, std::move(rec.tokens),
                              std::move(rec.continuation), chunk_dist[j]});
      }
      std::sort(candidates.begin(), candidates.end(), ChunkNeighbourOrder());
      if (MustFetchMore(candidates, k, last, may_hold_more)) {
        still_pending.push_back(q);
        continue;
      }
      KeepFirst(&candidates, k);
      results[static_cast<size_t>(q)] = std::move(candidates);
    }
    pending = std::move(still_pending);
    fetch = 2 * f;
  }
  return results;
}

}  // namespace rag::retriever

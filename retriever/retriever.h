// Nearest-neighbour chunks for texts or token sequences: embed, search the
// chunk index, fetch chunk + continuation from the chunk store. Excludes
// chosen documents with over-retrieval (fetch more, drop, keep k), as
// RETRO, Atlas and Megatron do against leakage. Thread-safe: Search may be
// called from many threads at once, also while AddDocument runs.
//
// A writable retriever (Open with writable = true) adds documents to the live
// index. The chunk store is the log: a document is durable once AddDocument
// has written it there, and the FAISS index, embeddings.f32 and the manifest
// are derived state that Checkpoint() saves. Opening a writable retriever
// first brings them up to date with the chunk store (embedding the chunks a
// crash left unindexed), so no acknowledged document is ever lost.
#pragma once

#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "lm/embedder.h"
#include "lm/tokenizer.h"
#include "retriever/bm25.h"
#include "retriever/chunk_store.h"
#include "retriever/index_dir.h"
#include "retriever/manifest.h"
#include "retriever/searcher.h"
#include "retriever/vector_index.h"

namespace rag::retriever {

struct Neighbour {
  ChunkId chunk_id = 0;
  std::string doc_id;
  int64_t offset = 0;                 // of the chunk in its document, in tokens
  std::vector<Token> tokens;          // the chunk
  std::vector<Token> continuation;    // the tokens after it in the document
  // dense: squared L2 between unit vectors (0 = same direction); bm25: minus
  // the BM25 score (smaller is still nearer).
  float distance = 0;
};

// Writes the neighbour's chunk then its continuation, at most `n` tokens, to
// `out` (RETRO's [N, F] neighbour); returns how many were written.
int64_t CopyNeighbourTokens(const Neighbour& neighbour, int64_t n, Token* out);

// The neighbour re-cut on the query that retrieved it, so that its [N, F]
// split falls where the query ends: when the neighbour's text (chunk then
// continuation) contains the query's last `min_match` tokens or more (all
// of a shorter query, which must then have at least min(4, min_match)
// tokens), the longest such match (the earliest of equals) ends the first `chunk` of the
// `n` tokens written to `out` (left-padded with `pad`), and the text after it
// fills the rest (right-padded). Then F starts with what followed the
// matching text, position-aligned with what follows the query, which a
// stored chunk boundary only is by chance (a prompt or fact rarely starts a
// chunk). Returns the match length; 0 (no match, or min_match < 1) writes
// CopyNeighbourTokens's layout, padded with `pad`.
int64_t AlignNeighbourTokens(const Neighbour& neighbour, const std::vector<Token>& query, int64_t min_match,
                             int64_t chunk, int64_t n, Token pad, Token* out);

// RETRO's leakage filter (retriever/leakage.h) for one neighbour: true when
// its text, chunk then continuation, shares a run of `run` tokens with
// `target`, the chunk it would help predict. All of the text, since an
// aligned neighbour may show any of it.
bool NeighbourLeaks(const Neighbour& neighbour, const std::vector<Token>& target, int64_t run);

// A chunk search's defaults: SearchRequest's k and nprobe when 0, and every
// command and builder option that searches the chunk index.
inline constexpr int kDefaultSearchK = 10;
inline constexpr int kDefaultNprobe = 16;

struct SearchOptions {
  int k = kDefaultSearchK;                   // neighbours per query. Default: 10
  int nprobe = kDefaultNprobe;               // IVF lists visited; ignored by Flat. Default: 16
  std::vector<std::string> exclude_doc_ids;  // never returned. Default: none
  // "dense": the embedder and the FAISS index; "bm25": Okapi BM25 over the
  // chunks' token ids (retriever/bm25.h; built in memory on first use).
  // Default: "dense"
  std::string method = "dense";
};

class Retriever : public ChunkSearcher {
 public:
  // Opens INDEX_DIR read-only. `embedder` (not owned, must outlive the
  // retriever) must be the embedding function the index was built with, and
  // `model_hash` / `tokenizer_hash` the served model's: otherwise
  // FailedPrecondition naming both hashes, since neighbours from another
  // model's embedding space are silently wrong.
  // `writable` opens the chunk store for writing (one process at a time:
  // RocksDB's lock) and the vector index in memory.
  static absl::StatusOr<std::unique_ptr<Retriever>> Open(const std::string& index_dir, lm::Embedder* embedder,
                                                         const std::string& model_hash,
                                                         const std::string& tokenizer_hash, bool writable = false);
  ~Retriever() override;

  // Neighbours for each query (token ids), nearest first; fewer than k only
  // when the index has fewer eligible chunks. The top k is canonical
  // (retriever/topk.h): equal distances are ordered by (doc_id, offset), and
  // a tie at the k-th place is fetched whole before the cut, so the result
  // does not depend on the order documents were added, and N shards' lists
  // merged by the same order equal one index's (ties running past kMaxK
  // candidates excepted). InvalidArgument for k outside [1, kMaxK] or an
  // empty query.
  absl::StatusOr<std::vector<std::vector<Neighbour>>> Search(const std::vector<std::vector<Token>>& queries,
                                                             const SearchOptions& options) const override;
  // The same for nq query vectors already embedded ([nq, dim] float32,
  // row-major, the embedder's space), e.g. the rows of embeddings.f32 when
  // RETRO precomputes the neighbours of every indexed chunk. Same order.
  absl::StatusOr<std::vector<std::vector<Neighbour>>> SearchEmbeddings(const float* embeddings, int64_t nq,
                                                                       const SearchOptions& options) const override;
  int dim() const override { return dim_; }

  // Writable only. Stores the document (fsynced), embeds its chunks and adds
  // them to the vector index; on return the document is durable and
  // searchable. Returns its chunk ids. Errors as ChunkStore::AddDocument
  // (InvalidArgument, AlreadyExists), FailedPrecondition when read-only.
  // Adds are serialised (chunk ids must equal FAISS ids).
  absl::StatusOr<std::vector<ChunkId>> AddDocument(const std::string& doc_id, const std::vector<Token>& tokens,
                                                   const std::string& metadata_json = "{}");

  // Writable only. Appends the new embeddings to embeddings.f32 and saves
  // the vector index, then the manifest (counts, checksums), each
  // atomically. A no-op when nothing was added since the last checkpoint.
  absl::Status Checkpoint();

  // A copy of the manifest as of the last checkpoint.
  Manifest manifest() const;
  const ChunkStore& chunk_store() const { return *store_; }
  // Vectors searchable now.
  int64_t num_vectors() const;
  bool writable() const { return writable_; }
  const std::string& index_dir() const { return dir_->path(); }
  // The directory as opened: its manifest as read then, its file names and
  // the parts the retriever does not hold (counts, datastore).
  const IndexDir& dir() const { return *dir_; }

 private:
  Retriever() = default;
  // Embeds chunks [from, to) of the store and returns their vectors.
  absl::Status EmbedStoredChunks(ChunkId from, ChunkId to, std::vector<float>* out) const;
  // Indexes the chunks the store holds beyond the vector index (left by a
  // crash or a failed add). Caller holds add_mu_.
  absl::Status CatchUpLocked();
  // The BM25 index, built from the chunk store on first use.
  absl::Status EnsureBm25() const;
  // Adds the stored chunks bm25_ lacks. Caller holds bm25_mu_ exclusively.
  absl::Status SyncBm25Locked() const;
  absl::StatusOr<std::vector<std::vector<Neighbour>>> SearchBm25(const std::vector<std::vector<Token>>& queries,
                                                                 const SearchOptions& options) const;
  absl::Status CheckpointLocked();

  bool writable_ = false;
  int dim_ = 0;  // the manifest's
  lm::Embedder* embedder_ = nullptr;
  // Owns the chunk store and the vector index; store_ and index_ point into it.
  std::unique_ptr<IndexDir> dir_;
  ChunkStore* store_ = nullptr;

  // Serialises AddDocument, CatchUp and Checkpoint.
  mutable std::mutex add_mu_;
  Manifest manifest_;                 // guarded by add_mu_
  int64_t persisted_rows_ = 0;        // rows of embeddings.f32 on disk; add_mu_
  std::vector<float> pending_rows_;   // embeddings added since; add_mu_

  // FAISS indexes are not safe to search while adding: Search holds this
  // shared, AddDocument exclusive for the FAISS add only.
  mutable std::shared_mutex index_mu_;
  VectorIndex* index_ = nullptr;  // owned by dir_

  // BM25 is built on first use (a dense-only server pays nothing) and kept
  // in step with the store by AddDocument. Search holds this shared.
  mutable std::shared_mutex bm25_mu_;
  mutable std::unique_ptr<Bm25Index> bm25_;
};

}  // namespace rag::retriever

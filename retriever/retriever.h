// Nearest-neighbour chunks for texts or token sequences: embed, search the
// chunk index, fetch chunk + continuation from the chunk store. Excludes
// chosen documents with over-retrieval (fetch more, drop, keep k), as
// RETRO, Atlas and Megatron do against leakage. Thread-safe: Search may be
// called from many threads at once.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "lm/embedder.h"
#include "lm/tokenizer.h"
#include "retriever/chunk_store.h"
#include "retriever/manifest.h"
#include "retriever/vector_index.h"

namespace rag::retriever {

struct Neighbour {
  ChunkId chunk_id = 0;
  std::string doc_id;
  int64_t offset = 0;                 // of the chunk in its document, in tokens
  std::vector<Token> tokens;          // the chunk
  std::vector<Token> continuation;    // the tokens after it in the document
  float distance = 0;                 // squared L2 between unit vectors (0 = same direction)
};

struct SearchOptions {
  int k = 10;                                // neighbours per query. Default: 10
  int nprobe = 16;                           // IVF lists visited; ignored by Flat. Default: 16
  std::vector<std::string> exclude_doc_ids;  // never returned. Default: none
};

class Retriever {
 public:
  // Opens INDEX_DIR read-only. `embedder` (not owned, must outlive the
  // retriever) must be the embedding function the index was built with, and
  // `model_hash` / `tokenizer_hash` the served model's: otherwise
  // FailedPrecondition naming both hashes, since neighbours from another
  // model's embedding space are silently wrong.
  static absl::StatusOr<std::unique_ptr<Retriever>> Open(const std::string& index_dir, lm::Embedder* embedder,
                                                         const std::string& model_hash,
                                                         const std::string& tokenizer_hash);

  // Neighbours for each query (token ids), nearest first; fewer than k only
  // when the index has fewer eligible chunks. InvalidArgument for k outside
  // [1, kMaxK] or an empty query.
  absl::StatusOr<std::vector<std::vector<Neighbour>>> Search(const std::vector<std::vector<Token>>& queries,
                                                             const SearchOptions& options) const;

  const Manifest& manifest() const { return manifest_; }
  const ChunkStore& chunk_store() const { return *store_; }
  const VectorIndex& index() const { return *index_; }

 private:
  Retriever() = default;
  Manifest manifest_;
  lm::Embedder* embedder_ = nullptr;
  std::unique_ptr<ChunkStore> store_;
  std::unique_ptr<VectorIndex> index_;
};

}  // namespace rag::retriever

// One finished index directory (layout in retriever/manifest.h), as
// LevelDB's DB::Open owns its directory: the one place that reads its
// manifest, joins its file names, opens its parts and checks them against
// the manifest and against the caller's model, tokenizer and embedder.
// Retriever, the engine and the CLI's count and validate open an index only
// through it. Thread-compatible: const methods may be called from many
// threads; the parts it hands out have their own rules.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "lm/embedder.h"
#include "lm/tokenizer.h"
#include "retriever/chunk_store.h"
#include "retriever/datastore.h"
#include "retriever/manifest.h"
#include "retriever/token_counts.h"
#include "retriever/vector_index.h"

namespace rag::retriever {

struct IndexDirOptions {
  // Open chunks.rocksdb (read-only unless `writable`). Default: no
  bool chunk_store = false;
  // Open chunks.faiss and check it and the store against the manifest's
  // counts; needs `chunk_store`. Default: no
  bool vectors = false;
  // The chunk store for writing (one process at a time: RocksDB's lock).
  // Default: read-only
  bool writable = false;
  // When set, `model_hash` / `tokenizer_hash` must be the manifest's:
  // neighbours from another model's embedding space are silently wrong.
  // Default: unchecked
  bool check_model = false;
  std::string model_hash;
  std::string tokenizer_hash;
  // When set (not owned), must be the embedder the index was built with
  // (hash and dim). Default: unchecked
  const lm::Embedder* embedder = nullptr;
};

class IndexDir {
 public:
  // Reads and validates INDEX_DIR/manifest.json (Manifest::Load's errors),
  // then checks and opens what `options` asks for, in this order:
  // FailedPrecondition naming both sides for another model, tokenizer or
  // embedder; the chunk store's and the FAISS index's errors annotated with
  // "opening index 'PATH'"; DataLoss when their counts do not match the
  // manifest (documents added after the build make them larger, never
  // smaller, and the index never holds more vectors than the store chunks).
  static absl::StatusOr<std::unique_ptr<IndexDir>> Open(const std::string& path, const IndexDirOptions& options);

  const std::string& path() const { return path_; }
  // The manifest as read at open (a live index's later checkpoints do not
  // change this copy).
  const Manifest& manifest() const { return manifest_; }
  // PATH/name, for one of the file names of manifest.h.
  std::string File(const std::string& name) const;

  // The parts Open opened: null when not asked for.
  ChunkStore* chunk_store() const { return store_.get(); }
  VectorIndex* vectors() const { return vectors_.get(); }

  // Opens chunks.rocksdb with the manifest's chunking, without annotating
  // its errors (for callers that report them as they are).
  absl::StatusOr<std::unique_ptr<ChunkStore>> OpenChunkStore(bool writable) const;
  // Opens chunks.faiss, errors unannotated.
  absl::StatusOr<std::unique_ptr<VectorIndex>> OpenVectors() const;

  // Whether PATH/file hashes to the checksum the manifest records for it
  // (false when it records none); the hashing error when unreadable.
  absl::StatusOr<bool> MatchesManifest(const std::string& file) const;

  // The tokenizer to encode text for this index: PATH/tokenizer.json, or
  // MODEL_DIR/tokenizer.json when `model_dir` is not empty (indexes built
  // before the index kept a copy). FailedPrecondition when it is not the
  // one the manifest records; the read error annotated with a hint to pass
  // --model when there is none.
  absl::StatusOr<lm::Tokenizer> LoadTokenizer(const std::string& model_dir) const;

  // The counts over every document of `store` (this index's chunk store):
  // its counts.sa (written by the build) when that covers all of them;
  // otherwise (documents added since, or no counts.sa) a suffix array built
  // afresh from `store`. Errors: a corrupt counts.sa (DataLoss) or the
  // store's read errors.
  absl::StatusOr<IndexTokenCounts> LoadTokenCounts(const ChunkStore& store) const;

  // Opens PATH/datastore when it exists: null when it does not.
  // FailedPrecondition when one of its files is not the one the manifest
  // records (a datastore copied in from another index: another model's
  // hidden states) or its keys are not `dim` wide; Datastore::Open's errors
  // annotated with the index directory. Documents of added.log that
  // `store` (this index's chunk store) does not hold are left out.
  absl::StatusOr<std::unique_ptr<Datastore>> OpenDatastore(const ChunkStore& store, int dim) const;

 private:
  IndexDir() = default;

  std::string path_;
  Manifest manifest_;
  std::unique_ptr<ChunkStore> store_;
  std::unique_ptr<VectorIndex> vectors_;
};

}  // namespace rag::retriever

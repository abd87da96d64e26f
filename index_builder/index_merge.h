// `rag merge`: N shard indexes built on one trained index (`rag build
// --trained T --shard i/N`) into one index directory that opens, serves and
// validates like any built index and answers as an unsharded build on T
// would. Not thread-safe; one merge per output directory.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "retriever/manifest.h"

namespace rag::index_builder {

struct MergeOptions {
  std::string out_dir;         // the merged index directory
  bool overwrite = false;      // replace an existing out_dir. Default: false
  bool show_progress = true;   // Default: true
};

// Loads the shards' manifests and checks that they can be merged, reading
// no index data and writing nothing. Returns the manifests ordered by
// shard_id. FailedPrecondition naming the shard's path and the field when a
// shard's trained_index_hash is empty (trained on its own) or differs from
// the first's, when model_hash, tokenizer_hash, embedder_hash,
// chunk_tokens, continuation_tokens, dim, index_factory or shard_count
// differ, when it holds documents added after its build (documents_added),
// when some shards have a datastore and others not, or their datastores
// were not built on one trained key index; InvalidArgument when the shards
// do not cover 0 .. N-1 exactly once (a duplicate or missing shard_id, or
// not N directories); the manifest's own error (NotFound, DataLoss) for a
// directory that is not a finished index.
absl::StatusOr<std::vector<retriever::Manifest>> CheckShardsMergeable(const std::vector<std::string>& shard_dirs);

// Merges the shards (any order; merged in shard_id order) into
// options.out_dir, after CheckShardsMergeable and before writing a byte:
// chunk store rewritten (shard 0's documents, then shard 1's, ...: chunk ids
// and document numbers shifted, equal to the merged FAISS ids), FAISS
// indexes merged with VectorIndex::MergeFrom, embeddings.f32 concatenated,
// counts.sa rebuilt, tokenizer.json copied, the datastore (when every shard
// has one) concatenated with shifted document numbers and its key indexes
// merged, and manifest.json written last with the summed counts and fresh
// checksums (shard 0 of 1). Works in OUT.partial and renames it into place,
// so a crash leaves no half index. FailedPrecondition when out_dir exists
// and overwrite is off, or is one of the shards.
absl::StatusOr<retriever::Manifest> MergeShards(const std::vector<std::string>& shard_dirs,
                                                const MergeOptions& options);

}  // namespace rag::index_builder

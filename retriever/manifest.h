// manifest.json of an index directory: what was built, from what, with
// which model, and checksums of the files. Written last by the builder, so an
// index directory without one is not an index. Its "self_checksum" (XXH3 of
// the compact JSON of every other field) makes any damaged byte DataLoss at
// load; manifests written before it existed have none and still load.
// Plain value type.
//
// Index directory layout (format version 1):
//   manifest.json    this record
//   chunks.rocksdb/  documents' tokens and the chunk -> (document, offset) map
//   chunks.faiss     FAISS index over the chunk embeddings (VectorIndex file)
//   embeddings.f32   the chunk embeddings, float32 row-major [chunks, dim],
//                    kept for `rag validate` (exact recall) and for rebuilding
//                    with another factory without re-embedding
//   datastore/       optional kNN-LM datastore (retriever/datastore.h)
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "absl/status/statusor.h"

namespace rag::retriever {

inline constexpr int kManifestFormatVersion = 1;
inline constexpr char kManifestFile[] = "manifest.json";
inline constexpr char kChunkStoreDir[] = "chunks.rocksdb";
inline constexpr char kChunkIndexFile[] = "chunks.faiss";
inline constexpr char kEmbeddingsFile[] = "embeddings.f32";
// A copy of the model's tokenizer.json: what `rag count` encodes text with.
inline constexpr char kIndexTokenizerFile[] = "tokenizer.json";
// kNN-LM datastore (rag build --datastore): keys.f16, values.i32, docs.i32,
// keys.faiss (retriever/datastore.h).
inline constexpr char kDatastoreDir[] = "datastore";

// The current time as Manifest::created_at records it (ISO 8601, UTC).
std::string NowUtc();

struct Manifest {
  int format_version = kManifestFormatVersion;
  std::string created_by;         // "rag <version>"
  std::string created_at;         // UTC, ISO 8601
  // Sharding (retriever/shard.h): this index holds the documents with
  // ShardOfDocument(id, shard_count) == shard_id; 0 of 1 = the whole corpus.
  int shard_id = 0;
  int shard_count = 1;

  // Corpus
  std::string corpus_path;
  int64_t documents = 0;
  int64_t tokens = 0;
  int64_t bytes = 0;
  // Documents added to the live index (Index.AddDocuments) after the build;
  // included in `documents`, `tokens` and `chunks`, not in `bytes`.
  int64_t documents_added = 0;

  // Chunking (RETRO)
  int chunk_tokens = 64;
  int continuation_tokens = 64;
  int64_t chunks = 0;

  // Model and embedding
  std::string model_hash;         // content hash of the LM served with this index
  std::string tokenizer_hash;
  std::string model_architecture;  // "transformer_lm", "gpt2", "gpt_neox"; "" in older manifests
  int64_t model_parameters = 0;    // 0 in older manifests
  std::string embedder;           // description of the embedding function
  std::string embedder_hash;
  int dim = 0;

  // FAISS
  std::string requested_factory;  // "" = default for the corpus size
  std::string index_factory;      // what was built
  std::string factory_note;       // why it differs from the request, if it does
  std::string faiss_version;
  int64_t vectors = 0;
  // XXH3-64 (16 hex digits) of the trained, empty FAISS index the vectors
  // were added to (`rag build --train-only`, then `--trained`): shards that
  // share it share coarse quantizer and codebooks, so their searches and a
  // merge equal one index's. "" when the index was trained by its own build.
  std::string trained_index_hash;

  // kNN-LM datastore (datastore/), when built: one key per token of the
  // documents it covers ("all", or the model's "train" split).
  int64_t datastore_keys = 0;
  std::string datastore_factory;
  std::string datastore_split;
  // XXH3-64 hex of the trained, empty key index the keys were added to
  // (`rag build --train-only --datastore`, then `--trained`); "" when the
  // datastore trained its own.
  std::string datastore_trained_index_hash;

  std::map<std::string, std::string> checksums;  // file name -> XXH3 hex (datastore files as "datastore/<name>")

  std::string ToJson() const;
  static absl::StatusOr<Manifest> FromJson(const std::string& json_text);

  // Reads INDEX_DIR/manifest.json. NotFound when there is none (no index, or
  // a build that never finished), DataLoss when malformed,
  // FailedPrecondition for a newer format version than this binary reads.
  static absl::StatusOr<Manifest> Load(const std::string& index_dir);
  // Writes INDEX_DIR/manifest.json atomically.
  absl::Status Save(const std::string& index_dir) const;
};

}  // namespace rag::retriever

// `rag build --train-only`: the FAISS index trained once for every shard of
// a corpus (FAISS's recipe: train once, add per shard), and the record of
// what it was trained for. Shard builds (`rag build --trained T --shard i/N`)
// add their vectors to copies of it, so the shards share coarse quantizer
// and codebooks and their merged answers equal one index's. Not
// thread-safe; one training per output directory.
//
// Directory layout (TRAINED_DIR):
//   trained.json      TrainedIndexRecord (JSON), written last
//   chunks.faiss      the trained, empty chunk index (VectorIndex file)
//   datastore.faiss   with --datastore: the trained, empty key index
// Written in TRAINED_DIR.partial and renamed into place, so a crash never
// leaves a directory that looks whole.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/document.h"
#include "lm/embedder.h"
#include "lm/language_model.h"
#include "lm/tokenizer.h"

namespace rag::index_builder {

inline constexpr char kTrainedRecordFile[] = "trained.json";
inline constexpr char kTrainedChunkIndexFile[] = "chunks.faiss";
inline constexpr char kTrainedDatastoreIndexFile[] = "datastore.faiss";
inline constexpr int kTrainedFormatVersion = 1;

// trained.json. Plain value type.
struct TrainedIndexRecord {
  int format_version = kTrainedFormatVersion;
  std::string created_at;   // UTC, ISO 8601
  std::string corpus_path;  // informational
  // What a build must share to add to this index.
  std::string model_hash;
  std::string tokenizer_hash;
  std::string embedder;  // description, informational
  std::string embedder_hash;
  int dim = 0;
  int chunk_tokens = 64;
  int continuation_tokens = 64;
  // The whole corpus's chunk count: the factory was chosen for it, as one
  // unsharded `rag build` would choose it.
  int64_t chunks = 0;
  std::string requested_factory;  // "" = the default for `chunks`
  std::string index_factory;      // what chunks.faiss holds
  std::string factory_note;       // why it differs from the request, if it does
  int64_t sample_rows = 0;        // chunks embedded and trained on (0 for Flat)
  uint64_t seed = 1234;
  std::string trained_index_hash;  // XXH3-64 hex of chunks.faiss (as Manifest::checksums)

  // With --datastore: the kNN-LM key index, over hidden states of width
  // datastore_dim, chosen for datastore_keys keys (one per corpus token).
  bool datastore = false;
  int datastore_dim = 0;
  int64_t datastore_keys = 0;
  std::string datastore_requested_factory;
  std::string datastore_factory;
  std::string datastore_factory_note;
  int64_t datastore_sample_rows = 0;
  std::string datastore_trained_hash;  // XXH3-64 hex of datastore.faiss

  std::string ToJson() const;
  // DataLoss when malformed; FailedPrecondition for a newer format version.
  static absl::StatusOr<TrainedIndexRecord> FromJson(const std::string& text);
  // Reads TRAINED_DIR/trained.json and checks that the index files it names
  // still have the recorded hashes. NotFound without trained.json (not a
  // trained-index directory, or a training that never finished); DataLoss
  // when a file's hash differs.
  static absl::StatusOr<TrainedIndexRecord> Load(const std::string& dir);
};

struct TrainOnlyOptions {
  std::string out_dir;              // TRAINED_DIR
  std::string corpus_path;          // recorded
  std::string index_factory;        // "" = chosen from the whole corpus's chunk count. Default: ""
  int chunk_tokens = 64;            // Default: 64 (RETRO)
  int continuation_tokens = 64;     // Default: 64 (RETRO)
  int64_t embed_batch = 64;         // chunks per embedding call. Default: 64
  uint64_t seed = 1234;             // the training samples. Default: 1234
  bool overwrite = false;           // replace an existing TRAINED_DIR. Default: false
  bool show_progress = true;        // Default: true

  // Also train the kNN-LM datastore's key index on the hidden states of a
  // seeded sample of token positions of the documents in datastore_doc_ids
  // (all when empty), computed by `model` (required then; not owned).
  // Default: off
  bool datastore = false;
  lm::LanguageModel* model = nullptr;
  std::string datastore_factory;               // "" = chosen from the key count
  std::vector<std::string> datastore_doc_ids;  // subset of the corpus; empty = all
};

// Trains the index for `documents`, the WHOLE corpus: tokenizes and chunks
// every document (so the factory is VectorIndex::DefaultFactory /
// AdaptFactory of the whole corpus's chunk count, as one `rag build` would
// choose it), embeds only the chunks of the sample VectorIndex::
// TrainingSampleSize and SampleRows pick (seeded), trains, and saves the
// empty trained index with its record. With options.datastore, the key
// index likewise (retriever::PlanDatastoreIndex's factory and sample size;
// keys rounded to fp16 as the datastore stores them). FailedPrecondition
// when out_dir exists and overwrite is off; Cancelled when `*stop` is raised
// (nothing is kept: rerun).
absl::StatusOr<TrainedIndexRecord> TrainIndexOnly(const std::vector<Document>& documents,
                                                  const lm::Tokenizer& tokenizer, lm::Embedder& embedder,
                                                  const std::string& model_hash, const TrainOnlyOptions& options,
                                                  const std::atomic<bool>* stop = nullptr);

// What a build brings to a trained index, checked by CheckTrainedMatches.
struct BuildIdentity {
  std::string model_hash;
  std::string tokenizer_hash;
  std::string embedder_hash;
  int dim = 0;
  int chunk_tokens = 64;
  int continuation_tokens = 64;
  std::string index_factory;      // --index-factory; "" = take the trained one's
  bool datastore = false;         // --datastore
  std::string datastore_factory;  // --datastore-factory; "" = take the trained one's
};

// OK when a build with `build` may add its vectors to `trained`; otherwise
// FailedPrecondition naming the first field that differs and both values
// (model_hash, tokenizer_hash, embedder_hash, dim, chunk_tokens,
// continuation_tokens, index_factory: refused unless "" or the trained
// one's requested or built factory, datastore: --datastore needs a trained
// key index, datastore_factory as index_factory).
absl::Status CheckTrainedMatches(const TrainedIndexRecord& trained, const BuildIdentity& build);

}  // namespace rag::index_builder

// `rag build`: corpus -> tokens and chunks in RocksDB -> chunk embeddings ->
// FAISS index -> manifest. The build runs in INDEX_DIR.partial and is
// renamed into place after the manifest is written, so a crash never leaves
// a half index that looks whole. A killed build rerun with the same
// arguments resumes (documents already stored are skipped, embedding goes on
// from its last finished batch) and ends identical to an uninterrupted one.
// Memory beyond the caller's documents, the embedder and the chunk store's
// RocksDB buffers: one document's tokens, one embedding batch, and in stage
// 3 the FAISS index, one add batch and the training sample (all vectors when
// there are fewer than VectorIndex::TrainingSampleSize), each read from
// embeddings.f32 by row; the file is never read whole for its own sake.
// Not thread-safe; one build per output directory.
#pragma once

#include <atomic>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/document.h"
#include "lm/embedder.h"
#include "lm/language_model.h"
#include "lm/tokenizer.h"
#include "retriever/manifest.h"
#include "retriever/shard.h"

namespace rag::index_builder {

// Wall-clock seconds of the stages of one BuildIndex call (bench_builder).
// A resumed build's embed stage covers only the batches it computed.
struct BuildTimings {
  double store_s = 0;  // stage 1: tokenise and store the documents
  double embed_s = 0;  // stage 2: read chunks, embed, append to embeddings.f32
  double index_s = 0;  // stage 3: FAISS train, add, save, checksums
};

struct BuildOptions {
  std::string out_dir;
  std::string corpus_path;            // recorded in the manifest
  std::string model_architecture;     // recorded in the manifest: "transformer_lm", "gpt2", "gpt_neox"
  int64_t model_parameters = 0;       // recorded in the manifest
  std::string index_factory;          // any FAISS factory string; "" = chosen from the corpus size
  int chunk_tokens = 64;              // Default: 64 (RETRO)
  int continuation_tokens = 64;       // Default: 64 (RETRO)
  // Chunks per embedding batch (one forward pass; the resume unit).
  // Default: 16: on 2 cores as fast as 64 (docs/results.md, issue 24) and the
  // forward's working set, which sets the build's peak memory, 34 MB smaller.
  int64_t embed_batch = 16;
  // Vectors per FAISS add call, read from embeddings.f32 at a time: the
  // batch and FAISS's residuals and codes of it are the adding stage's
  // memory, which set Brown's build peak at 16384 (docs/results.md, issue
  // 24). An IVF's lists do not depend on it. Default: 4096
  int64_t add_batch = 4096;
  uint64_t seed = 1234;               // FAISS training sample. Default: 1234
  bool overwrite = false;             // replace an existing index at out_dir
  bool show_progress = true;
  BuildTimings* timings = nullptr;    // when set, receives the stage times (not owned). Default: nullptr

  // kNN-LM datastore (`rag build --datastore`, INDEX_DIR/datastore/): one
  // key per token of the documents whose ids are in datastore_doc_ids (all
  // documents when empty), computed by `model` (required then: the model the
  // index is served with; not owned). Default: off
  bool datastore = false;
  lm::LanguageModel* model = nullptr;
  std::string datastore_factory;                // "" = chosen from the key count
  std::vector<std::string> datastore_doc_ids;   // subset of the corpus; empty = all
  std::string datastore_split = "all";          // recorded in the manifest: "all" or "train"

  // The shard this build makes (`rag build --shard`): every document must
  // belong to it (KeepShardDocuments), and the manifest records it.
  // Default: 0/1, the whole corpus
  retriever::ShardSpec shard;

  // A trained index from `rag build --train-only` (its directory): stage 3
  // adds the vectors to a copy of it instead of training, and with
  // `datastore` the keys go into a copy of its key index, so that every
  // shard shares one training. Refused (FailedPrecondition, naming the
  // field) when its model, tokenizer, embedder, dim or chunking differ from
  // this build's, or index_factory / datastore_factory is given and differs.
  // Default: "" (train here)
  std::string trained_dir;
};

// Drops the documents that another shard owns (retriever::ShardOfDocument),
// keeping the order of the rest.
void KeepShardDocuments(const retriever::ShardSpec& shard, std::vector<Document>* documents);

// Builds the index. `model_hash` and `tokenizer_hash` identify the model the
// index will be served with (recorded in the manifest). Cancelled when
// `*stop` is raised (rerun to resume); FailedPrecondition when out_dir holds
// an index and overwrite is off, or when a partial build from other
// arguments is in the way.
absl::StatusOr<retriever::Manifest> BuildIndex(const std::vector<Document>& documents, const lm::Tokenizer& tokenizer,
                                               lm::Embedder& embedder, const std::string& model_hash,
                                               const BuildOptions& options, const std::atomic<bool>* stop = nullptr);

}  // namespace rag::index_builder

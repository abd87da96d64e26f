#include "retriever/index_dir.h"

#include <chrono>
#include <filesystem>
#include <utility>

#include "common/file_util.h"
#include "common/status.h"

namespace rag::retriever {
namespace fs = std::filesystem;

absl::StatusOr<std::unique_ptr<IndexDir>> IndexDir::Open(const std::string& path, const IndexDirOptions& options) {
  std::unique_ptr<IndexDir> d(new IndexDir());
  d->path_ = path;
  RAG_ASSIGN_OR_RETURN(d->manifest_, Manifest::Load(path));
  const Manifest& m = d->manifest_;
  if (options.check_model && (m.model_hash != options.model_hash || m.tokenizer_hash != options.tokenizer_hash)) {
    return absl::FailedPreconditionError(
        "index '" + path + "' was built with model " + m.model_hash + " (tokenizer " + m.tokenizer_hash +
        ") but the served model is " + options.model_hash + " (tokenizer " + options.tokenizer_hash +
        "); rebuild the index with this model");
  }
  const lm::Embedder* embedder = options.embedder;
  if (embedder != nullptr && (m.embedder_hash != embedder->hash() || m.dim != embedder->dim())) {
    return absl::FailedPreconditionError("index '" + path + "' was built with embedder " + m.embedder + " (" +
                                         m.embedder_hash + ", dim " + std::to_string(m.dim) +
                                         ") but the embedder given is " + embedder->description() + " (" +
                                         embedder->hash() + ", dim " + std::to_string(embedder->dim()) + ")");
  }
  if (options.chunk_store) {
    auto store = d->OpenChunkStore(options.writable);
    if (!store.ok()) return Annotate(store.status(), "opening index '" + path + "'");
    d->store_ = std::move(*store);
  }
  if (options.vectors) {
    if (d->store_ == nullptr) return absl::InvalidArgumentError("IndexDir: the vectors need the chunk store");
    auto index = d->OpenVectors();
    if (!index.ok()) return Annotate(index.status(), "opening index '" + path + "'");
    d->vectors_ = std::move(*index);
    // Documents added after the build make the store (and, after a
    // checkpoint, the index) larger than the manifest; never smaller.
    const int64_t chunks = d->store_->num_chunks();
    const int64_t vectors = d->vectors_->size();
    if (d->vectors_->dim() != m.dim || chunks < m.chunks || vectors < m.vectors || vectors > chunks) {
      return absl::DataLossError("index '" + path + "' does not match its manifest: " + std::to_string(vectors) +
                                 " vectors and " + std::to_string(chunks) + " chunks stored, manifest says " +
                                 std::to_string(m.vectors) + " and " + std::to_string(m.chunks));
    }
  }
  return d;
}

std::string IndexDir::File(const std::string& name) const { return (fs::path(path_) / name).string(); }

absl::StatusOr<std::unique_ptr<ChunkStore>> IndexDir::OpenChunkStore(bool writable) const {
  ChunkStoreOptions so;
  so.chunk_tokens = manifest_.chunk_tokens;
  so.continuation_tokens = manifest_.continuation_tokens;
  so.create_if_missing = false;
  so.read_only = !writable;
  return ChunkStore::Open(File(kChunkStoreDir), so);
}

absl::StatusOr<std::unique_ptr<VectorIndex>> IndexDir::OpenVectors() const {
  return VectorIndex::Open(File(kChunkIndexFile));
}

absl::StatusOr<bool> IndexDir::MatchesManifest(const std::string& file) const {
  RAG_ASSIGN_OR_RETURN(std::string sum, HashFileHex(File(file)));
  auto it = manifest_.checksums.find(file);
  return it != manifest_.checksums.end() && it->second == sum;
}

absl::StatusOr<lm::Tokenizer> IndexDir::LoadTokenizer(const std::string& model_dir) const {
  // A model directory names its tokenizer file as the index's copy does.
  const std::string tok_path =
      model_dir.empty() ? File(kIndexTokenizerFile) : (fs::path(model_dir) / kIndexTokenizerFile).string();
  auto tok_json = ReadFile(tok_path);
  if (!tok_json.ok()) {
    return Annotate(tok_json.status(),
                    "this index has no tokenizer.json (built before rag count "
                    "existed): pass --model MODEL_DIR");
  }
  RAG_ASSIGN_OR_RETURN(lm::Tokenizer tok, lm::Tokenizer::FromJson(*tok_json));
  if (tok.Hash() != manifest_.tokenizer_hash) {
    return absl::FailedPreconditionError("the tokenizer in '" + tok_path + "' is not the index's (hash " +
                                         tok.Hash() + ", the manifest says " + manifest_.tokenizer_hash + ")");
  }
  return tok;
}

absl::StatusOr<IndexTokenCounts> IndexDir::LoadTokenCounts(const ChunkStore& store) const {
  const std::string path = File(kTokenCountsFile);
  if (fs::exists(path)) {
    RAG_ASSIGN_OR_RETURN(TokenCounts loaded, TokenCounts::Load(path));
    // counts.sa covers the documents of the build only.
    if (loaded.documents() == store.num_documents()) return IndexTokenCounts{std::move(loaded), false, 0.0};
  }
  const auto t0 = std::chrono::steady_clock::now();
  RAG_ASSIGN_OR_RETURN(auto docs, DocumentTokens(store));
  RAG_ASSIGN_OR_RETURN(TokenCounts built, TokenCounts::Build(docs));
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return IndexTokenCounts{std::move(built), true, seconds};
}

absl::StatusOr<std::unique_ptr<Datastore>> IndexDir::OpenDatastore(const ChunkStore& store, int dim) const {
  // The datastore sits in the index directory, whose manifest (model and
  // tokenizer hashes) covers it.
  const std::string ds_dir = File(kDatastoreDir);
  if (!fs::exists(ds_dir)) return std::unique_ptr<Datastore>();
  // Its files must be the ones the manifest recorded: a datastore copied
  // in from another index (another model's hidden states) is refused.
  for (const char* f : {kDatastoreKeysFile, kDatastoreValuesFile, kDatastoreDocsFile, kDatastoreIndexFile}) {
    const std::string key = std::string(kDatastoreDir) + "/" + f;
    auto match = MatchesManifest(key);
    if (!match.ok() || !*match) {
      return absl::FailedPreconditionError("the datastore in '" + ds_dir +
                                           "' is not the one this index's manifest records (" + key +
                                           "); rebuild it with `rag build --datastore` for this model");
    }
  }
  DatastoreOpenOptions dso;
  const ChunkStore* s = &store;
  dso.keep_added = [s](const std::string& doc_id) { return s->HasDocument(doc_id); };
  auto ds = Datastore::Open(ds_dir, dso);
  if (!ds.ok()) return Annotate(ds.status(), "opening the datastore of '" + path_ + "'");
  if ((*ds)->dim() != dim) {
    return absl::FailedPreconditionError("the datastore of '" + path_ + "' has keys of dim " +
                                         std::to_string((*ds)->dim()) + " but the model's hidden states have " +
                                         std::to_string(dim));
  }
  return std::move(*ds);
}

}  // namespace rag::retriever

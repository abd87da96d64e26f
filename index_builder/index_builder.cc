#include "index_builder/index_builder.h"

#include <fcntl.h>
#include <malloc.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <unordered_set>

#include "common/file_util.h"
#include "common/progress.h"
#include "common/status.h"
#include "index_builder/datastore_builder.h"
#include "index_builder/trained_index.h"
#include "retriever/token_counts.h"
#include "retriever/chunk_store.h"
#include "retriever/vector_index.h"

namespace rag::index_builder {
namespace fs = std::filesystem;
using retriever::ChunkStore;
using retriever::ChunkStoreOptions;
using retriever::Manifest;
using retriever::VectorIndex;

namespace {

constexpr char kBuildArgsFile[] = "build_args.json";

// What must match for a partial build to be resumed: the corpus content,
// the model, the chunking and the factory.
std::string BuildFingerprint(const std::vector<Document>& docs, const lm::Tokenizer& tok, lm::Embedder& embedder,
                             const std::string& model_hash, const BuildOptions& o,
                             const TrainedIndexRecord* trained) {
  XXH3_state_t* st = XXH3_createState();
  XXH3_64bits_reset(st);
  for (const auto& d : docs) {
    XXH3_64bits_update(st, d.id.data(), d.id.size() + 0);
    XXH3_64bits_update(st, "\0", 1);
    XXH3_64bits_update(st, d.text.data(), d.text.size());
    XXH3_64bits_update(st, "\0", 1);
  }
  const uint64_t corpus = XXH3_64bits_digest(st);
  XXH3_freeState(st);
  nlohmann::json j = {{"corpus", corpus},
                      {"model", model_hash},
                      {"tokenizer", tok.Hash()},
                      {"embedder", embedder.hash()},
                      {"chunk_tokens", o.chunk_tokens},
                      {"continuation_tokens", o.continuation_tokens},
                      {"embed_batch", o.embed_batch},
                      {"index_factory", o.index_factory},
                      {"seed", o.seed}};
  if (o.shard.count != 1) j["shard"] = o.shard.ToString();
  // Another trained index means other vectors in every list: start over.
  if (trained != nullptr) {
    j["trained"] = {{"index", trained->trained_index_hash}, {"datastore", trained->datastore_trained_hash}};
  }
  if (o.datastore) {
    j["datastore"] = {{"factory", o.datastore_factory}, {"split", o.datastore_split}, {"docs", o.datastore_doc_ids}};
  }
  return j.dump();
}

double SecondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Hands the heap's free memory back to the OS between stages. The runtime
// keeps freed blocks in the heap (lm::ConfigureRuntime: a trainer step
// re-faulting its tensors is a third slower), so without this each stage's
// working set stays resident under the next one's and the build's peak is
// their sum, not their maximum.
void ReleaseFreedMemory() { malloc_trim(0); }

absl::Status CheckStop(const std::atomic<bool>* stop) {
  if (stop != nullptr && stop->load()) {
    return absl::CancelledError("build interrupted; rerun the same command to resume");
  }
  return absl::OkStatus();
}

// Stage 1: every document's tokens into the chunk store (skipping those a
// previous run stored: each document is one atomic write).
absl::Status StoreDocuments(const std::vector<Document>& docs, const lm::Tokenizer& tok, ChunkStore& store,
                            const BuildOptions& o, const std::atomic<bool>* stop) {
  size_t total = 0;
  for (const auto& d : docs) total += d.text.size();
  Progress progress("build: tokenize", static_cast<int64_t>(total), "bytes");
  size_t done = 0;
  for (const auto& d : docs) {
    RAG_RETURN_IF_ERROR(CheckStop(stop));
    if (!store.HasDocument(d.id)) {
      std::vector<retriever::Token> ids = tok.Encode(d.text);
      if (!ids.empty()) {
        nlohmann::json meta = {{"bytes", d.text.size()}};
        auto added = store.AddDocument(d.id, ids, meta.dump());
        if (!added.ok()) return Annotate(added.status(), "storing document '" + d.id + "'");
      }
    }
    done += d.text.size();
    if (o.show_progress) progress.Update(static_cast<int64_t>(done));
  }
  RAG_RETURN_IF_ERROR(store.Flush());
  if (o.show_progress) progress.Finish(std::to_string(store.num_chunks()) + " chunks");
  return absl::OkStatus();
}

// Stage 2: chunk embeddings appended to embeddings.f32 in fixed batches, so
// a resumed run cuts back to the last whole batch and recomputes exactly
// the batches an uninterrupted run would.
absl::Status EmbedChunks(ChunkStore& store, lm::Embedder& embedder, const std::string& path, const BuildOptions& o,
                         const std::atomic<bool>* stop) {
  const int64_t dim = embedder.dim();
  const int64_t row_bytes = dim * static_cast<int64_t>(sizeof(float));
  const int64_t total = store.num_chunks();
  int64_t rows = 0;
  if (fs::exists(path)) {
    rows = static_cast<int64_t>(fs::file_size(path)) / row_bytes;
    rows = std::min(total, rows - rows % o.embed_batch);
    fs::resize_file(path, static_cast<uintmax_t>(rows * row_bytes));
    if (rows > 0) std::fprintf(stderr, "build: resuming embedding at chunk %lld\n", static_cast<long long>(rows));
  }
  std::FILE* f = std::fopen(path.c_str(), "ab");
  if (f == nullptr) return absl::InternalError("opening '" + path + "' for append failed");
  Progress progress("build: embed", total, "chunks");
  absl::Status status;
  std::vector<std::vector<retriever::Token>> batch;
  std::vector<float> out;
  auto flush_batch = [&]() -> absl::Status {
    if (batch.empty()) return absl::OkStatus();
    RAG_RETURN_IF_ERROR(embedder.Embed(batch, &out));
    if (std::fwrite(out.data(), sizeof(float), out.size(), f) != out.size() || std::fflush(f) != 0) {
      return absl::InternalError("writing '" + path + "' failed (disk full?)");
    }
    rows += static_cast<int64_t>(batch.size());
    batch.clear();
    if (o.show_progress) progress.Update(rows);
    return CheckStop(stop);
  };
  absl::Status visit = store.ForEachChunk(rows, [&](const retriever::ChunkRecord& rec) {
    batch.push_back(rec.tokens);
    if (static_cast<int64_t>(batch.size()) == o.embed_batch) {
      status = flush_batch();
      if (!status.ok()) return false;
    }
    return true;
  });
  if (status.ok() && visit.ok()) status = flush_batch();
  if (::fsync(fileno(f)) != 0 && status.ok()) status = absl::InternalError("fsync '" + path + "' failed");
  std::fclose(f);
  RAG_RETURN_IF_ERROR(visit);
  RAG_RETURN_IF_ERROR(status);
  if (rows != total) {
    return absl::InternalError("embedded " + std::to_string(rows) + " chunks, expected " + std::to_string(total));
  }
  if (o.show_progress) progress.Finish();
  return absl::OkStatus();
}

// embeddings.f32 read by row number (pread), so that stage 3 holds one add
// batch or the training sample at a time, never the whole file.
class EmbeddingsFile {
 public:
  // DataLoss unless `path` holds exactly `rows` rows of `dim` floats.
  static absl::StatusOr<std::unique_ptr<EmbeddingsFile>> Open(const std::string& path, int64_t rows, int dim) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return absl::InternalError("opening '" + path + "': " + std::strerror(errno));
    std::unique_ptr<EmbeddingsFile> file(new EmbeddingsFile(path, fd, rows, dim));
    struct stat st {};
    if (::fstat(fd, &st) != 0) return absl::InternalError("stat '" + path + "': " + std::strerror(errno));
    if (static_cast<int64_t>(st.st_size) != rows * file->row_bytes_) {
      return absl::DataLossError("'" + path + "' has the wrong size");
    }
    return file;
  }
  ~EmbeddingsFile() { ::close(fd_); }
  EmbeddingsFile(const EmbeddingsFile&) = delete;
  EmbeddingsFile& operator=(const EmbeddingsFile&) = delete;

  // Reads rows [first, first + count) into `out` (count * dim floats).
  absl::Status Read(int64_t first, int64_t count, float* out) const {
    char* dst = reinterpret_cast<char*>(out);
    size_t left = static_cast<size_t>(count * row_bytes_);
    off_t offset = static_cast<off_t>(first * row_bytes_);
    while (left > 0) {
      const ssize_t got = ::pread(fd_, dst, left, offset);
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) return absl::InternalError("reading '" + path_ + "': " + std::strerror(errno));
      if (got == 0) return absl::DataLossError("'" + path_ + "' ended early (changed during the build?)");
      dst += got;
      left -= static_cast<size_t>(got);
      offset += got;
    }
    return absl::OkStatus();
  }

  int64_t rows() const { return rows_; }
  int dim() const { return dim_; }

 private:
  EmbeddingsFile(std::string path, int fd, int64_t rows, int dim)
      : path_(std::move(path)),
        fd_(fd),
        rows_(rows),
        dim_(dim),
        row_bytes_(dim * static_cast<int64_t>(sizeof(float))) {}

  std::string path_;
  int fd_;
  int64_t rows_;
  int dim_;
  int64_t row_bytes_;
};

// Trains `index` as VectorIndex::Train(<whole file>, n, seed) would, reading
// only the rows it samples (VectorIndex::TrainingSampleSize of them) and
// handing them over (TrainOnSample). The memory is the sample's, freed on
// return.
absl::Status TrainFromFile(const EmbeddingsFile& file, uint64_t seed, VectorIndex& index) {
  const int64_t n = file.rows();
  const size_t dim = static_cast<size_t>(file.dim());
  const int64_t m = index.TrainingSampleSize(n);
  std::vector<float> sample(static_cast<size_t>(m) * dim);
  if (m == n) {
    RAG_RETURN_IF_ERROR(file.Read(0, n, sample.data()));
  } else {
    const std::vector<int64_t> rows = VectorIndex::SampleRows(n, m, seed);
    for (size_t i = 0; i < rows.size();) {  // one pread per run of consecutive rows
      size_t j = i + 1;
      while (j < rows.size() && rows[j] == rows[j - 1] + 1) ++j;
      RAG_RETURN_IF_ERROR(file.Read(rows[i], static_cast<int64_t>(j - i), sample.data() + i * dim));
      i = j;
    }
  }
  return index.TrainOnSample(std::move(sample), seed);
}

// The trained index of `--trained`, checked against what this build brings.
absl::StatusOr<std::optional<TrainedIndexRecord>> LoadTrained(const lm::Tokenizer& tokenizer, lm::Embedder& embedder,
                                                              const std::string& model_hash, const BuildOptions& o) {
  if (o.trained_dir.empty()) return std::optional<TrainedIndexRecord>();
  auto trained = TrainedIndexRecord::Load(o.trained_dir);
  if (!trained.ok()) return Annotate(trained.status(), "--trained");
  BuildIdentity b;
  b.model_hash = model_hash;
  b.tokenizer_hash = tokenizer.Hash();
  b.embedder_hash = embedder.hash();
  b.dim = embedder.dim();
  b.chunk_tokens = o.chunk_tokens;
  b.continuation_tokens = o.continuation_tokens;
  b.index_factory = o.index_factory;
  b.datastore = o.datastore;
  b.datastore_factory = o.datastore_factory;
  RAG_RETURN_IF_ERROR(Annotate(CheckTrainedMatches(*trained, b), "--trained '" + o.trained_dir + "'"));
  return std::optional<TrainedIndexRecord>(std::move(trained).value());
}

// A copy of the trained, empty chunk index to add this build's vectors to.
absl::StatusOr<std::unique_ptr<VectorIndex>> OpenTrainedChunkIndex(const std::string& trained_dir,
                                                                   const TrainedIndexRecord& trained) {
  const std::string path = (fs::path(trained_dir) / kTrainedChunkIndexFile).string();
  RAG_ASSIGN_OR_RETURN(auto index, VectorIndex::Open(path));
  if (!index->is_trained() || index->size() != 0 || index->dim() != trained.dim ||
      index->factory() != trained.index_factory) {
    return absl::FailedPreconditionError("'" + path + "' is not the trained, empty " + trained.index_factory +
                                         " index of dim " + std::to_string(trained.dim) + " that " +
                                         kTrainedRecordFile + " describes");
  }
  return index;
}

}  // namespace

void KeepShardDocuments(const retriever::ShardSpec& shard, std::vector<Document>* documents) {
  if (shard.count == 1) return;
  std::vector<Document> kept;
  for (auto& d : *documents) {
    if (retriever::ShardOfDocument(d.id, shard.count) == shard.index) kept.push_back(std::move(d));
  }
  *documents = std::move(kept);
}

absl::StatusOr<Manifest> BuildIndex(const std::vector<Document>& documents, const lm::Tokenizer& tokenizer,
                                    lm::Embedder& embedder, const std::string& model_hash,
                                    const BuildOptions& o, const std::atomic<bool>* stop) {
  if (o.out_dir.empty()) return absl::InvalidArgumentError("no output index directory given");
  if (documents.empty()) return absl::InvalidArgumentError("corpus has no documents");
  if (o.chunk_tokens < 1 || o.chunk_tokens > 4096) return absl::InvalidArgumentError("chunk tokens must be in [1, 4096]");
  if (o.continuation_tokens < 0 || o.continuation_tokens > 4096) {
    return absl::InvalidArgumentError("continuation tokens must be in [0, 4096]");
  }
  if (o.embed_batch < 1 || o.add_batch < 1) return absl::InvalidArgumentError("batch sizes must be >= 1");
  const fs::path out(o.out_dir);
  const fs::path work = o.out_dir + ".partial";
  std::error_code ec;
  // One build per output at a time: a second one (a double start) would
  // interleave its writes with the first's in the partial directory. The
  // kernel drops a flock with its process, so a killed build never leaves
  // it held; the file itself goes when a build completes.
  const std::string lock_path = o.out_dir + ".lock";
  if (out.has_parent_path()) fs::create_directories(out.parent_path(), ec);
  struct Fd {
    int fd;
    ~Fd() {
      if (fd >= 0) ::close(fd);
    }
  } lock{::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644)};
  if (lock.fd < 0) return absl::InternalError("creating '" + lock_path + "': " + std::strerror(errno));
  if (::flock(lock.fd, LOCK_EX | LOCK_NB) != 0) {
    return absl::FailedPreconditionError("another `rag build` is writing '" + o.out_dir + "' (it holds '" + lock_path +
                                         "'); wait for it or stop it");
  }
  if (fs::exists(out)) {
    if (!o.overwrite) {
      return absl::FailedPreconditionError("'" + o.out_dir + "' already exists; pass --overwrite to replace it");
    }
  }
  for (const auto& d : documents) {
    if (retriever::ShardOfDocument(d.id, o.shard.count) != o.shard.index) {
      return absl::InvalidArgumentError("document '" + d.id + "' belongs to shard " +
                                        std::to_string(retriever::ShardOfDocument(d.id, o.shard.count)) + ", not " +
                                        o.shard.ToString() + " (KeepShardDocuments drops them)");
    }
  }
  RAG_ASSIGN_OR_RETURN(const std::optional<TrainedIndexRecord> trained,
                       LoadTrained(tokenizer, embedder, model_hash, o));
  const std::string fingerprint =
      BuildFingerprint(documents, tokenizer, embedder, model_hash, o, trained ? &*trained : nullptr);
  if (fs::exists(work)) {
    auto previous = ReadFile((work / kBuildArgsFile).string());
    // A build killed after creating the directory but before recording its
    // arguments left nothing of its own (the record is written first).
    if (!previous.ok() && !fs::exists(work / kBuildArgsFile)) {
      std::fprintf(stderr, "build: the partial build in %s never started; starting afresh\n", work.c_str());
      fs::remove_all(work, ec);
    } else if (!previous.ok() || *previous != fingerprint) {
      if (!o.overwrite) {
        return absl::FailedPreconditionError("'" + work.string() +
                                             "' holds a partial build from other arguments; remove it or pass "
                                             "--overwrite");
      }
      fs::remove_all(work, ec);
    } else {
      std::fprintf(stderr, "build: resuming the partial build in %s\n", work.c_str());
    }
  }
  fs::create_directories(work, ec);
  if (ec) return absl::InternalError("creating '" + work.string() + "': " + ec.message());
  RAG_RETURN_IF_ERROR(WriteFileAtomic((work / kBuildArgsFile).string(), fingerprint));

  BuildTimings unused_timings;
  BuildTimings& timings = o.timings != nullptr ? *o.timings : unused_timings;
  timings = BuildTimings();
  Manifest m;
  {
    ChunkStoreOptions so;
    so.chunk_tokens = o.chunk_tokens;
    so.continuation_tokens = o.continuation_tokens;
    so.sync_writes = false;  // one Flush() at the end of the stage; a killed process loses nothing
    RAG_ASSIGN_OR_RETURN(auto store, ChunkStore::Open((work / retriever::kChunkStoreDir).string(), so));
    auto t0 = std::chrono::steady_clock::now();
    RAG_RETURN_IF_ERROR(StoreDocuments(documents, tokenizer, *store, o, stop));
    timings.store_s = SecondsSince(t0);
    if (store->num_chunks() == 0) return absl::InvalidArgumentError("corpus produced no tokens to index");
    t0 = std::chrono::steady_clock::now();
    RAG_RETURN_IF_ERROR(EmbedChunks(*store, embedder, (work / retriever::kEmbeddingsFile).string(), o, stop));
    timings.embed_s = SecondsSince(t0);
    m.documents = store->num_documents();
    m.tokens = store->num_tokens();
    m.chunks = store->num_chunks();
  }
  ReleaseFreedMemory();  // the forward passes' working set, the store's write buffers

  // Stage 3: FAISS. Training and adding are fast next to embedding and
  // deterministic, so a resumed build simply redoes them.
  const auto index_t0 = std::chrono::steady_clock::now();
  const int dim = embedder.dim();
  const int64_t n = m.chunks;
  // With --trained the factory is the trained index's, chosen for the
  // whole corpus; otherwise for this build's vectors.
  retriever::FactoryChoice choice;
  if (trained) {
    choice = {trained->index_factory, trained->factory_note};
  } else {
    const std::string requested = o.index_factory.empty() ? VectorIndex::DefaultFactory(n, dim) : o.index_factory;
    RAG_ASSIGN_OR_RETURN(choice, VectorIndex::AdaptFactory(requested, n, dim));
  }
  if (!choice.note.empty()) std::fprintf(stderr, "build: %s\n", choice.note.c_str());
  std::fprintf(stderr, "build: index %s over %lld vectors of dim %d\n", choice.factory.c_str(),
               static_cast<long long>(n), dim);
  {
    const std::string emb_path = (work / retriever::kEmbeddingsFile).string();
    RAG_ASSIGN_OR_RETURN(auto file, EmbeddingsFile::Open(emb_path, n, dim));
    std::unique_ptr<VectorIndex> index;
    if (trained) {
      RAG_ASSIGN_OR_RETURN(index, OpenTrainedChunkIndex(o.trained_dir, *trained));
    } else {
      RAG_ASSIGN_OR_RETURN(index, VectorIndex::Create(dim, choice.factory));
    }
    index->DropSearchTables();  // only added to and saved here
    if (!index->is_trained()) {
      auto t0 = std::chrono::steady_clock::now();
      RAG_RETURN_IF_ERROR(Annotate(TrainFromFile(*file, o.seed, *index), "training the index"));
      std::fprintf(stderr, "build: trained %s in %.1f s\n", choice.factory.c_str(),
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    index->Reserve(n);
    // The same Add calls as over the whole file (batching changes e.g. an
    // HNSW graph); the checksum covers exactly the bytes that were added.
    std::vector<float> batch(static_cast<size_t>(std::min(o.add_batch, n)) * static_cast<size_t>(dim));
    std::unique_ptr<XXH3_state_t, decltype(&XXH3_freeState)> hash(XXH3_createState(), &XXH3_freeState);
    if (hash == nullptr) return absl::ResourceExhaustedError("allocating a hash state");
    XXH3_64bits_reset(hash.get());
    Progress progress("build: add", n, "vectors");
    for (int64_t i = 0; i < n; i += o.add_batch) {
      RAG_RETURN_IF_ERROR(CheckStop(stop));
      const int64_t b = std::min(o.add_batch, n - i);
      RAG_RETURN_IF_ERROR(file->Read(i, b, batch.data()));
      XXH3_64bits_update(hash.get(), batch.data(), static_cast<size_t>(b) * static_cast<size_t>(dim) * sizeof(float));
      RAG_RETURN_IF_ERROR(index->Add(batch.data(), b));
      if (o.show_progress) progress.Update(i + b);
    }
    if (o.show_progress) progress.Finish();
    RAG_RETURN_IF_ERROR(index->Save((work / retriever::kChunkIndexFile).string()));
    char hex[17];
    std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(XXH3_64bits_digest(hash.get())));
    m.checksums[retriever::kEmbeddingsFile] = hex;  // as HashFileHex: XXH3-64 of the whole file
  }
  RAG_ASSIGN_OR_RETURN(m.checksums[retriever::kChunkIndexFile],
                       HashFileHex((work / retriever::kChunkIndexFile).string()));
  timings.index_s = SecondsSince(index_t0);
  ReleaseFreedMemory();  // FAISS training's sample and buffers

  // The stages below read the chunk store back.
  std::unique_ptr<ChunkStore> store;
  {
    ChunkStoreOptions so;
    so.chunk_tokens = o.chunk_tokens;
    so.continuation_tokens = o.continuation_tokens;
    so.create_if_missing = false;
    so.read_only = true;
    RAG_ASSIGN_OR_RETURN(store, ChunkStore::Open((work / retriever::kChunkStoreDir).string(), so));
  }

  // Exact occurrence counts of token sequences (`rag count`, memorization
  // studies), and the tokenizer that makes the index usable without the model.
  {
    const auto counts_t0 = std::chrono::steady_clock::now();
    RAG_ASSIGN_OR_RETURN(auto doc_tokens, retriever::DocumentTokens(*store));
    RAG_ASSIGN_OR_RETURN(auto counts, retriever::TokenCounts::Build(std::move(doc_tokens)));
    RAG_RETURN_IF_ERROR(counts.Save((work / retriever::kTokenCountsFile).string()));
    RAG_ASSIGN_OR_RETURN(m.checksums[retriever::kTokenCountsFile],
                         HashFileHex((work / retriever::kTokenCountsFile).string()));
    RAG_RETURN_IF_ERROR(WriteFileAtomic((work / retriever::kIndexTokenizerFile).string(), tokenizer.ToJson()));
    RAG_ASSIGN_OR_RETURN(m.checksums[retriever::kIndexTokenizerFile],
                         HashFileHex((work / retriever::kIndexTokenizerFile).string()));
    if (o.show_progress) {
      std::fprintf(stderr, "build: count index over %lld tokens in %.1f s\n", static_cast<long long>(counts.tokens()),
                   SecondsSince(counts_t0));
    }
  }

  ReleaseFreedMemory();  // the count index's suffix sort
  if (!o.datastore) store.reset();  // closed before the directory is renamed

  // Stage 4: the kNN-LM datastore, resumable on its own (datastore/).
  if (o.datastore) {
    if (o.model == nullptr) return absl::InvalidArgumentError("a datastore needs the model that computes its keys");
    std::vector<size_t> selected;  // into documents: the corpus text is not copied
    std::vector<int32_t> doc_index;
    {
      const std::set<std::string> wanted(o.datastore_doc_ids.begin(), o.datastore_doc_ids.end());
      for (size_t i = 0; i < documents.size(); ++i) {
        const Document& d = documents[i];
        if (!wanted.empty() && wanted.count(d.id) == 0) continue;
        RAG_ASSIGN_OR_RETURN(retriever::DocumentRecord rec, store->GetDocument(d.id));
        selected.push_back(i);
        doc_index.push_back(static_cast<int32_t>(rec.index));
      }
    }
    store.reset();
    if (selected.empty()) return absl::InvalidArgumentError("no document of the corpus is selected for the datastore");
    DatastoreBuildOptions dso;
    dso.dir = (work / retriever::kDatastoreDir).string();
    dso.index_factory = o.datastore_factory;
    dso.seed = o.seed;
    dso.show_progress = o.show_progress;
    if (trained) dso.trained_index = (fs::path(o.trained_dir) / kTrainedDatastoreIndexFile).string();
    RAG_ASSIGN_OR_RETURN(retriever::DatastoreInfo info, BuildDatastore(documents, selected, doc_index, *o.model, dso, stop));
    m.datastore_keys = info.rows;
    m.datastore_factory = info.index_factory;
    m.datastore_split = o.datastore_split;
    if (trained) m.datastore_trained_index_hash = trained->datastore_trained_hash;
    for (const auto& [file, sum] : info.checksums) {
      m.checksums[std::string(retriever::kDatastoreDir) + "/" + file] = sum;
    }
  }

  m.created_by = "rag 0.1.0";
  m.shard_id = o.shard.index;
  m.shard_count = o.shard.count;
  m.created_at = retriever::NowUtc();
  m.corpus_path = o.corpus_path;
  for (const auto& d : documents) m.bytes += static_cast<int64_t>(d.text.size());
  m.chunk_tokens = o.chunk_tokens;
  m.continuation_tokens = o.continuation_tokens;
  m.model_hash = model_hash;
  m.tokenizer_hash = tokenizer.Hash();
  m.model_architecture = o.model_architecture;
  m.model_parameters = o.model_parameters;
  m.embedder = embedder.description();
  m.embedder_hash = embedder.hash();
  m.dim = dim;
  m.requested_factory = trained ? trained->requested_factory : o.index_factory;
  if (trained) m.trained_index_hash = trained->trained_index_hash;
  m.index_factory = choice.factory;
  m.factory_note = choice.note;
  m.faiss_version = VectorIndex::FaissVersion();
  m.vectors = n;
  fs::remove(work / kBuildArgsFile, ec);
  RAG_RETURN_IF_ERROR(m.Save(work.string()));

  // Swap into place: an existing index (--overwrite) is moved aside first
  // and removed only once the new one is in place.
  const fs::path old = o.out_dir + ".old";
  if (fs::exists(out)) {
    fs::remove_all(old, ec);
    RAG_RETURN_IF_ERROR(DurableRename(out.string(), old.string()));
  }
  RAG_RETURN_IF_ERROR(DurableRename(work.string(), out.string()));
  fs::remove_all(old, ec);
  fs::remove(lock_path, ec);
  return m;
}

}  // namespace rag::index_builder

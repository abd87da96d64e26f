#include "retriever/chunk_store.h"

#include <rocksdb/db.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/iterator.h>
#include <rocksdb/options.h>
#include <rocksdb/slice.h>
#include <rocksdb/status.h>
#include <rocksdb/table.h>
#include <rocksdb/write_batch.h>

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <utility>

#include "common/status.h"

namespace rag::retriever {
namespace {

// Byte layout constants; see the format description in chunk_store.h.
constexpr char kConfigKey[] = "S";
constexpr char kCountersKey[] = "C";
constexpr char kDocPrefix = 'D';
constexpr char kFirstChunkPrefix = 'F';
constexpr char kIdPrefix = 'I';
constexpr char kMetaPrefix = 'M';
constexpr size_t kConfigSize = 12;
constexpr size_t kCountersSize = 24;
constexpr size_t kFirstChunkValueSize = 24;
constexpr size_t kDocHeaderSize = 32;
constexpr size_t kNumericKeySize = 9;  // prefix + u64
// RocksDB values are limited to 4 GiB (u32 lengths); stay well below.
constexpr int64_t kMaxDocumentTokens = int64_t{1} << 28;

void PutBe32(std::string* out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out->push_back(static_cast<char>((v >> shift) & 0xff));
}
void PutBe64(std::string* out, uint64_t v) {
  for (int shift = 56; shift >= 0; shift -= 8) out->push_back(static_cast<char>((v >> shift) & 0xff));
}
uint32_t ReadBe32(const char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}
uint64_t ReadBe64(const char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}
// Tokens are little-endian: compilers turn these loops into plain loads and
// stores on x86/ARM, which matters for documents of many thousand tokens.
void PutTokens(std::string* out, const std::vector<Token>& tokens) {
  size_t pos = out->size();
  out->resize(pos + tokens.size() * 4);
  char* p = out->data() + pos;
  for (Token t : tokens) {
    uint32_t u = static_cast<uint32_t>(t);
    p[0] = static_cast<char>(u & 0xff);
    p[1] = static_cast<char>((u >> 8) & 0xff);
    p[2] = static_cast<char>((u >> 16) & 0xff);
    p[3] = static_cast<char>((u >> 24) & 0xff);
    p += 4;
  }
}
void ReadTokens(const char* p, int64_t begin, int64_t end, std::vector<Token>* out) {
  out->resize(static_cast<size_t>(end - begin));
  p += begin * 4;
  for (auto& t : *out) {
    const auto* u = reinterpret_cast<const unsigned char*>(p);
    t = static_cast<Token>(uint32_t{u[0]} | (uint32_t{u[1]} << 8) | (uint32_t{u[2]} << 16) | (uint32_t{u[3]} << 24));
    p += 4;
  }
}

std::string NumericKey(char prefix, uint64_t v) {
  std::string key(1, prefix);
  PutBe64(&key, v);
  return key;
}
std::string DocKey(int64_t doc_index) { return NumericKey(kDocPrefix, static_cast<uint64_t>(doc_index)); }
std::string FirstChunkKey(ChunkId id) { return NumericKey(kFirstChunkPrefix, static_cast<uint64_t>(id)); }
std::string IdKey(const std::string& doc_id) { return std::string(1, kIdPrefix) + doc_id; }
std::string MetaKey(const std::string& key) { return std::string(1, kMetaPrefix) + key; }

// A key as a person reads it in an error message: "D/12", "I/doc7".
std::string KeyDebugString(const rocksdb::Slice& key) {
  if (key.empty()) return "<empty key>";
  std::string out(1, key[0]);
  out += '/';
  if ((key[0] == kDocPrefix || key[0] == kFirstChunkPrefix) && key.size() == kNumericKeySize) {
    return out + std::to_string(ReadBe64(key.data() + 1));
  }
  static const char kHex[] = "0123456789abcdef";
  for (size_t i = 1; i < key.size(); ++i) {
    const auto c = static_cast<unsigned char>(key[i]);
    if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 0xf];
    }
  }
  return out;
}

absl::Status FromRocks(const rocksdb::Status& s, const std::string& context) {
  if (s.ok()) return absl::OkStatus();
  const std::string message = context + ": " + s.ToString();
  switch (s.code()) {
    case rocksdb::Status::kNotFound:
      return absl::NotFoundError(message);
    case rocksdb::Status::kCorruption:
      return absl::DataLossError(message);
    case rocksdb::Status::kNotSupported:
      return absl::UnimplementedError(message);
    case rocksdb::Status::kInvalidArgument:
      return absl::InvalidArgumentError(message);
    case rocksdb::Status::kIOError:
      if (s.IsNoSpace()) return absl::ResourceExhaustedError(message);
      // The directory was checked before opening, so a missing file is one
      // the store's own metadata refers to: a damaged store.
      if (s.IsPathNotFound()) return absl::DataLossError(message);
      return absl::InternalError(message);
    case rocksdb::Status::kAborted:
      return absl::AbortedError(message);
    case rocksdb::Status::kBusy:
    case rocksdb::Status::kTryAgain:
    case rocksdb::Status::kShutdownInProgress:
      return absl::UnavailableError(message);
    case rocksdb::Status::kTimedOut:
    case rocksdb::Status::kExpired:
      return absl::DeadlineExceededError(message);
    case rocksdb::Status::kCompactionTooLarge:
      return absl::ResourceExhaustedError(message);
    default:
      return absl::InternalError(message);
  }
}

absl::Status Malformed(const rocksdb::Slice& key, const std::string& what) {
  return absl::DataLossError("chunk store record " + KeyDebugString(key) + " is malformed: " + what);
}

int64_t ChunksFor(int64_t num_tokens, int32_t chunk_tokens) { return (num_tokens + chunk_tokens - 1) / chunk_tokens; }

// A parsed document record; the pointers alias the value it was parsed from.
struct DocView {
  ChunkId first_chunk = 0;
  int64_t num_chunks = 0;
  int64_t num_tokens = 0;
  rocksdb::Slice id;
  rocksdb::Slice metadata;
  const char* tokens = nullptr;
};

// Checks every length against the value's size so that a truncated or
// overwritten record is DataLoss, never an out-of-bounds read.
absl::StatusOr<DocView> ParseDoc(const rocksdb::Slice& key, const rocksdb::Slice& value, int32_t chunk_tokens) {
  if (value.size() < kDocHeaderSize) {
    return Malformed(key, "expected at least " + std::to_string(kDocHeaderSize) + " bytes, got " +
                              std::to_string(value.size()));
  }
  const char* p = value.data();
  DocView doc;
  doc.first_chunk = static_cast<int64_t>(ReadBe64(p));
  doc.num_chunks = static_cast<int64_t>(ReadBe64(p + 8));
  const uint32_t id_len = ReadBe32(p + 16);
  const uint32_t meta_len = ReadBe32(p + 20);
  doc.num_tokens = static_cast<int64_t>(ReadBe64(p + 24));
  if (doc.num_tokens < 1 || doc.num_tokens > kMaxDocumentTokens) {
    return Malformed(key, "token count " + std::to_string(doc.num_tokens) + " out of range");
  }
  const uint64_t expected = kDocHeaderSize + uint64_t{id_len} + meta_len + static_cast<uint64_t>(doc.num_tokens) * 4;
  if (value.size() != expected) {
    return Malformed(key, "expected " + std::to_string(expected) + " bytes, got " + std::to_string(value.size()));
  }
  if (doc.first_chunk < 0 || doc.num_chunks != ChunksFor(doc.num_tokens, chunk_tokens)) {
    return Malformed(key, "chunk range [" + std::to_string(doc.first_chunk) + ", +" + std::to_string(doc.num_chunks) +
                              ") does not fit " + std::to_string(doc.num_tokens) + " tokens");
  }
  doc.id = rocksdb::Slice(p + kDocHeaderSize, id_len);
  doc.metadata = rocksdb::Slice(p + kDocHeaderSize + id_len, meta_len);
  doc.tokens = p + kDocHeaderSize + id_len + meta_len;
  return doc;
}

ChunkRecord MakeChunk(const DocView& doc, int64_t doc_index, ChunkId id, const ChunkStoreOptions& options) {
  ChunkRecord rec;
  rec.id = id;
  rec.doc_id = doc.id.ToString();
  rec.doc_index = doc_index;
  rec.offset = (id - doc.first_chunk) * options.chunk_tokens;
  const int64_t end = std::min<int64_t>(rec.offset + options.chunk_tokens, doc.num_tokens);
  const int64_t cont_end = std::min<int64_t>(end + options.continuation_tokens, doc.num_tokens);
  ReadTokens(doc.tokens, rec.offset, end, &rec.tokens);
  ReadTokens(doc.tokens, end, cont_end, &rec.continuation);
  return rec;
}

std::string EncodeConfig(const ChunkStoreOptions& options) {
  std::string v;
  PutBe32(&v, ChunkStore::kFormatVersion);
  PutBe32(&v, static_cast<uint32_t>(options.chunk_tokens));
  PutBe32(&v, static_cast<uint32_t>(options.continuation_tokens));
  return v;
}

std::string EncodeCounters(int64_t docs, int64_t chunks, int64_t tokens) {
  std::string v;
  PutBe64(&v, static_cast<uint64_t>(docs));
  PutBe64(&v, static_cast<uint64_t>(chunks));
  PutBe64(&v, static_cast<uint64_t>(tokens));
  return v;
}

// Checks the directory before RocksDB sees it: RocksDB would happily create
// a fresh database inside a directory of unrelated files.
absl::Status CheckPath(const std::string& path, const ChunkStoreOptions& options) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  bool exists = st.type() != fs::file_type::not_found;
  if (exists && ec) return absl::InternalError("cannot stat '" + path + "': " + ec.message());
  if (exists && !fs::is_directory(st)) {
    return absl::FailedPreconditionError("'" + path + "' is not a chunk store: not a directory");
  }
  if (exists && !fs::exists(fs::path(path) / "CURRENT", ec)) {
    fs::directory_iterator it(path, ec);
    if (ec) return absl::InternalError("cannot list '" + path + "': " + ec.message());
    if (it != fs::directory_iterator()) {
      return absl::FailedPreconditionError("'" + path +
                                           "' is not a chunk store: a non-empty directory without a RocksDB CURRENT "
                                           "file (remove it to start over)");
    }
    exists = false;  // an empty directory is a store not yet created
  }
  if (!exists && (options.read_only || !options.create_if_missing)) {
    return absl::NotFoundError("no chunk store at '" + path + "'");
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<ChunkStore>> ChunkStore::Open(const std::string& path,
                                                             const ChunkStoreOptions& options) {
  const std::string context = "opening chunk store '" + path + "'";
  if (path.empty()) return absl::InvalidArgumentError("opening chunk store: empty path");
  if (options.chunk_tokens < 1) {
    return absl::InvalidArgumentError(context + ": chunk_tokens must be >= 1, got " +
                                      std::to_string(options.chunk_tokens));
  }
  if (options.continuation_tokens < 0) {
    return absl::InvalidArgumentError(context + ": continuation_tokens must be >= 0, got " +
                                      std::to_string(options.continuation_tokens));
  }
  RAG_RETURN_IF_ERROR(Annotate(CheckPath(path, options), context));

  rocksdb::Options db_options;
  db_options.create_if_missing = options.create_if_missing && !options.read_only;
  db_options.paranoid_checks = true;
  db_options.keep_log_file_num = 4;
  // Point look-ups (document by index, id by name) dominate; a Bloom filter
  // spares a block read per SST file that does not hold the key.
  rocksdb::BlockBasedTableOptions table_options;
  table_options.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  db_options.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table_options));

  rocksdb::DB* raw = nullptr;
  const rocksdb::Status s = options.read_only ? rocksdb::DB::OpenForReadOnly(db_options, path, &raw)
                                              : rocksdb::DB::Open(db_options, path, &raw);
  std::unique_ptr<rocksdb::DB> db(raw);
  RAG_RETURN_IF_ERROR(FromRocks(s, context));
  if (db == nullptr) return absl::InternalError(context + ": RocksDB returned no database");

  std::unique_ptr<ChunkStore> store(new ChunkStore(path, options, std::move(db)));
  RAG_RETURN_IF_ERROR(Annotate(store->LoadConfig(), context));
  RAG_RETURN_IF_ERROR(Annotate(store->LoadChunkMap(), context));
  return store;
}

ChunkStore::ChunkStore(std::string path, ChunkStoreOptions options, std::unique_ptr<rocksdb::DB> db)
    : path_(std::move(path)), options_(options), db_(std::move(db)) {}

ChunkStore::~ChunkStore() {
  // Close() reports errors that the destructor would swallow silently; there
  // is no one to report them to here either, but it releases the LOCK file
  // before the object is gone.
  if (db_ != nullptr) db_->Close().PermitUncheckedError();
}

absl::Status ChunkStore::LoadConfig() {
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), kConfigKey, &value);
  if (s.IsNotFound()) {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
    it->SeekToFirst();
    RAG_RETURN_IF_ERROR(FromRocks(it->status(), "scanning"));
    if (it->Valid()) {
      return absl::FailedPreconditionError("a RocksDB database but not a chunk store (no config record)");
    }
    if (options_.read_only) {
      return absl::FailedPreconditionError("the store was never initialised (no config record)");
    }
    rocksdb::WriteOptions wo;
    wo.sync = true;
    return FromRocks(db_->Put(wo, kConfigKey, EncodeConfig(options_)), "writing config");
  }
  RAG_RETURN_IF_ERROR(FromRocks(s, "reading config"));
  if (value.size() != kConfigSize) {
    return Malformed(kConfigKey, "expected " + std::to_string(kConfigSize) + " bytes, got " +
                                     std::to_string(value.size()));
  }
  const uint32_t version = ReadBe32(value.data());
  if (version != kFormatVersion) {
    return absl::FailedPreconditionError("format version " + std::to_string(version) + ", this build reads " +
                                         std::to_string(kFormatVersion) + " (rebuild the index)");
  }
  const auto chunk_tokens = static_cast<int32_t>(ReadBe32(value.data() + 4));
  const auto continuation_tokens = static_cast<int32_t>(ReadBe32(value.data() + 8));
  if (chunk_tokens != options_.chunk_tokens || continuation_tokens != options_.continuation_tokens) {
    return absl::FailedPreconditionError(
        "created with chunk_tokens=" + std::to_string(chunk_tokens) +
        ", continuation_tokens=" + std::to_string(continuation_tokens) + " but opened with chunk_tokens=" +
        std::to_string(options_.chunk_tokens) + ", continuation_tokens=" + std::to_string(options_.continuation_tokens));
  }
  return absl::OkStatus();
}

absl::Status ChunkStore::LoadChunkMap() {
  int64_t want_docs = 0, want_chunks = 0, want_tokens = 0;
  std::string counters;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), kCountersKey, &counters);
  if (!s.IsNotFound()) {
    RAG_RETURN_IF_ERROR(FromRocks(s, "reading counters"));
    if (counters.size() != kCountersSize) {
      return Malformed(kCountersKey, "expected " + std::to_string(kCountersSize) + " bytes, got " +
                                         std::to_string(counters.size()));
    }
    want_docs = static_cast<int64_t>(ReadBe64(counters.data()));
    want_chunks = static_cast<int64_t>(ReadBe64(counters.data() + 8));
    want_tokens = static_cast<int64_t>(ReadBe64(counters.data() + 16));
  }

  // The "F" keys are small and in chunk-id order, so this scan rebuilds the
  // chunk -> document map without touching document tokens.
  rocksdb::ReadOptions ro;
  ro.fill_cache = false;
  const std::string upper(1, static_cast<char>(kFirstChunkPrefix + 1));
  rocksdb::Slice upper_slice(upper);
  ro.iterate_upper_bound = &upper_slice;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro));
  std::vector<ChunkId> first_chunks;
  int64_t chunks = 0, tokens = 0;
  for (it->Seek(std::string(1, kFirstChunkPrefix)); it->Valid(); it->Next()) {
    const rocksdb::Slice key = it->key();
    const rocksdb::Slice value = it->value();
    if (key.size() != kNumericKeySize) return Malformed(key, "bad key length " + std::to_string(key.size()));
    if (value.size() != kFirstChunkValueSize) {
      return Malformed(key, "expected " + std::to_string(kFirstChunkValueSize) + " bytes, got " +
                                std::to_string(value.size()));
    }
    const auto first = static_cast<ChunkId>(ReadBe64(key.data() + 1));
    const auto doc_index = static_cast<int64_t>(ReadBe64(value.data()));
    const auto doc_chunks = static_cast<int64_t>(ReadBe64(value.data() + 8));
    const auto doc_tokens = static_cast<int64_t>(ReadBe64(value.data() + 16));
    if (first != chunks || doc_index != static_cast<int64_t>(first_chunks.size()) || doc_tokens < 1 ||
        doc_tokens > kMaxDocumentTokens || doc_chunks != ChunksFor(doc_tokens, options_.chunk_tokens)) {
      return Malformed(key, "expected document " + std::to_string(first_chunks.size()) + " at chunk " +
                                std::to_string(chunks) + ", found document " + std::to_string(doc_index) + " with " +
                                std::to_string(doc_chunks) + " chunks of " + std::to_string(doc_tokens) + " tokens");
    }
    first_chunks.push_back(first);
    chunks += doc_chunks;
    tokens += doc_tokens;
  }
  RAG_RETURN_IF_ERROR(FromRocks(it->status(), "scanning chunk map"));
  if (want_docs != static_cast<int64_t>(first_chunks.size()) || want_chunks != chunks || want_tokens != tokens) {
    return absl::DataLossError("counters say " + std::to_string(want_docs) + " documents, " +
                               std::to_string(want_chunks) + " chunks, " + std::to_string(want_tokens) +
                               " tokens but the chunk map holds " + std::to_string(first_chunks.size()) + ", " +
                               std::to_string(chunks) + ", " + std::to_string(tokens));
  }
  std::unique_lock lock(map_mu_);
  first_chunk_of_doc_ = std::move(first_chunks);
  num_chunks_ = chunks;
  num_tokens_ = tokens;
  return absl::OkStatus();
}

absl::StatusOr<std::vector<ChunkId>> ChunkStore::AddDocument(const std::string& doc_id,
                                                             const std::vector<Token>& tokens,
                                                             const std::string& metadata_json) {
  const std::string context = "adding document '" + doc_id + "' to chunk store '" + path_ + "'";
  if (options_.read_only) return absl::FailedPreconditionError(context + ": the store is open read-only");
  if (doc_id.empty()) return absl::InvalidArgumentError(context + ": empty document id");
  if (tokens.empty()) return absl::InvalidArgumentError(context + ": no tokens");
  if (static_cast<int64_t>(tokens.size()) > kMaxDocumentTokens) {
    return absl::InvalidArgumentError(context + ": " + std::to_string(tokens.size()) + " tokens, at most " +
                                      std::to_string(kMaxDocumentTokens) + " per document");
  }
  if (doc_id.size() > UINT32_MAX || metadata_json.size() > UINT32_MAX) {
    return absl::InvalidArgumentError(context + ": id or metadata too long");
  }
  const std::string metadata = metadata_json.empty() ? "{}" : metadata_json;
  if (!nlohmann::json::accept(metadata)) {
    return absl::InvalidArgumentError(context + ": metadata_json is not valid JSON");
  }

  std::lock_guard write_lock(write_mu_);
  const std::string id_key = IdKey(doc_id);
  std::string existing;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), id_key, &existing);
  if (s.ok()) return absl::AlreadyExistsError(context + ": a document with this id is already stored");
  if (!s.IsNotFound()) return FromRocks(s, context);

  int64_t doc_index, first_chunk, total_tokens;
  {
    std::shared_lock lock(map_mu_);
    doc_index = static_cast<int64_t>(first_chunk_of_doc_.size());
    first_chunk = num_chunks_;
    total_tokens = num_tokens_;
  }
  const auto num_tokens = static_cast<int64_t>(tokens.size());
  const int64_t num_chunks = ChunksFor(num_tokens, options_.chunk_tokens);

  std::string doc_value;
  doc_value.reserve(kDocHeaderSize + doc_id.size() + metadata.size() + tokens.size() * 4);
  PutBe64(&doc_value, static_cast<uint64_t>(first_chunk));
  PutBe64(&doc_value, static_cast<uint64_t>(num_chunks));
  PutBe32(&doc_value, static_cast<uint32_t>(doc_id.size()));
  PutBe32(&doc_value, static_cast<uint32_t>(metadata.size()));
  PutBe64(&doc_value, static_cast<uint64_t>(num_tokens));
  doc_value += doc_id;
  doc_value += metadata;
  PutTokens(&doc_value, tokens);

  std::string map_value;
  PutBe64(&map_value, static_cast<uint64_t>(doc_index));
  PutBe64(&map_value, static_cast<uint64_t>(num_chunks));
  PutBe64(&map_value, static_cast<uint64_t>(num_tokens));
  std::string index_value;
  PutBe64(&index_value, static_cast<uint64_t>(doc_index));

  rocksdb::WriteBatch batch;
  RAG_RETURN_IF_ERROR(FromRocks(batch.Put(DocKey(doc_index), doc_value), context));
  RAG_RETURN_IF_ERROR(FromRocks(batch.Put(FirstChunkKey(first_chunk), map_value), context));
  RAG_RETURN_IF_ERROR(FromRocks(batch.Put(id_key, index_value), context));
  RAG_RETURN_IF_ERROR(FromRocks(
      batch.Put(kCountersKey, EncodeCounters(doc_index + 1, first_chunk + num_chunks, total_tokens + num_tokens)),
      context));
  rocksdb::WriteOptions wo;
  wo.sync = options_.sync_writes;
  RAG_RETURN_IF_ERROR(FromRocks(db_->Write(wo, &batch), context));

  {
    std::unique_lock lock(map_mu_);
    first_chunk_of_doc_.push_back(first_chunk);
    num_chunks_ = first_chunk + num_chunks;
    num_tokens_ = total_tokens + num_tokens;
  }
  std::vector<ChunkId> ids(static_cast<size_t>(num_chunks));
  for (int64_t i = 0; i < num_chunks; ++i) ids[static_cast<size_t>(i)] = first_chunk + i;
  return ids;
}

absl::StatusOr<int64_t> ChunkStore::DocIndexOfChunk(ChunkId id) const {
  // Callers hold map_mu_ (shared).
  if (id < 0 || id >= num_chunks_) {
    return absl::NotFoundError("chunk " + std::to_string(id) + " not found in chunk store '" + path_ + "' (it has " +
                               std::to_string(num_chunks_) + " chunks)");
  }
  auto it = std::upper_bound(first_chunk_of_doc_.begin(), first_chunk_of_doc_.end(), id);
  return static_cast<int64_t>(it - first_chunk_of_doc_.begin()) - 1;
}

absl::StatusOr<ChunkRecord> ChunkStore::GetChunk(ChunkId id) const {
  int64_t doc_index;
  ChunkId first_chunk;
  {
    std::shared_lock lock(map_mu_);
    RAG_ASSIGN_OR_RETURN(doc_index, DocIndexOfChunk(id));
    first_chunk = first_chunk_of_doc_[static_cast<size_t>(doc_index)];
  }
  const std::string key = DocKey(doc_index);
  rocksdb::PinnableSlice value;
  const rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), db_->DefaultColumnFamily(), key, &value);
  if (s.IsNotFound()) return Malformed(key, "record missing for chunk " + std::to_string(id));
  RAG_RETURN_IF_ERROR(FromRocks(s, "reading chunk " + std::to_string(id) + " from '" + path_ + "'"));
  RAG_ASSIGN_OR_RETURN(const DocView doc, ParseDoc(key, value, options_.chunk_tokens));
  if (doc.first_chunk != first_chunk) {
    return Malformed(key, "first chunk " + std::to_string(doc.first_chunk) + ", chunk map says " +
                              std::to_string(first_chunk));
  }
  return MakeChunk(doc, doc_index, id, options_);
}

absl::StatusOr<std::vector<ChunkRecord>> ChunkStore::GetChunks(const std::vector<ChunkId>& ids) const {
  std::vector<int64_t> doc_of_id(ids.size());
  std::vector<int64_t> docs;            // unique, sorted: MultiGet wants sorted keys
  std::vector<ChunkId> doc_first_chunk;  // aligned with docs
  {
    std::shared_lock lock(map_mu_);
    for (size_t i = 0; i < ids.size(); ++i) {
      RAG_ASSIGN_OR_RETURN(doc_of_id[i], DocIndexOfChunk(ids[i]));
    }
    docs = doc_of_id;
    std::sort(docs.begin(), docs.end());
    docs.erase(std::unique(docs.begin(), docs.end()), docs.end());
    doc_first_chunk.reserve(docs.size());
    for (int64_t d : docs) doc_first_chunk.push_back(first_chunk_of_doc_[static_cast<size_t>(d)]);
  }

  std::vector<std::string> keys;
  keys.reserve(docs.size());
  for (int64_t d : docs) keys.push_back(DocKey(d));
  std::vector<rocksdb::Slice> key_slices(keys.begin(), keys.end());
  std::vector<rocksdb::PinnableSlice> values(docs.size());
  std::vector<rocksdb::Status> statuses(docs.size());
  if (!docs.empty()) {
    db_->MultiGet(rocksdb::ReadOptions(), db_->DefaultColumnFamily(), docs.size(), key_slices.data(), values.data(),
                  statuses.data(), /*sorted_input=*/true);
  }
  std::vector<DocView> views(docs.size());
  for (size_t j = 0; j < docs.size(); ++j) {
    if (statuses[j].IsNotFound()) return Malformed(keys[j], "record missing");
    RAG_RETURN_IF_ERROR(FromRocks(statuses[j], "reading chunks from '" + path_ + "'"));
    RAG_ASSIGN_OR_RETURN(views[j], ParseDoc(keys[j], values[j], options_.chunk_tokens));
    if (views[j].first_chunk != doc_first_chunk[j]) {
      return Malformed(keys[j], "first chunk " + std::to_string(views[j].first_chunk) + ", chunk map says " +
                                    std::to_string(doc_first_chunk[j]));
    }
  }
  std::vector<ChunkRecord> out;
  out.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    const size_t j = static_cast<size_t>(std::lower_bound(docs.begin(), docs.end(), doc_of_id[i]) - docs.begin());
    out.push_back(MakeChunk(views[j], doc_of_id[i], ids[i], options_));
  }
  return out;
}

absl::StatusOr<DocumentRecord> ChunkStore::GetDocument(const std::string& doc_id) const {
  const std::string context = "reading document '" + doc_id + "' from chunk store '" + path_ + "'";
  const std::string id_key = IdKey(doc_id);
  std::string index_value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), id_key, &index_value);
  if (s.IsNotFound()) return absl::NotFoundError(context + ": no such document");
  RAG_RETURN_IF_ERROR(FromRocks(s, context));
  if (index_value.size() != 8) return Malformed(id_key, "expected 8 bytes, got " + std::to_string(index_value.size()));
  const auto doc_index = static_cast<int64_t>(ReadBe64(index_value.data()));

  const std::string key = DocKey(doc_index);
  rocksdb::PinnableSlice value;
  s = db_->Get(rocksdb::ReadOptions(), db_->DefaultColumnFamily(), key, &value);
  if (s.IsNotFound()) return Malformed(id_key, "names document " + std::to_string(doc_index) + " which is missing");
  RAG_RETURN_IF_ERROR(FromRocks(s, context));
  RAG_ASSIGN_OR_RETURN(const DocView doc, ParseDoc(key, value, options_.chunk_tokens));
  if (doc.id != rocksdb::Slice(doc_id)) return Malformed(key, "holds another document id than " + id_key);

  DocumentRecord rec;
  rec.id = doc_id;
  rec.index = doc_index;
  rec.first_chunk = doc.first_chunk;
  rec.num_chunks = doc.num_chunks;
  ReadTokens(doc.tokens, 0, doc.num_tokens, &rec.tokens);
  rec.metadata_json = doc.metadata.ToString();
  return rec;
}

bool ChunkStore::HasDocument(const std::string& doc_id) const {
  rocksdb::PinnableSlice value;
  return db_->Get(rocksdb::ReadOptions(), db_->DefaultColumnFamily(), IdKey(doc_id), &value).ok();
}

absl::Status ChunkStore::ForEachChunk(ChunkId from, const std::function<bool(const ChunkRecord&)>& fn) const {
  const std::string context = "scanning chunk store '" + path_ + "'";
  if (from < 0) return absl::InvalidArgumentError(context + ": negative start chunk " + std::to_string(from));
  int64_t doc_index;
  ChunkId expected_first;
  {
    std::shared_lock lock(map_mu_);
    if (from >= num_chunks_) return absl::OkStatus();
    RAG_ASSIGN_OR_RETURN(doc_index, DocIndexOfChunk(from));
    expected_first = first_chunk_of_doc_[static_cast<size_t>(doc_index)];
  }

  // The iterator pins a snapshot: documents added meanwhile may be visited,
  // but never half of one.
  rocksdb::ReadOptions ro;
  ro.fill_cache = false;  // a full scan would only evict the hot blocks
  const std::string upper(1, static_cast<char>(kDocPrefix + 1));
  rocksdb::Slice upper_slice(upper);
  ro.iterate_upper_bound = &upper_slice;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro));
  for (it->Seek(DocKey(doc_index)); it->Valid(); it->Next(), ++doc_index) {
    const rocksdb::Slice key = it->key();
    if (key.size() != kNumericKeySize || static_cast<int64_t>(ReadBe64(key.data() + 1)) != doc_index) {
      return Malformed(key, "expected document " + std::to_string(doc_index) + " here");
    }
    RAG_ASSIGN_OR_RETURN(const DocView doc, ParseDoc(key, it->value(), options_.chunk_tokens));
    if (doc.first_chunk != expected_first) {
      return Malformed(key, "first chunk " + std::to_string(doc.first_chunk) + ", expected " +
                                std::to_string(expected_first));
    }
    for (ChunkId c = std::max(from, doc.first_chunk); c < doc.first_chunk + doc.num_chunks; ++c) {
      if (!fn(MakeChunk(doc, doc_index, c, options_))) return absl::OkStatus();
    }
    expected_first = doc.first_chunk + doc.num_chunks;
  }
  return FromRocks(it->status(), context);
}

int64_t ChunkStore::num_documents() const {
  std::shared_lock lock(map_mu_);
  return static_cast<int64_t>(first_chunk_of_doc_.size());
}

int64_t ChunkStore::num_chunks() const {
  std::shared_lock lock(map_mu_);
  return num_chunks_;
}

int64_t ChunkStore::num_tokens() const {
  std::shared_lock lock(map_mu_);
  return num_tokens_;
}

absl::Status ChunkStore::PutMeta(const std::string& key, const std::string& value) {
  const std::string context = "writing metadata '" + key + "' to chunk store '" + path_ + "'";
  if (options_.read_only) return absl::FailedPreconditionError(context + ": the store is open read-only");
  if (key.empty()) return absl::InvalidArgumentError(context + ": empty key");
  rocksdb::WriteOptions wo;
  wo.sync = options_.sync_writes;
  return FromRocks(db_->Put(wo, MetaKey(key), value), context);
}

absl::StatusOr<std::string> ChunkStore::GetMeta(const std::string& key) const {
  const std::string context = "reading metadata '" + key + "' from chunk store '" + path_ + "'";
  std::string value;
  const rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), MetaKey(key), &value);
  if (s.IsNotFound()) return absl::NotFoundError(context + ": no such key");
  RAG_RETURN_IF_ERROR(FromRocks(s, context));
  return value;
}

absl::Status ChunkStore::Flush() {
  const std::string context = "flushing chunk store '" + path_ + "'";
  if (options_.read_only) return absl::FailedPreconditionError(context + ": the store is open read-only");
  RAG_RETURN_IF_ERROR(FromRocks(db_->FlushWAL(/*sync=*/true), context));
  rocksdb::FlushOptions fo;
  fo.wait = true;
  return FromRocks(db_->Flush(fo), context);
}

}  // namespace rag::retriever

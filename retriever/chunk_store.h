// ChunkStore: the RocksDB store of an index directory (INDEX_DIR/chunks.rocksdb/)
// holding documents, their RETRO chunks (chunk id -> document, offset, tokens,
// continuation) and small metadata. Thread-safe: any number of concurrent
// readers, and writers serialised internally (one AddDocument at a time).
//
// On-disk format (version kFormatVersion). Integers in keys are big-endian so
// RocksDB's bytewise order equals numeric order; tokens are int32
// little-endian. Keys, by their first byte:
//   "S"                     config: u32 format version, i32 chunk_tokens,
//                           i32 continuation_tokens (12 bytes).
//   "C"                     counters: i64 num_documents, num_chunks, num_tokens.
//   "D" + u64 doc_index     document record: i64 first_chunk, i64 num_chunks,
//                           u32 id length, u32 metadata length, i64 num_tokens,
//                           id bytes, metadata bytes, tokens.
//   "F" + u64 first_chunk   chunk map: i64 doc_index, i64 num_chunks,
//                           i64 num_tokens (scanned at Open).
//   "I" + doc id bytes      i64 doc_index.
//   "M" + key               user metadata (PutMeta / GetMeta).
// A document's tokens are stored once; chunk c of a document starting at chunk
// f covers tokens [(c - f) * chunk_tokens, +chunk_tokens) and its
// continuation the next continuation_tokens, so "chunk + continuation" is one
// read of the document record.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace rocksdb {
class DB;
}  // namespace rocksdb

namespace rag::retriever {

using ChunkId = int64_t;
using Token = int32_t;

struct ChunkStoreOptions {
  // Tokens per chunk (RETRO's m). Fixed when the store is created; reopening
  // with another value fails. Default: 64
  int32_t chunk_tokens = 64;
  // Tokens of the continuation that follows each chunk within its document.
  // Fixed when the store is created. Default: 64
  int32_t continuation_tokens = 64;
  // Create the store when `path` does not exist (or is an empty directory).
  // Default: true
  bool create_if_missing = true;
  // Open with RocksDB's OpenForReadOnly; writes fail with FailedPrecondition.
  // Documents added by another process after Open are not seen. Default: false
  bool read_only = false;
  // fsync the write-ahead log on every write, so AddDocument / PutMeta are
  // durable when they return. A bulk build may turn this off and call Flush()
  // at checkpoints: a machine crash then loses a suffix of documents, never
  // part of one (each document is one atomic WriteBatch). Default: true
  bool sync_writes = true;
};

// One chunk with its continuation. `tokens` holds 1..chunk_tokens tokens
// (fewer only for a document's last chunk); `continuation` holds up to
// continuation_tokens and is empty at a document's end.
struct ChunkRecord {
  ChunkId id = 0;
  std::string doc_id;
  int64_t doc_index = 0;  // insertion order of the document, 0-based
  int64_t offset = 0;     // position of tokens[0] in the document
  std::vector<Token> tokens;
  std::vector<Token> continuation;
};

struct DocumentRecord {
  std::string id;
  int64_t index = 0;  // insertion order, 0-based
  ChunkId first_chunk = 0;
  int64_t num_chunks = 0;
  std::vector<Token> tokens;
  std::string metadata_json;
};

class ChunkStore {
 public:
  static constexpr uint32_t kFormatVersion = 1;

  // Opens (or creates, per `options`) the store at `path`. Errors:
  // InvalidArgument for bad options; NotFound when the store does not exist
  // and may not be created; FailedPrecondition when `path` is not a chunk
  // store (a file, a non-empty directory without a RocksDB, a RocksDB without
  // our config record), when its format version differs, or when it was
  // created with other chunk_tokens / continuation_tokens; DataLoss for
  // corrupt files or records. Never crashes on a damaged directory.
  static absl::StatusOr<std::unique_ptr<ChunkStore>> Open(const std::string& path, const ChunkStoreOptions& options);

  ~ChunkStore();
  ChunkStore(const ChunkStore&) = delete;
  ChunkStore& operator=(const ChunkStore&) = delete;

  // Stores a document, its chunk mapping and the new counters in one atomic
  // WriteBatch (durable on return when options().sync_writes), and returns
  // the chunk ids assigned: consecutive, continuing after the last stored
  // chunk. `metadata_json` must be valid JSON; "" is stored as "{}".
  // Errors: InvalidArgument for an empty id, empty tokens, too many tokens
  // or bad JSON; AlreadyExists if `doc_id` is stored (nothing changes);
  // FailedPrecondition on a read-only store.
  absl::StatusOr<std::vector<ChunkId>> AddDocument(const std::string& doc_id, const std::vector<Token>& tokens,
                                                   const std::string& metadata_json = "{}");

  // The chunk with its continuation: one RocksDB read. NotFound for an id
  // outside [0, num_chunks()); DataLoss for a malformed record.
  absl::StatusOr<ChunkRecord> GetChunk(ChunkId id) const;

  // GetChunk for each id, in the same order (duplicates allowed); each
  // document is read once, with one MultiGet for the batch. Fails as a whole
  // on the first unknown id.
  absl::StatusOr<std::vector<ChunkRecord>> GetChunks(const std::vector<ChunkId>& ids) const;

  // NotFound when `doc_id` is not stored.
  absl::StatusOr<DocumentRecord> GetDocument(const std::string& doc_id) const;
  // False when not stored or on a read error.
  bool HasDocument(const std::string& doc_id) const;

  // Calls `fn` on every chunk with id >= `from` in id order (over a
  // consistent snapshot taken at the call), stopping early when `fn` returns
  // false. `from` past the end visits nothing. InvalidArgument for
  // from < 0; DataLoss for malformed records.
  absl::Status ForEachChunk(ChunkId from, const std::function<bool(const ChunkRecord&)>& fn) const;

  int64_t num_documents() const;
  int64_t num_chunks() const;
  int64_t num_tokens() const;

  // Small metadata strings (build progress, model hash...), kept apart from
  // documents. PutMeta writes per options().sync_writes; InvalidArgument for
  // an empty key, FailedPrecondition when read-only. GetMeta: NotFound.
  absl::Status PutMeta(const std::string& key, const std::string& value);
  absl::StatusOr<std::string> GetMeta(const std::string& key) const;

  // Writes memtables to SST files and syncs the write-ahead log, so that
  // everything written so far is durable and reopening does not replay it.
  // FailedPrecondition when read-only.
  absl::Status Flush();

  const ChunkStoreOptions& options() const { return options_; }
  const std::string& path() const { return path_; }

 private:
  ChunkStore(std::string path, ChunkStoreOptions options, std::unique_ptr<rocksdb::DB> db);

  absl::Status LoadConfig();
  absl::Status LoadChunkMap();
  // Index of the document holding chunk `id`; NotFound outside the store.
  absl::StatusOr<int64_t> DocIndexOfChunk(ChunkId id) const;

  const std::string path_;
  const ChunkStoreOptions options_;
  std::unique_ptr<rocksdb::DB> db_;

  // Serialises AddDocument so doc indices and chunk ids are assigned densely.
  std::mutex write_mu_;
  // Guards the members below. Readers take it shared; AddDocument takes it
  // exclusive only after its WriteBatch is durable, so a chunk id visible in
  // the map always has its record on disk.
  mutable std::shared_mutex map_mu_;
  std::vector<ChunkId> first_chunk_of_doc_;  // index: doc_index; strictly increasing
  int64_t num_chunks_ = 0;
  int64_t num_tokens_ = 0;
};

}  // namespace rag::retriever

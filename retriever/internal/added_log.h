// added.log, the durable record of keys added to a served datastore
// (Datastore::AddDocumentKeys), and the in-memory keys it is loaded into.
// One record per document:
//   "RAGADD01" | u32 dim | u32 id bytes | i64 n | i32 doc | u32 0 | id |
//   n*dim fp16 keys | n int32 values | u64 XXH3 of the record's bytes before it
// written with one pwrite and an fsync before AddDocumentKeys returns. A
// record cut short by a crash fails its length or checksum: Open stops
// there, and the next append overwrites it. The coding functions are
// stateless and thread-safe; Datastore::Added documents its own locking.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <unordered_set>
#include <vector>

#include "retriever/datastore.h"
#include "retriever/internal/posix_io.h"

namespace rag::retriever {

namespace internal {

// Longest document id a record holds.
inline constexpr uint32_t kMaxAddedIdBytes = 1 << 20;

// One record of added.log, located in the log's bytes.
struct AddedRecord {
  std::string id;
  int64_t n = 0;       // keys
  int32_t doc = 0;     // document index
  size_t keys_at = 0;  // offset of its n*dim fp16 keys, then its n int32 values
};

// The bytes of one record: `n` keys of `dim` halves and n values.
std::string EncodeAddedRecord(uint32_t dim, const std::string& doc_id, int64_t n, int32_t doc, const uint16_t* halves,
                              const int32_t* values);

// The whole records at the start of `log` for keys of `dim`, in order; stops
// at the first torn or corrupt one. *valid_bytes is the length they span.
std::vector<AddedRecord> ParseAddedLog(const std::string& log, int dim, size_t* valid_bytes);

}  // namespace internal

// Keys added after the build, held in memory (fp16-rounded floats) and
// searched exactly next to keys.faiss.
struct Datastore::Added {
  mutable std::shared_mutex mu;  // guards the vectors and doc_ids
  std::vector<float> keys;       // [n, dim], fp16-rounded
  std::vector<int32_t> values, docs;
  std::unordered_set<std::string> doc_ids;
  std::mutex write_mu;  // serializes appends to added.log
  std::string path;
  int64_t valid_bytes = 0;  // whole records at the start of added.log
  internal::Fd fd;          // opened by the first durable add
};

}  // namespace rag::retriever

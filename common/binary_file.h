// Binary-file building blocks shared by the project's hand-written formats
// (datastore files and added-keys log, vector index, suffix array, RETRO
// neighbour table): 8-byte magics, little-endian fixed-width fields at byte
// offsets, XXH3-64 checksums (one-shot and streamed) and the durable write
// (temporary file, fsync, rename, fsync of the directory). Each format keeps
// its own layout, version rule and error messages; this unit only codes the
// bytes, so every layout written before stays byte-identical.
// Free functions are thread-safe; a StreamingChecksum is thread-compatible.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/file_util.h"

namespace rag {

// Every format starts with 8 ASCII bytes naming it ("RAGVIDX1", ...).
inline constexpr size_t kMagicBytes = 8;
using Magic = char[kMagicBytes];

// Writes `magic` at `p` (8 bytes).
void PutMagic(void* p, const Magic& magic);
// Whether the `size` bytes at `p` start with `magic` (false when shorter).
bool HasMagic(const void* p, size_t size, const Magic& magic);

// Little-endian fields at `p`, whatever the host's byte order.
void PutU32(void* p, uint32_t v);
void PutU64(void* p, uint64_t v);
uint32_t GetU32(const void* p);
uint64_t GetU64(const void* p);
inline void PutI32(void* p, int32_t v) { PutU32(p, static_cast<uint32_t>(v)); }
inline void PutI64(void* p, int64_t v) { PutU64(p, static_cast<uint64_t>(v)); }
inline int32_t GetI32(const void* p) { return static_cast<int32_t>(GetU32(p)); }
inline int64_t GetI64(const void* p) { return static_cast<int64_t>(GetU64(p)); }

// The same fields appended to `out`.
void AppendMagic(std::string* out, const Magic& magic);
void AppendU32(std::string* out, uint32_t v);
void AppendU64(std::string* out, uint64_t v);
inline void AppendI32(std::string* out, int32_t v) { AppendU32(out, static_cast<uint32_t>(v)); }
inline void AppendI64(std::string* out, int64_t v) { AppendU64(out, static_cast<uint64_t>(v)); }

// XXH3-64 of `size` bytes at `data`: the checksum of every format.
uint64_t Checksum64(const void* data, size_t size);
inline uint64_t Checksum64(const std::string& data) { return Checksum64(data.data(), data.size()); }

// XXH3-64 over bytes given in pieces; equals Checksum64 of their
// concatenation.
class StreamingChecksum {
 public:
  // ResourceExhausted when no hash state can be allocated.
  static absl::StatusOr<StreamingChecksum> Create();
  StreamingChecksum(StreamingChecksum&&) noexcept;
  StreamingChecksum& operator=(StreamingChecksum&&) noexcept;
  ~StreamingChecksum();

  void Update(const void* data, size_t size);
  // The checksum of everything so far; more Updates may follow.
  uint64_t Digest() const;

 private:
  struct State;
  explicit StreamingChecksum(State* state);
  State* state_ = nullptr;
};

}  // namespace rag

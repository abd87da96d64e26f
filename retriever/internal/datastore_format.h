// The datastore's on-disk coding (format in retriever/datastore.h): the
// 64-byte header shared by keys.f16, values.i32 and docs.i32, payload sizes,
// and bulk fp16 -> float32 conversion. Stateless and thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "common/binary_file.h"
#include "retriever/datastore.h"

namespace rag::retriever::internal {

// The payloads are the host's int32 and uint16 arrays, written and mapped as
// they are: the format is little-endian, so the host must be too.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the datastore format assumes a little-endian host");

inline constexpr uint32_t kFormatVersion = kDatastoreFormatVersion;
inline constexpr size_t kHeaderBytes = static_cast<size_t>(kDatastoreHeaderBytes);
// Smallest float magnitude that rounds to inf in fp16 (65504 + half an ulp).
inline constexpr float kHalfOverflow = 65520.0f;

// Which of the three data files, and what its header must say.
struct FileKind {
  const char* name;
  Magic magic;
  size_t element_bytes;
};
inline constexpr FileKind kKeysKind = {kDatastoreKeysFile, {'R', 'A', 'G', 'K', 'E', 'Y', 'S', '1'}, 2};
inline constexpr FileKind kValuesKind = {kDatastoreValuesFile, {'R', 'A', 'G', 'V', 'A', 'L', 'S', '1'}, 4};
inline constexpr FileKind kDocsKind = {kDatastoreDocsFile, {'R', 'A', 'G', 'D', 'O', 'C', 'S', '1'}, 4};
// In the order of DatastoreWriter's files: keys, values, docs.
inline constexpr const FileKind* kKinds[3] = {&kKeysKind, &kValuesKind, &kDocsKind};

struct Header {
  uint32_t version = kFormatVersion;
  uint32_t width = 0;
  int64_t rows = 0;
  uint64_t payload_hash = 0;
};

// The 64 header bytes of `kind` saying `h`, with the header checksum.
void EncodeHeader(const FileKind& kind, const Header& h, unsigned char out[kHeaderBytes]);

// Parses and checks a header read from `path` (`got` bytes of it): DataLoss
// for a bad magic, a short or corrupt header or impossible fields,
// FailedPrecondition for another format version.
absl::StatusOr<Header> DecodeHeader(const FileKind& kind, const unsigned char* p, size_t got, const std::string& path);

// Payload bytes of `rows` rows, or -1 when that overflows a file size.
int64_t PayloadBytes(const FileKind& kind, uint32_t width, int64_t rows);

// Every half as a float: bulk conversion is a table lookup.
const float* HalfTable();
void HalvesToFloats(const uint16_t* in, size_t n, float* out);

}  // namespace rag::retriever::internal

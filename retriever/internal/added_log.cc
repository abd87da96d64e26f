#include "retriever/internal/added_log.h"

#include "common/binary_file.h"

namespace rag::retriever::internal {
namespace {

constexpr Magic kAddedMagic = {'R', 'A', 'G', 'A', 'D', 'D', '0', '1'};
constexpr size_t kAddedHeaderBytes = 32;

}  // namespace

std::string EncodeAddedRecord(uint32_t dim, const std::string& doc_id, int64_t n, int32_t doc, const uint16_t* halves,
                              const int32_t* values) {
  std::string record(kAddedHeaderBytes, '\0');
  PutMagic(record.data(), kAddedMagic);
  PutU32(record.data() + 8, dim);
  PutU32(record.data() + 12, static_cast<uint32_t>(doc_id.size()));
  PutI64(record.data() + 16, n);
  PutI32(record.data() + 24, doc);
  record += doc_id;
  // The payload arrays are little-endian, as the (asserted) host.
  const size_t count = static_cast<size_t>(n);
  record.append(reinterpret_cast<const char*>(halves), count * dim * 2);
  record.append(reinterpret_cast<const char*>(values), count * 4);
  AppendU64(&record, Checksum64(record));
  return record;
}

std::vector<AddedRecord> ParseAddedLog(const std::string& log, int dim, size_t* valid_bytes) {
  std::vector<AddedRecord> records;
  size_t at = 0;
  const size_t d = static_cast<size_t>(dim);
  while (log.size() - at >= kAddedHeaderBytes) {
    const char* h = log.data() + at;
    const uint32_t record_dim = GetU32(h + 8);
    const uint32_t id_bytes = GetU32(h + 12);
    const int64_t n = GetI64(h + 16);
    const int32_t doc = GetI32(h + 24);
    if (!HasMagic(h, kAddedHeaderBytes, kAddedMagic) || record_dim != static_cast<uint32_t>(dim) || id_bytes == 0 ||
        id_bytes > kMaxAddedIdBytes || n < 0 || n > (int64_t{1} << 32) || doc < 0) {
      break;
    }
    const size_t body = id_bytes + static_cast<size_t>(n) * (d * 2 + 4);
    if (log.size() - at - kAddedHeaderBytes < body + 8) break;
    if (Checksum64(h, kAddedHeaderBytes + body) != GetU64(h + kAddedHeaderBytes + body)) break;
    records.push_back({std::string(h + kAddedHeaderBytes, id_bytes), n, doc, at + kAddedHeaderBytes + id_bytes});
    at += kAddedHeaderBytes + body + 8;
  }
  *valid_bytes = at;
  return records;
}

}  // namespace rag::retriever::internal

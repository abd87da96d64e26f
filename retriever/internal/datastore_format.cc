#include "retriever/internal/datastore_format.h"

#include <cstring>
#include <limits>

namespace rag::retriever {
namespace internal {
namespace {

constexpr size_t kHashedHeaderBytes = 32;  // the header checksum covers [0, 32)
constexpr size_t kHeaderEnd = 40;          // then zeros up to kHeaderBytes

}  // namespace

void EncodeHeader(const FileKind& kind, const Header& h, unsigned char out[kHeaderBytes]) {
  std::memset(out, 0, kHeaderBytes);
  PutMagic(out, kind.magic);
  PutU32(out + 8, h.version);
  PutU32(out + 12, h.width);
  PutI64(out + 16, h.rows);
  PutU64(out + 24, h.payload_hash);
  PutU64(out + 32, Checksum64(out, kHashedHeaderBytes));
}

absl::StatusOr<Header> DecodeHeader(const FileKind& kind, const unsigned char* p, size_t got, const std::string& path) {
  auto data_loss = [&](const std::string& why) { return absl::DataLossError("'" + path + "': " + why); };
  if (got >= kMagicBytes && !HasMagic(p, got, kind.magic)) {
    return data_loss(std::string("not a datastore ") + kind.name + " file (bad magic)");
  }
  if (got < kHeaderBytes) return data_loss("truncated header (" + std::to_string(got) + " bytes)");
  if (GetU64(p + kHashedHeaderBytes) != Checksum64(p, kHashedHeaderBytes)) {
    return data_loss("header checksum mismatch (corrupt file)");
  }
  for (size_t i = kHeaderEnd; i < kHeaderBytes; ++i) {
    if (p[i] != 0) return data_loss("reserved header bytes are not zero (corrupt file)");
  }
  Header h;
  h.version = GetU32(p + 8);
  h.width = GetU32(p + 12);
  h.rows = GetI64(p + 16);
  h.payload_hash = GetU64(p + 24);
  if (h.version != kFormatVersion) {
    return absl::FailedPreconditionError("'" + path + "': datastore format version " + std::to_string(h.version) +
                                         ", this build reads version " + std::to_string(kFormatVersion));
  }
  if (h.rows < 0) return data_loss("negative row count in header");
  if (h.width == 0 || h.width > static_cast<uint32_t>(kDatastoreMaxDim)) {
    return data_loss("row width " + std::to_string(h.width) + " in header");
  }
  if (kind.element_bytes == 4 && h.width != 1)
    return data_loss("row width " + std::to_string(h.width) + ", expected 1");
  return h;
}

int64_t PayloadBytes(const FileKind& kind, uint32_t width, int64_t rows) {
  const int64_t row_bytes = static_cast<int64_t>(width) * static_cast<int64_t>(kind.element_bytes);
  if (rows > (std::numeric_limits<int64_t>::max() - static_cast<int64_t>(kHeaderBytes)) / row_bytes) return -1;
  return rows * row_bytes;
}

const float* HalfTable() {
  static const float* table = [] {
    auto* t = new float[65536];
    for (uint32_t h = 0; h < 65536; ++h) t[h] = HalfToFloat(static_cast<uint16_t>(h));
    return t;
  }();
  return table;
}

void HalvesToFloats(const uint16_t* in, size_t n, float* out) {
  const float* table = HalfTable();
  for (size_t i = 0; i < n; ++i) out[i] = table[in[i]];
}

}  // namespace internal

// --- fp16 (declared in retriever/datastore.h) ---

uint16_t FloatToHalf(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t abs = bits & 0x7fffffffu;
  if (abs >= 0x7f800000u) {  // inf or NaN
    if (abs == 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00u);
    // NaN: keep the top payload bits, force the quiet bit so it stays a NaN.
    return static_cast<uint16_t>(sign | 0x7e00u | ((abs >> 13) & 0x3ffu));
  }
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520 rounds to inf
  const uint32_t exp = abs >> 23;
  if (abs >= 0x38800000u) {  // >= 2^-14: a normal half
    const uint32_t mant = abs & 0x7fffffu;
    uint32_t h = ((exp - 112u) << 10) | (mant >> 13);
    const uint32_t rem = mant & 0x1fffu;
    // A carry out of the mantissa correctly bumps the exponent.
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
    return static_cast<uint16_t>(sign | h);
  }
  // Subnormal half: the value is mant * 2^(exp - 150) = h * 2^-24 with
  // h = mant >> (126 - exp). Below 2^-25 (exp < 102) everything rounds to 0.
  if (exp < 102) return sign;
  const uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126u - exp;  // 14 .. 24
  uint32_t h = mant >> shift;
  const uint32_t rem = mant & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1u);
  if (rem > half || (rem == half && (h & 1u))) ++h;  // may become the smallest normal, 0x0400
  return static_cast<uint16_t>(sign | h);
}

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {
    // Subnormal: normalise the mantissa.
    uint32_t e = 113;
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      --e;
    }
    bits = sign | (e << 23) | ((mant & 0x3ffu) << 13);
  }
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

}  // namespace rag::retriever

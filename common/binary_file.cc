#include "common/binary_file.h"

#include <xxhash.h>

#include <cstring>
#include <utility>

namespace rag {

void PutMagic(void* p, const Magic& magic) { std::memcpy(p, magic, kMagicBytes); }

bool HasMagic(const void* p, size_t size, const Magic& magic) {
  return size >= kMagicBytes && std::memcmp(p, magic, kMagicBytes) == 0;
}

void PutU32(void* p, uint32_t v) {
  auto* b = static_cast<unsigned char*>(p);
  for (int i = 0; i < 4; ++i) b[i] = static_cast<unsigned char>((v >> (8 * i)) & 0xff);
}

void PutU64(void* p, uint64_t v) {
  auto* b = static_cast<unsigned char*>(p);
  for (int i = 0; i < 8; ++i) b[i] = static_cast<unsigned char>((v >> (8 * i)) & 0xff);
}

uint32_t GetU32(const void* p) {
  const auto* b = static_cast<const unsigned char*>(p);
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | b[i];
  return v;
}

uint64_t GetU64(const void* p) {
  const auto* b = static_cast<const unsigned char*>(p);
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | b[i];
  return v;
}

void AppendMagic(std::string* out, const Magic& magic) { out->append(magic, kMagicBytes); }

void AppendU32(std::string* out, uint32_t v) {
  char b[4];
  PutU32(b, v);
  out->append(b, sizeof(b));
}

void AppendU64(std::string* out, uint64_t v) {
  char b[8];
  PutU64(b, v);
  out->append(b, sizeof(b));
}

uint64_t Checksum64(const void* data, size_t size) { return XXH3_64bits(data, size); }

struct StreamingChecksum::State {
  XXH3_state_t* xxh;
};

absl::StatusOr<StreamingChecksum> StreamingChecksum::Create() {
  XXH3_state_t* xxh = XXH3_createState();
  if (xxh == nullptr || XXH3_64bits_reset(xxh) != XXH_OK) {
    XXH3_freeState(xxh);
    return absl::ResourceExhaustedError("cannot allocate a hash state");
  }
  return StreamingChecksum(new State{xxh});
}

StreamingChecksum::StreamingChecksum(State* state) : state_(state) {}

StreamingChecksum::StreamingChecksum(StreamingChecksum&& o) noexcept : state_(std::exchange(o.state_, nullptr)) {}

StreamingChecksum& StreamingChecksum::operator=(StreamingChecksum&& o) noexcept {
  if (this != &o) std::swap(state_, o.state_);
  return *this;
}

StreamingChecksum::~StreamingChecksum() {
  if (state_ != nullptr) {
    XXH3_freeState(state_->xxh);
    delete state_;
  }
}

void StreamingChecksum::Update(const void* data, size_t size) { XXH3_64bits_update(state_->xxh, data, size); }

uint64_t StreamingChecksum::Digest() const { return XXH3_64bits_digest(state_->xxh); }

}  // namespace rag

// A BPE merge candidate (left id, right id) packed into one 64-bit key: the
// key of the tokenizer's pair table (encoding) and of the pair counts
// (training), which must agree on it. Header-only, stateless.
#pragma once

#include <cstdint>

#include "lm/tokenizer.h"

namespace rag::lm::internal {

inline uint64_t PairKey(TokenId left, TokenId right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}
inline TokenId KeyLeft(uint64_t key) { return static_cast<TokenId>(key >> 32); }
inline TokenId KeyRight(uint64_t key) { return static_cast<TokenId>(key & 0xffffffffu); }

}  // namespace rag::lm::internal

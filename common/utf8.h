// UTF-8 validity: token pieces and chunk texts may split a multi-byte
// character, but protobuf strings and JSON must be UTF-8. Pure functions,
// thread-safe.
#pragma once

#include <string>

namespace rag {

// `bytes` with every invalid UTF-8 sequence (a truncated or overlong
// sequence, a surrogate, a code point past U+10FFFF) replaced, byte by byte,
// by U+FFFD.
std::string ToValidUtf8(const std::string& bytes);

// Whether `bytes` is entirely valid UTF-8 (by ToValidUtf8's rule).
bool IsValidUtf8(const std::string& bytes);

}  // namespace rag

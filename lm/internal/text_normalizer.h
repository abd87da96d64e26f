// The normalization step of Tokenizer::Encode: Unicode NFC (ICU) on each
// maximal run of valid UTF-8, invalid bytes kept as they are, and bytes that
// have no token replaced by U+FFFD. The only file that includes ICU is
// text_normalizer.cc. Stateless; thread-safe.
#pragma once

#include <array>
#include <cstddef>
#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace rag::lm::internal {

// Length (1..4) of the well-formed UTF-8 sequence (RFC 3629: no overlong
// forms, no surrogates, nothing above U+10FFFF) at the start of `s`, or 0 if
// `s` is empty or starts with an ill-formed one.
size_t Utf8SequenceLength(std::string_view s);

// Bytes that occur in no well-formed UTF-8 text: 0xC0, 0xC1, 0xF5..0xFF.
bool NeverInUtf8(unsigned char b);

// Loads ICU's NFC data once. Internal error if ICU cannot provide it (a
// broken installation); every other function here assumes it succeeded.
absl::Status InitNfc();

// Appends `text` to *out with NFC applied to each maximal run of valid
// UTF-8 if `nfc` (composition never crosses an invalid byte), and every
// invalid byte b with !has_token[b] replaced by U+FFFD (EF BF BD).
void AppendNormalized(std::string_view text, bool nfc, const std::array<bool, 256>& has_token, std::string* out);

// NFC of valid UTF-8 `text` (InvalidArgument if it is not valid UTF-8).
absl::Status Nfc(std::string_view text, std::string* out);

}  // namespace rag::lm::internal

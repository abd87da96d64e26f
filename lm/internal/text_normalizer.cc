#include "lm/internal/text_normalizer.h"

#include <unicode/bytestream.h>
#include <unicode/normalizer2.h>
#include <unicode/stringpiece.h>
#include <unicode/utypes.h>

namespace rag::lm::internal {
namespace {

// ICU owns the instance (a process-wide singleton); nullptr if unavailable.
const icu::Normalizer2* NfcInstance() {
  static const icu::Normalizer2* instance = [] {
    UErrorCode status = U_ZERO_ERROR;
    const icu::Normalizer2* n = icu::Normalizer2::getNFCInstance(status);
    return U_SUCCESS(status) ? n : nullptr;
  }();
  return instance;
}

// NFC of one valid UTF-8 run, appended. ASCII is already NFC, and most text
// is already normalized: both are copied without a rewrite.
void AppendNfcRun(std::string_view run, std::string* out) {
  bool ascii = true;
  for (char c : run) {
    if (static_cast<unsigned char>(c) >= 0x80) {
      ascii = false;
      break;
    }
  }
  const icu::Normalizer2* nfc = NfcInstance();
  if (ascii || nfc == nullptr) {
    out->append(run);
    return;
  }
  const icu::StringPiece piece(run.data(), static_cast<int32_t>(run.size()));
  UErrorCode status = U_ZERO_ERROR;
  if (nfc->isNormalizedUTF8(piece, status) && U_SUCCESS(status)) {
    out->append(run);
    return;
  }
  const size_t before = out->size();
  status = U_ZERO_ERROR;
  icu::StringByteSink<std::string> sink(out);
  nfc->normalizeUTF8(0, piece, sink, nullptr, status);
  if (U_FAILURE(status)) {  // not expected on valid UTF-8; keep the text as is
    out->resize(before);
    out->append(run);
  }
}

}  // namespace

size_t Utf8SequenceLength(std::string_view s) {
  if (s.empty()) return 0;
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  const unsigned char b0 = p[0];
  if (b0 < 0x80) return 1;
  auto cont = [&](size_t i) { return i < n && (p[i] & 0xC0) == 0x80; };
  if (b0 >= 0xC2 && b0 <= 0xDF) return cont(1) ? 2 : 0;
  if (b0 >= 0xE0 && b0 <= 0xEF) {
    if (n < 2) return 0;
    // E0 needs A0..BF (no overlong forms), ED needs 80..9F (no surrogates).
    const unsigned char lo = b0 == 0xE0 ? 0xA0 : 0x80;
    const unsigned char hi = b0 == 0xED ? 0x9F : 0xBF;
    if (p[1] < lo || p[1] > hi) return 0;
    return cont(2) ? 3 : 0;
  }
  if (b0 >= 0xF0 && b0 <= 0xF4) {
    if (n < 2) return 0;
    // F0 needs 90..BF (no overlong forms), F4 needs 80..8F (<= U+10FFFF).
    const unsigned char lo = b0 == 0xF0 ? 0x90 : 0x80;
    const unsigned char hi = b0 == 0xF4 ? 0x8F : 0xBF;
    if (p[1] < lo || p[1] > hi) return 0;
    return cont(2) && cont(3) ? 4 : 0;
  }
  return 0;
}

bool NeverInUtf8(unsigned char b) { return b == 0xC0 || b == 0xC1 || b >= 0xF5; }

absl::Status InitNfc() {
  if (NfcInstance() == nullptr) return absl::InternalError("ICU: no NFC normalizer data");
  return absl::OkStatus();
}

void AppendNormalized(std::string_view text, bool nfc, const std::array<bool, 256>& has_token, std::string* out) {
  size_t i = 0;
  const size_t n = text.size();
  while (i < n) {
    size_t j = i;
    while (j < n) {
      const size_t len = Utf8SequenceLength(text.substr(j));
      if (len == 0) break;
      j += len;
    }
    if (j > i) {
      if (nfc) {
        AppendNfcRun(text.substr(i, j - i), out);
      } else {
        out->append(text.substr(i, j - i));
      }
    }
    if (j < n) {  // one invalid byte
      const auto b = static_cast<unsigned char>(text[j]);
      if (has_token[b]) {
        out->push_back(static_cast<char>(b));
      } else {
        out->append("\xEF\xBF\xBD");
      }
      ++j;
    }
    i = j;
  }
}

absl::Status Nfc(std::string_view text, std::string* out) {
  for (size_t i = 0; i < text.size();) {
    const size_t len = Utf8SequenceLength(text.substr(i));
    if (len == 0) return absl::InvalidArgumentError("not valid UTF-8 at byte " + std::to_string(i));
    i += len;
  }
  out->clear();
  AppendNfcRun(text, out);
  return absl::OkStatus();
}

}  // namespace rag::lm::internal

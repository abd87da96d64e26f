#include "lm/internal/pretokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <string>

#include "absl/status/status.h"

namespace rag::lm::internal {

struct Pretokenizer::Regex {
  pcre2_code* code = nullptr;
  ~Regex() { pcre2_code_free(code); }
};

namespace {

// One match-data block per thread, reused across calls: Split() runs once
// per document (or per request), and a malloc per call would show up in the
// encode benchmark. One ovector pair is all the pattern needs (no groups).
struct ThreadMatchData {
  pcre2_match_data* data = pcre2_match_data_create(1, nullptr);
  ~ThreadMatchData() { pcre2_match_data_free(data); }
};

}  // namespace

Pretokenizer::Pretokenizer(std::unique_ptr<Regex> regex) : regex_(std::move(regex)) {}
Pretokenizer::~Pretokenizer() = default;

absl::StatusOr<std::unique_ptr<Pretokenizer>> Pretokenizer::Create() {
  int error_code = 0;
  PCRE2_SIZE error_offset = 0;
  // MATCH_INVALID_UTF: arbitrary bytes are legal input; invalid sequences
  // simply never match, and Split() turns them into pieces of their own.
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(kGpt2SplitPattern),
                                   PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF,
                                   &error_code, &error_offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error_code, message, sizeof(message));
    return absl::InternalError("compiling the GPT-2 split pattern at offset " + std::to_string(error_offset) +
                               ": " + reinterpret_cast<const char*>(message));
  }
  auto regex = std::make_unique<Regex>();
  regex->code = code;
  // A failed JIT compile is not an error: pcre2_match() falls back to the
  // interpreter, which gives the same matches, only slower.
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  return std::unique_ptr<Pretokenizer>(new Pretokenizer(std::move(regex)));
}

void Pretokenizer::Split(std::string_view text, absl::FunctionRef<void(std::string_view)> emit) const {
  thread_local ThreadMatchData match;
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  const size_t n = text.size();
  size_t pos = 0;
  while (pos < n) {
    int rc = pcre2_match(regex_->code, subject, n, pos, 0, match.data, nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) {
      emit(text.substr(pos));
      return;
    }
    if (rc < 0) {
      // Resource limits (JIT stack, match limit) on pathological input: emit
      // one byte and go on, so Encode still never fails and round-trips.
      emit(text.substr(pos, 1));
      ++pos;
      continue;
    }
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match.data);
    size_t start = ovector[0];
    size_t end = ovector[1];
    if (start < pos || end <= start || end > n) {
      // Cannot happen (every alternative consumes a character); kept so a
      // PCRE2 surprise degrades to byte pieces instead of a hang.
      emit(text.substr(pos, 1));
      ++pos;
      continue;
    }
    if (start > pos) emit(text.substr(pos, start - pos));
    emit(text.substr(start, end - start));
    pos = end;
  }
}

}  // namespace rag::lm::internal

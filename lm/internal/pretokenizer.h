// GPT-2 pre-tokenizer: splits text into the pieces that BPE merges never
// cross, with PCRE2 (UTF + UCP, JIT). Thread-safe after construction.
#pragma once

#include <memory>
#include <string_view>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"

namespace rag::lm::internal {

// GPT-2's split pattern (encoder.py in openai/gpt-2).
inline constexpr char kGpt2SplitPattern[] =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class Pretokenizer {
 public:
  // Compiles the GPT-2 pattern. Internal error only if PCRE2 itself rejects
  // it (e.g. a build without Unicode support). JIT is used when available.
  static absl::StatusOr<std::unique_ptr<Pretokenizer>> Create();
  ~Pretokenizer();

  Pretokenizer(const Pretokenizer&) = delete;
  Pretokenizer& operator=(const Pretokenizer&) = delete;

  // Calls `emit` with the pieces of `text` in order. Every piece is
  // non-empty and their concatenation is exactly `text`, for any bytes:
  // runs the regex cannot match (invalid UTF-8) become pieces of their own.
  // The views point into `text`. Streams, so huge texts need no piece list.
  void Split(std::string_view text, absl::FunctionRef<void(std::string_view)> emit) const;

 private:
  struct Regex;
  explicit Pretokenizer(std::unique_ptr<Regex> regex);

  std::unique_ptr<Regex> regex_;
};

}  // namespace rag::lm::internal

// Tokenizer::StringVocab: a byte-level BPE vocabulary as GPT-2's files and
// Hugging Face's spell it (token strings in GPT-2's bytes_to_unicode
// alphabet), before Tokenizer::FromStringVocab (lm/tokenizer_gpt2.cc) turns
// it into a Tokenizer::Layout. Shared by the GPT-2 and Hugging Face readers only. A
// plain value, used by one thread.
#pragma once

#include <array>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "lm/internal/tokenizer_layout.h"
#include "lm/tokenizer.h"

namespace rag::lm {

struct Tokenizer::StringVocab {
  // Token string -> id, every id distinct (the readers check that).
  absl::flat_hash_map<std::string, TokenId> ids;
  // How messages name the vocabulary: "encoder.json", "model.vocab".
  std::string vocab_name;
  // Prefixes (Annotate) for errors about the byte tokens, and for errors
  // about the merges, the special tokens and the id layout.
  std::string vocab_context;
  std::string merges_context;
  // Yields the merges in rank order: sets *left and *right and returns true,
  // false after the last. A malformed entry is an error whose message names
  // its place. Pulled one at a time, so a reader's errors keep file order.
  std::function<absl::StatusOr<bool>(std::string* left, std::string* right)> next_merge;
  // Names the merge last yielded, for messages: "line 7: ", "model.merges[3]: ".
  std::function<std::string()> where;
  // nullopt: the tokens that are neither bytes nor made by a merge must
  // look like "<|...|>" and are the special tokens (encoder.json).
  // Otherwise exactly these (Hugging Face's added_tokens marked special);
  // each must also be in `ids` with the same id.
  std::optional<std::vector<std::pair<std::string, TokenId>>> specials;
  // Hugging Face's added tokens not marked special; their text is plain text,
  // not in the byte alphabet. Tokens of `ids` with their text are theirs.
  std::vector<Layout::AddedToken> added;
  Layout::Normalizer normalizer = Layout::Normalizer::kNone;
};

namespace internal {

// GPT-2's bytes_to_unicode(): printable Latin-1 bytes map to themselves,
// the other 68 to U+0100.. in byte order. Entry b is byte b's token string
// (UTF-8).
std::array<std::string, 256> BytesToUnicode();

}  // namespace internal
}  // namespace rag::lm

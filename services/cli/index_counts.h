// An index directory's suffix-array counts with the tokenizer that encodes
// text for them, and how a phrase is counted: shared by `rag count` and
// `rag eval probes --popularity` (a subject's corpus frequency).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "lm/tokenizer.h"
#include "retriever/chunk_store.h"
#include "retriever/token_counts.h"

namespace rag::cli {

struct IndexCounts {
  lm::Tokenizer tokenizer;  // the index's own copy, or the model's for older indexes
  std::unique_ptr<retriever::ChunkStore> store;
  retriever::IndexTokenCounts loaded;  // counts.sa, or built afresh when documents were added since
};

// `model_dir` may be empty when the index holds its tokenizer. Says on
// stderr (prefixed by `who`) when the suffix array had to be rebuilt.
absl::StatusOr<IndexCounts> OpenIndexCounts(const std::string& index_dir, const std::string& model_dir,
                                            const char* who);

// Occurrences of a phrase: its tokens encoded alone and, unless it starts
// with whitespace, encoded after a space too (byte-level BPE folds a word's
// leading space into its first token: inside a text "of the" is " of the").
struct PhraseCount {
  int64_t alone = 0;
  int64_t after_space = 0;
  bool spaced = false;  // the after-a-space form was counted
  int64_t total() const { return alone + after_space; }
};
absl::StatusOr<PhraseCount> CountPhrase(const IndexCounts& c, const std::string& text);

}  // namespace rag::cli

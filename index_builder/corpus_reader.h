// Reads a corpus into documents: a .txt file (one document), a .jsonl file
// (one {"id": ..., "text": ...} object a line, "id" optional) or a directory
// searched recursively for both, in sorted path order. Stateless.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/document.h"

namespace rag::index_builder {

struct CorpusStats {
  size_t documents = 0;
  size_t bytes = 0;
  size_t files = 0;
};

// Returns the documents of `path`. Ids: the JSONL "id" (a string or a
// number), else "<file>:<line>" for JSONL and the path relative to the
// corpus root for .txt. Errors: NotFound for a missing path, InvalidArgument
// for a malformed JSONL line (with file and line number), a duplicate id, a
// directory without .txt/.jsonl files, or a corpus with no text at all.
// Empty documents are skipped.
absl::StatusOr<std::vector<Document>> ReadCorpus(const std::string& path, CorpusStats* stats = nullptr);

// The documents of JSONL `content` as ReadCorpus reads a .jsonl file named
// `display` (ids default to "<display>:<line>"; the same errors).
absl::StatusOr<std::vector<Document>> ParseJsonlCorpus(const std::string& content, const std::string& display);

}  // namespace rag::index_builder

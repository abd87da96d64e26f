// Offline check of an index directory (`rag validate`): the manifest's file
// checksums, the chunk store's counts against the manifest, and recall@10 of
// the served FAISS index against exact search over the stored embeddings.
// Stateless; reads the directory only.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "absl/status/statusor.h"

namespace rag::retriever {

// What ValidateIndex found. A failed check is a finding here, not an error.
struct IndexValidation {
  std::string index_factory;  // from the manifest
  int64_t vectors = 0;        // from the manifest
  // Per file of the manifest's checksums: "ok", "MISMATCH", or why it could
  // not be read.
  std::map<std::string, std::string> checksums;
  // "ok", "counts differ from the manifest", or why the store did not open.
  std::string chunk_store;
  // Set when the recall was measured: recall@min(10, vectors) over
  // `recall_queries` stored vectors used as queries, at `nprobe`.
  std::optional<double> recall_at_10;
  int64_t recall_queries = 0;
  int nprobe = 0;
  // The FAISS index or the embeddings file could not be read (no recall).
  bool index_unreadable = false;
  // Why the recall was not measured ("" when it was): the read error, or the
  // embeddings file's size does not match the manifest (or it holds none).
  std::string error;
  bool valid = false;  // every check passed
};

// Validates the index in `index_dir`, using `sample` stored vectors (a
// seeded draw) as queries visiting `nprobe` IVF lists. Errors: the manifest
// does not load, or a search fails.
absl::StatusOr<IndexValidation> ValidateIndex(const std::string& index_dir, int64_t sample, int nprobe);

}  // namespace rag::retriever

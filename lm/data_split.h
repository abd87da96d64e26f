// Document-level train/validation split, fixed by a seed and each document's
// id (not its position), so the same document lands on the same side however
// the corpus is ordered or extended.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/document.h"

namespace rag::lm {

struct DataSplit {
  std::vector<Document> train;
  std::vector<Document> validation;
};

// Puts about `validation_fraction` of the documents in validation; with two
// or more documents at least one lands on each side.
DataSplit SplitDocuments(std::vector<Document> documents, double validation_fraction, uint64_t seed);

}  // namespace rag::lm

namespace rag::lm {

// split.json, written by training into the model directory, lists the
// validation document ids so evaluations later use exactly that split.
std::string SplitToJson(const DataSplit& split, double validation_fraction, uint64_t seed);

// Keeps the documents of `documents` on side `which` ("train",
// "validation" or "all") of the split recorded in `split_json`.
// InvalidArgument for another `which`, DataLoss for a malformed file.
absl::StatusOr<std::vector<Document>> SelectSplit(std::vector<Document> documents, const std::string& split_json,
                                                  const std::string& which);

}  // namespace rag::lm

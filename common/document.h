// A corpus document: the unit that readers produce, splits assign to train or
// validation, and retrieval excludes by id. Plain value type.
#pragma once

#include <string>

namespace rag {

struct Document {
  std::string id;    // stable across runs: file path or the JSONL "id"
  std::string text;  // raw bytes; not required to be valid UTF-8
};

}  // namespace rag

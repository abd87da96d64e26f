// libFuzzer target: the JSONL corpus reader on arbitrary content (in memory;
// ReadCorpus runs the same parser on each file it opens): documents or an
// error naming the source, never a crash; no document is empty and ids are
// unique.
#include <cstdint>
#include <cstdlib>
#include <set>
#include <string>

#include "index_builder/corpus_reader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  auto docs = rag::index_builder::ParseJsonlCorpus(input, "fuzz.jsonl");
  if (!docs.ok()) {
    if (docs.status().message().find("fuzz.jsonl") == std::string::npos &&
        docs.status().message().find("duplicate") == std::string::npos) {
      std::abort();  // an error must say where
    }
    return 0;
  }
  std::set<std::string> ids;
  for (const auto& d : *docs) {
    if (d.text.empty() || !ids.insert(d.id).second) std::abort();
  }
  return 0;
}

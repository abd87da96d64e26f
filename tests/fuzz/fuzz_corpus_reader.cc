// libFuzzer target: the corpus readers (.jsonl and .txt) on arbitrary file
// contents: every input gives documents or a clear error, never a crash; no
// document is empty and ids are unique.
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <set>
#include <string>

#include "index_builder/corpus_reader.h"

namespace {

std::string Dir() {
  static const std::string dir = [] {
    char tmpl[] = "/tmp/fuzz_corpus_reader.XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) std::abort();
    return std::string(tmpl);
  }();
  return dir;
}

void Check(const std::string& path, const uint8_t* data, size_t size) {
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  auto docs = rag::index_builder::ReadCorpus(path);
  if (!docs.ok()) {
    if (docs.status().message().empty()) std::abort();  // an error must say why
    return;
  }
  std::set<std::string> ids;
  for (const auto& d : *docs) {
    if (d.text.empty() || !ids.insert(d.id).second) std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Check(Dir() + "/corpus.jsonl", data, size);
  Check(Dir() + "/corpus.txt", data, size);
  return 0;
}

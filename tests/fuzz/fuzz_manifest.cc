// libFuzzer target: the index manifest parser on arbitrary text: a manifest
// or an error, never a crash; a parsed manifest serialises and parses back
// to the same JSON.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "retriever/manifest.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  auto m = rag::retriever::Manifest::FromJson(input);
  if (!m.ok()) return 0;
  const std::string json = m->ToJson();
  auto again = rag::retriever::Manifest::FromJson(json);
  if (!again.ok() || again->ToJson() != json) std::abort();
  return 0;
}

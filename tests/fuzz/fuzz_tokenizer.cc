// libFuzzer target: the tokenizer on arbitrary bytes. Encode never fails and
// Decode(Encode(x)) == x for every byte string (the documented contract);
// tokenizer.json text from the input (format version 1 or 2) either loads or
// is refused cleanly, and a loaded one round-trips its own serialisation and
// gives Decode(Encode(x)) == Normalize(x) (NFC, added tokens, missing bytes).
#include <cstdint>
#include <cstdlib>
#include <string>

#include "lm/tokenizer.h"

namespace {

const rag::lm::Tokenizer& Trained() {
  static const rag::lm::Tokenizer* t = [] {
    rag::lm::TokenizerTrainOptions o;
    o.vocab_size = 400;
    auto r = rag::lm::Tokenizer::Train({"The jury said the election was conducted well. Ünïcödé tëxt, 数字 123!",
                                        "She looked at him and smiled; the committee met on Tuesday."},
                                       o);
    if (!r.ok()) std::abort();
    return new rag::lm::Tokenizer(std::move(*r));
  }();
  return *t;
}

// GPT-NeoX's shape in miniature: specials at 0 and 1, byte b at b + 2 (none
// for the bytes valid UTF-8 never holds), merges making ids out of order,
// runs of spaces as added tokens, NFC.
const rag::lm::Tokenizer& NeoxStyle() {
  static const rag::lm::Tokenizer* t = [] {
    std::string byte_ids;
    for (int b = 0; b < 256; ++b) {
      const bool never_in_utf8 = b == 0xC0 || b == 0xC1 || b >= 0xF5;
      byte_ids += (b > 0 ? ", " : "") + std::to_string(never_in_utf8 ? -1 : b + 2);
    }
    const std::string json = std::string(R"({"format": "rag-byte-bpe", "version": 2, "pretokenizer": "gpt2",
      "normalizer": "nfc", "vocab_size": 402, "special_tokens": {"<|endoftext|>": 0, "<|padding|>": 1},
      "added_tokens": [{"id": 400, "text": "  ", "normalized": true}, {"id": 401, "text": "   ", "normalized": true}],
      "byte_ids": [)") + byte_ids + R"(],
      "merges": [[106, 103, 300], [34, 118, 290], [290, 300, 310], [197, 171, 280]]})";
    auto r = rag::lm::Tokenizer::FromJson(json);
    if (!r.ok()) std::abort();
    return new rag::lm::Tokenizer(std::move(*r));
  }();
  return *t;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const rag::lm::Tokenizer& t = Trained();
  const auto ids = t.Encode(input);
  auto back = t.Decode(ids);
  if (!back.ok() || *back != input || t.Normalize(input) != input) std::abort();
  for (auto id : ids) {
    if (id < 0 || id >= t.vocab_size()) std::abort();
  }
  const rag::lm::Tokenizer& neox = NeoxStyle();
  const std::string normalized = neox.Normalize(input);
  const auto neox_ids = neox.Encode(input);
  auto neox_back = neox.Decode(neox_ids);
  if (!neox_back.ok() || *neox_back != normalized) std::abort();
  if (neox.Normalize(normalized) != normalized || neox.Encode(normalized) != neox_ids) std::abort();
  auto loaded = rag::lm::Tokenizer::FromJson(input);
  if (loaded.ok()) {
    auto again = rag::lm::Tokenizer::FromJson(loaded->ToJson());
    if (!again.ok() || again->Hash() != loaded->Hash()) std::abort();
    const auto loaded_ids = loaded->Encode(input);
    for (auto id : loaded_ids) {
      if (id < 0 || id >= loaded->vocab_size()) std::abort();
    }
    auto round = loaded->Decode(loaded_ids);
    if (!round.ok() || *round != loaded->Normalize(input)) std::abort();
  }
  return 0;
}

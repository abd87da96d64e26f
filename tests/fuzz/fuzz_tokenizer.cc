// libFuzzer target: the tokenizer on arbitrary bytes. Encode never fails and
// Decode(Encode(x)) == x for every byte string (the documented contract);
// tokenizer.json text from the input either loads or is refused cleanly, and
// a loaded one round-trips its own serialisation.
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

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input(reinterpret_cast<const char*>(data), size);
  const rag::lm::Tokenizer& t = Trained();
  const auto ids = t.Encode(input);
  auto back = t.Decode(ids);
  if (!back.ok() || *back != input) std::abort();
  for (auto id : ids) {
    if (id < 0 || id >= t.vocab_size()) std::abort();
  }
  auto loaded = rag::lm::Tokenizer::FromJson(input);
  if (loaded.ok()) {
    auto again = rag::lm::Tokenizer::FromJson(loaded->ToJson());
    if (!again.ok() || again->Hash() != loaded->Hash()) std::abort();
    auto round = loaded->Decode(loaded->Encode(input));
    if (!round.ok() || *round != input) std::abort();
  }
  return 0;
}

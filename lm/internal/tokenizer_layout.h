// Tokenizer::Layout: what a tokenizer is made of -- which id each byte,
// merge, special and added token has, and the normalizer -- before
// Tokenizer::Build (lm/tokenizer.cc) checks it and builds the lookup tables.
// Filled by the trainer and every reader. A plain value, used by one thread.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "lm/tokenizer.h"

namespace rag::lm {

struct Tokenizer::Layout {
  enum class Normalizer { kNone, kNfc };

  struct Merge {
    TokenId left = -1;
    TokenId right = -1;
    TokenId result = -1;
  };

  struct AddedToken {
    std::string text;
    TokenId id = -1;
    // Matched on the normalized text (Hugging Face's normalized=true) rather
    // than on the raw input.
    bool normalized = true;
  };

  // [256]: byte b's token id, -1 if byte b has no token.
  std::vector<TokenId> byte_ids;
  // In rank order.
  std::vector<Merge> merges;
  // (text, id); any order (Build sorts by id).
  std::vector<std::pair<std::string, TokenId>> specials;
  // Non-special added tokens; any order (Build sorts by id).
  std::vector<AddedToken> added;
  Normalizer normalizer = Normalizer::kNone;

  // The canonical layout (lm/tokenizer.h): `byte_ids` a permutation of
  // 0..255, merge i making 256 + i, `specials` as given (their ids must
  // follow the merges for the result to be canonical).
  static Layout Canonical(std::vector<TokenId> byte_ids, const std::vector<std::pair<TokenId, TokenId>>& merges,
                          std::vector<std::pair<std::string, TokenId>> specials) {
    Layout layout;
    layout.byte_ids = std::move(byte_ids);
    layout.merges.reserve(merges.size());
    for (size_t i = 0; i < merges.size(); ++i) {
      layout.merges.push_back({merges[i].first, merges[i].second, static_cast<TokenId>(256 + i)});
    }
    layout.specials = std::move(specials);
    return layout;
  }
};

}  // namespace rag::lm

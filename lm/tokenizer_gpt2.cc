// Tokenizer::LoadGpt2: reading OpenAI's GPT-2 vocabulary files
// (encoder.json, vocab.bpe), and Tokenizer::FromStringVocab, which turns a
// vocabulary spelled in GPT-2's byte alphabet into a Tokenizer::Layout
// (shared with the Hugging Face reader, lm/tokenizer_hf.cc).
#include <array>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "common/file_util.h"
#include "common/status.h"
#include "lm/internal/string_vocab.h"
#include "lm/internal/text_normalizer.h"
#include "lm/internal/tokenizer_layout.h"
#include "lm/tokenizer.h"

namespace rag::lm {
namespace internal {

std::array<std::string, 256> BytesToUnicode() {
  std::array<bool, 256> printable{};
  for (int b = '!'; b <= '~'; ++b) printable[b] = true;
  for (int b = 0xA1; b <= 0xAC; ++b) printable[b] = true;
  for (int b = 0xAE; b <= 0xFF; ++b) printable[b] = true;
  std::array<std::string, 256> out;
  int next_extra = 256;
  for (int b = 0; b < 256; ++b) {
    uint32_t cp = printable[b] ? static_cast<uint32_t>(b) : static_cast<uint32_t>(next_extra++);
    std::string utf8;
    if (cp < 0x80) {
      utf8.push_back(static_cast<char>(cp));
    } else {  // all code points here are < 0x800
      utf8.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      utf8.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
    out[b] = std::move(utf8);
  }
  return out;
}

}  // namespace internal

absl::StatusOr<Tokenizer> Tokenizer::LoadGpt2(const std::string& encoder_json_path,
                                               const std::string& vocab_bpe_path) {
  auto encoder_text = ReadFile(encoder_json_path);
  if (!encoder_text.ok()) return Annotate(encoder_text.status(), "loading GPT-2 encoder.json");
  auto bpe_text = ReadFile(vocab_bpe_path);
  if (!bpe_text.ok()) return Annotate(bpe_text.status(), "loading GPT-2 vocab.bpe");
  const std::string encoder_context = "loading GPT-2 encoder '" + encoder_json_path + "'";
  const std::string bpe_context = "loading GPT-2 merges '" + vocab_bpe_path + "'";

  // token string -> id, checked for duplicates and range.
  absl::flat_hash_map<std::string, TokenId> encoder;
  try {
    nlohmann::json j = nlohmann::json::parse(*encoder_text, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) {
      return Annotate(absl::InvalidArgumentError("expected a JSON object {token: id}"), encoder_context);
    }
    std::vector<bool> used(j.size(), false);
    for (const auto& [token, id] : j.items()) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= static_cast<int64_t>(j.size())) {
        return Annotate(absl::InvalidArgumentError("token " + nlohmann::json(token).dump() + " has id " + id.dump() +
                                                   ", expected an integer in [0, " + std::to_string(j.size()) + ")"),
                        encoder_context);
      }
      TokenId value = id.get<TokenId>();
      if (used[value]) {
        return Annotate(absl::InvalidArgumentError("id " + std::to_string(value) + " is used twice"),
                        encoder_context);
      }
      used[value] = true;
      encoder.emplace(token, value);
    }
  } catch (const nlohmann::json::exception& e) {
    return Annotate(absl::InvalidArgumentError(e.what()), encoder_context);
  }

  StringVocab vocab;
  vocab.ids = std::move(encoder);
  vocab.vocab_name = "encoder.json";
  vocab.vocab_context = encoder_context;
  vocab.merges_context = bpe_context;
  // vocab.bpe: an optional "#version" first line, then "left right" lines;
  // blank lines and CRLF endings are tolerated.
  std::string_view rest = *bpe_text;
  int line_number = 0;
  vocab.next_merge = [&rest, &line_number](std::string* left, std::string* right) -> absl::StatusOr<bool> {
    while (!rest.empty()) {
      size_t eol = rest.find('\n');
      std::string_view line = rest.substr(0, eol);
      rest = eol == std::string_view::npos ? std::string_view() : rest.substr(eol + 1);
      ++line_number;
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (line.empty() || (line_number == 1 && line.substr(0, 8) == "#version")) continue;
      size_t space = line.find(' ');
      if (space == std::string_view::npos || space == 0 || space + 1 == line.size() ||
          line.find(' ', space + 1) != std::string_view::npos) {
        return absl::InvalidArgumentError("line " + std::to_string(line_number) + ": expected 'left right', got '" +
                                          std::string(line) + "'");
      }
      left->assign(line.substr(0, space));
      right->assign(line.substr(space + 1));
      return true;
    }
    return false;
  };
  vocab.where = [&line_number] { return "line " + std::to_string(line_number) + ": "; };
  return FromStringVocab(vocab);
}

absl::StatusOr<Tokenizer> Tokenizer::FromStringVocab(const StringVocab& vocab) {
  const absl::flat_hash_map<std::string, TokenId>& ids = vocab.ids;
  const std::array<std::string, 256> byte_strings = internal::BytesToUnicode();
  Layout layout;
  layout.normalizer = vocab.normalizer;
  layout.byte_ids.assign(256, -1);
  absl::flat_hash_set<TokenId> made;  // byte tokens and merge results
  for (int b = 0; b < 256; ++b) {
    auto it = ids.find(byte_strings[b]);
    if (it == ids.end()) {
      // GPT-NeoX has no token for the bytes that valid UTF-8 never holds.
      if (internal::NeverInUtf8(static_cast<unsigned char>(b))) continue;
      return Annotate(absl::InvalidArgumentError("no token for byte " + std::to_string(b)), vocab.vocab_context);
    }
    layout.byte_ids[b] = it->second;
    made.insert(it->second);
  }

  std::string left;
  std::string right;
  while (true) {
    auto more = vocab.next_merge(&left, &right);
    if (!more.ok()) return Annotate(more.status(), vocab.merges_context);
    if (!*more) break;
    const std::string merge_text = left + " " + right;
    auto left_it = ids.find(left);
    auto right_it = ids.find(right);
    auto merged_it = ids.find(left + right);
    if (left_it == ids.end() || right_it == ids.end() || merged_it == ids.end()) {
      return Annotate(absl::InvalidArgumentError(vocab.where() + "merge '" + merge_text +
                                                 "' uses or makes a token missing from " + vocab.vocab_name),
                      vocab.merges_context);
    }
    // The merge makes whatever id the vocabulary gives left + right (GPT-2:
    // 256 + rank; GPT-NeoX: 245 + rank); Build checks the ids fit together.
    layout.merges.push_back({left_it->second, right_it->second, merged_it->second});
    made.insert(merged_it->second);
  }

  // What the vocabulary holds beyond bytes and merge results must be
  // special or added tokens; anything else means the merges are cut short.
  // encoder.json marks no specials, so there they are the "<|...|>" tokens.
  absl::flat_hash_set<std::string> listed;
  if (vocab.specials.has_value()) {
    layout.specials = *vocab.specials;
    for (const auto& special : layout.specials) listed.insert(special.first);
  }
  for (const Layout::AddedToken& t : vocab.added) listed.insert(t.text);
  int unmade = 0;
  for (const auto& [token, id] : ids) {
    if (made.contains(id)) continue;
    if (vocab.specials.has_value() || listed.contains(token)) {
      if (!listed.contains(token)) ++unmade;
      continue;
    }
    const bool special = token.size() > 4 && token.compare(0, 2, "<|") == 0 &&
                         token.compare(token.size() - 2, 2, "|>") == 0;
    if (special) {
      layout.specials.emplace_back(token, id);
    } else {
      ++unmade;
    }
  }
  if (unmade > 0) {
    return Annotate(absl::InvalidArgumentError(std::to_string(unmade) + " tokens of " + vocab.vocab_name +
                                               " are made by no merge (truncated file?)"),
                    vocab.merges_context);
  }
  layout.added = vocab.added;
  auto tokenizer = Build(std::move(layout));
  if (!tokenizer.ok()) return Annotate(tokenizer.status(), vocab.merges_context);
  return tokenizer;
}

}  // namespace rag::lm

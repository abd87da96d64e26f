// The tokenizer.json format (rag-byte-bpe): writing a built tokenizer,
// reading one back through Tokenizer::Build.
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/file_util.h"
#include "common/status.h"
#include "lm/internal/tokenizer_impl.h"
#include "lm/internal/tokenizer_layout.h"
#include "lm/tokenizer.h"

namespace rag::lm {
namespace {

constexpr char kFormatName[] = "rag-byte-bpe";
// Version 1 holds the canonical layout only; version 2 any layout.
constexpr int kCanonicalFormatVersion = 1;
constexpr int kGeneralFormatVersion = 2;
constexpr char kPretokenizerName[] = "gpt2";

absl::Status JsonError(const std::string& what) {
  return absl::InvalidArgumentError("tokenizer json: " + what);
}

}  // namespace

std::string Tokenizer::Impl::ToJson() const { return canonical ? CanonicalJson() : GeneralJson(); }

namespace {

// `  "byte_ids": [...],` and its newline: the same in both versions.
std::string ByteIdsLine(const std::vector<TokenId>& byte_ids) {
  std::string s = "  \"byte_ids\": [";
  for (int b = 0; b < 256; ++b) {
    if (b > 0) s += ", ";
    s += std::to_string(byte_ids[b]);
  }
  return s + "],\n";
}

std::string SpecialsJson(const std::vector<std::pair<std::string, TokenId>>& specials) {
  std::string s = "{";
  for (size_t i = 0; i < specials.size(); ++i) {
    if (i > 0) s += ", ";
    s += nlohmann::json(specials[i].first).dump() + ": " + std::to_string(specials[i].second);
  }
  return s + "}";
}

}  // namespace

std::string Tokenizer::Impl::CanonicalJson() const {
  // Written by hand rather than json::dump() so that merges are one per
  // line (readable, diffable) and the bytes are stable across library
  // versions: Hash() is recorded by later stages. Byte-identical to what
  // every earlier version wrote.
  const auto& merges = layout.merges;
  std::string s;
  s.reserve(64 + merges.size() * 16);
  s += "{\n";
  s += "  \"format\": \"" + std::string(kFormatName) + "\",\n";
  s += "  \"version\": " + std::to_string(kCanonicalFormatVersion) + ",\n";
  s += "  \"pretokenizer\": \"" + std::string(kPretokenizerName) + "\",\n";
  s += "  \"vocab_size\": " + std::to_string(vocab_size()) + ",\n";
  s += "  \"special_tokens\": " + SpecialsJson(layout.specials) + ",\n";
  s += ByteIdsLine(layout.byte_ids);
  s += "  \"merges\": [";
  for (size_t i = 0; i < merges.size(); ++i) {
    s += i == 0 ? "\n    [" : ",\n    [";
    s += std::to_string(merges[i].left) + ", " + std::to_string(merges[i].right) + "]";
  }
  s += merges.empty() ? "]\n" : "\n  ]\n";
  s += "}\n";
  return s;
}

std::string Tokenizer::Impl::GeneralJson() const {
  const auto& merges = layout.merges;
  std::string s;
  s.reserve(256 + merges.size() * 24);
  s += "{\n";
  s += "  \"format\": \"" + std::string(kFormatName) + "\",\n";
  s += "  \"version\": " + std::to_string(kGeneralFormatVersion) + ",\n";
  s += "  \"pretokenizer\": \"" + std::string(kPretokenizerName) + "\",\n";
  s += std::string("  \"normalizer\": \"") + (layout.normalizer == Layout::Normalizer::kNfc ? "nfc" : "none") +
       "\",\n";
  s += "  \"vocab_size\": " + std::to_string(vocab_size()) + ",\n";
  s += "  \"special_tokens\": " + SpecialsJson(layout.specials) + ",\n";
  s += "  \"added_tokens\": [";
  for (size_t i = 0; i < layout.added.size(); ++i) {
    const Layout::AddedToken& t = layout.added[i];
    s += i == 0 ? "\n    " : ",\n    ";
    s += "{\"id\": " + std::to_string(t.id) + ", \"text\": " + nlohmann::json(t.text).dump() +
         ", \"normalized\": " + (t.normalized ? "true" : "false") + "}";
  }
  s += layout.added.empty() ? "],\n" : "\n  ],\n";
  s += ByteIdsLine(layout.byte_ids);
  s += "  \"merges\": [";
  for (size_t i = 0; i < merges.size(); ++i) {
    s += i == 0 ? "\n    [" : ",\n    [";
    s += std::to_string(merges[i].left) + ", " + std::to_string(merges[i].right) + ", " +
         std::to_string(merges[i].result) + "]";
  }
  s += merges.empty() ? "]\n" : "\n  ]\n";
  s += "}\n";
  return s;
}

std::string Tokenizer::Impl::NonCanonicalReason() const {
  if (layout.normalizer != Layout::Normalizer::kNone) return "it has a normalizer";
  if (!layout.added.empty()) return "it has non-special added tokens";
  for (int b = 0; b < 256; ++b) {
    const TokenId id = layout.byte_ids[b];
    if (id < 0 || id >= 256) {
      return "byte_ids: expected a permutation of 0..255, entry " + std::to_string(b) + " is " + std::to_string(id);
    }
  }
  for (size_t i = 0; i < layout.merges.size(); ++i) {
    const TokenId expected = static_cast<TokenId>(256 + i);
    if (layout.merges[i].result != expected) {
      return "merge " + std::to_string(i) + " makes id " + std::to_string(layout.merges[i].result) + ", expected " +
             std::to_string(expected);
    }
  }
  for (size_t i = 0; i < layout.specials.size(); ++i) {
    const TokenId expected = static_cast<TokenId>(256 + layout.merges.size() + i);
    const auto& [text, id] = layout.specials[i];
    if (id != expected) {
      return "special token " + text + ": expected id " + std::to_string(expected) +
             " (special tokens take the ids after the merges), got " + std::to_string(id);
    }
  }
  return "";
}
// ---------------------------------------------------------------- loading

absl::StatusOr<Tokenizer> Tokenizer::Load(const std::string& json_path) {
  auto text = ReadFile(json_path);
  if (!text.ok()) return Annotate(text.status(), "loading tokenizer");
  auto tokenizer = FromJson(*text);
  if (!tokenizer.ok()) return Annotate(tokenizer.status(), "loading tokenizer '" + json_path + "'");
  return tokenizer;
}

namespace {

absl::StatusOr<int64_t> IntField(const nlohmann::json& j, const char* name) {
  auto it = j.find(name);
  if (it == j.end()) return JsonError(std::string("missing field '") + name + "'");
  if (!it->is_number_integer()) return JsonError(std::string("field '") + name + "' must be an integer");
  return it->get<int64_t>();
}

absl::StatusOr<std::string> StringField(const nlohmann::json& j, const char* name) {
  auto it = j.find(name);
  if (it == j.end()) return JsonError(std::string("missing field '") + name + "'");
  if (!it->is_string()) return JsonError(std::string("field '") + name + "' must be a string");
  return it->get<std::string>();
}

bool IsId(const nlohmann::json& j) {
  if (!j.is_number_integer()) return false;
  int64_t v = j.get<int64_t>();
  return v >= 0 && v < Tokenizer::kMaxVocabSize;
}

}  // namespace

absl::StatusOr<Tokenizer> Tokenizer::FromJson(const std::string& json_text) {
  // nlohmann throws on type mismatches; nothing may escape the API.
  try {
    nlohmann::json j = nlohmann::json::parse(json_text, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) return JsonError("not valid JSON (truncated or corrupt file?)");
    if (!j.is_object()) return JsonError("expected a JSON object at top level");
    RAG_ASSIGN_OR_RETURN(std::string format, StringField(j, "format"));
    if (format != kFormatName) {
      return JsonError("format is '" + format + "', expected '" + kFormatName + "'");
    }
    RAG_ASSIGN_OR_RETURN(int64_t version, IntField(j, "version"));
    if (version != kCanonicalFormatVersion && version != kGeneralFormatVersion) {
      return JsonError("unsupported version " + std::to_string(version) + " (this build reads versions " +
                       std::to_string(kCanonicalFormatVersion) + " and " + std::to_string(kGeneralFormatVersion) +
                       ")");
    }
    const bool general = version == kGeneralFormatVersion;
    RAG_ASSIGN_OR_RETURN(std::string pretokenizer, StringField(j, "pretokenizer"));
    if (pretokenizer != kPretokenizerName) {
      return JsonError("pretokenizer is '" + pretokenizer + "', expected '" + kPretokenizerName + "'");
    }
    RAG_ASSIGN_OR_RETURN(int64_t vocab_size, IntField(j, "vocab_size"));

    Layout layout;
    if (general) {
      RAG_ASSIGN_OR_RETURN(std::string normalizer, StringField(j, "normalizer"));
      if (normalizer == "nfc") {
        layout.normalizer = Layout::Normalizer::kNfc;
      } else if (normalizer != "none") {
        return JsonError("normalizer is '" + normalizer + "', expected 'none' or 'nfc'");
      }
    }

    auto bytes_it = j.find("byte_ids");
    if (bytes_it == j.end() || !bytes_it->is_array() || bytes_it->size() != 256) {
      return JsonError("field 'byte_ids' must be an array of 256 ids");
    }
    for (const auto& v : *bytes_it) {
      // Version 2 marks a byte without a token with -1.
      if (!IsId(v) && !(general && v.is_number_integer() && v.get<int64_t>() == -1)) {
        return JsonError("field 'byte_ids' holds a non-id value " + v.dump());
      }
      layout.byte_ids.push_back(v.get<TokenId>());
    }

    auto merges_it = j.find("merges");
    if (merges_it == j.end() || !merges_it->is_array()) return JsonError("field 'merges' must be an array");
    layout.merges.reserve(merges_it->size());
    const size_t arity = general ? 3 : 2;
    for (const auto& m : *merges_it) {
      const size_t i = layout.merges.size();
      bool ok = m.is_array() && m.size() == arity;
      for (size_t k = 0; ok && k < arity; ++k) ok = IsId(m[k]);
      if (!ok) {
        return JsonError("merge " + std::to_string(i) + " must be " +
                         (general ? "[left id, right id, result id]" : "[left id, right id]") + ", got " + m.dump());
      }
      layout.merges.push_back({m[0].get<TokenId>(), m[1].get<TokenId>(),
                               general ? m[2].get<TokenId>() : static_cast<TokenId>(256 + i)});
    }

    auto specials_it = j.find("special_tokens");
    if (specials_it == j.end() || !specials_it->is_object()) {
      return JsonError("field 'special_tokens' must be an object {text: id}");
    }
    for (const auto& [text, id] : specials_it->items()) {
      if (!IsId(id)) return JsonError("special token " + text + " has a non-id value " + id.dump());
      layout.specials.emplace_back(text, id.get<TokenId>());
    }

    if (general) {
      auto added_it = j.find("added_tokens");
      if (added_it == j.end() || !added_it->is_array()) {
        return JsonError("field 'added_tokens' must be an array");
      }
      for (const auto& t : *added_it) {
        if (!t.is_object() || !t.contains("id") || !IsId(t["id"]) || !t.contains("text") || !t["text"].is_string() ||
            !t.contains("normalized") || !t["normalized"].is_boolean()) {
          return JsonError("added token must be {\"id\": id, \"text\": text, \"normalized\": bool}, got " +
                           t.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
        }
        layout.added.push_back({t["text"].get<std::string>(), t["id"].get<TokenId>(), t["normalized"].get<bool>()});
      }
    }

    auto tokenizer = Build(std::move(layout));
    if (!tokenizer.ok()) return Annotate(tokenizer.status(), "tokenizer json");
    if (!general) {
      // Version 1 has no room for anything but the canonical layout.
      const std::string reason = tokenizer->impl_->NonCanonicalReason();
      if (!reason.empty()) return JsonError("version 1 holds the canonical layout only: " + reason);
    }
    if (tokenizer->vocab_size() != vocab_size) {
      return JsonError("vocab_size is " + std::to_string(vocab_size) + " but the tokens make " +
                       std::to_string(tokenizer->vocab_size()));
    }
    return tokenizer;
  } catch (const nlohmann::json::exception& e) {
    return JsonError(e.what());
  }
}
absl::Status Tokenizer::Save(const std::string& json_path) const {
  return Annotate(WriteFileAtomic(json_path, ToJson()), "saving tokenizer");
}

std::string Tokenizer::ToJson() const { return impl_->ToJson(); }

}  // namespace rag::lm

// Tokenizer::LoadHfTokenizerJson and Tokenizer::LoadHfDirectory: reading the
// tokenizer of a Hugging Face model directory (the `tokenizers` library's
// tokenizer.json, or vocab.json + merges.txt): GPT-2's and GPT-NeoX-20B's
// (Pythia's) byte-level BPE. Accepts only files whose encoding we reproduce
// exactly and says what differs otherwise.
#include <algorithm>
#include <array>
#include <filesystem>
#include <optional>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "common/status.h"
#include "lm/internal/string_vocab.h"
#include "lm/internal/tokenizer_layout.h"
#include "lm/tokenizer.h"

namespace rag::lm {
namespace {

using Json = nlohmann::json;

// Compact JSON for messages; invalid UTF-8 is replaced rather than thrown on,
// and long values are cut.
std::string Dump(const Json& v) {
  std::string s = v.dump(-1, ' ', false, Json::error_handler_t::replace);
  if (s.size() > 80) s = s.substr(0, 77) + "...";
  return s;
}

// A component (normalizer, pre_tokenizer, model type) as messages name it:
// its "type" when it has one ("NFC"), a bare string as is, else its JSON.
std::string Describe(const Json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object()) {
    auto type = v.find("type");
    if (type != v.end() && type->is_string()) return type->get<std::string>();
  }
  return Dump(v);
}

std::optional<TokenId> AsId(const Json& v) {
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u < static_cast<uint64_t>(Tokenizer::kMaxVocabSize)) return static_cast<TokenId>(u);
  } else if (v.is_number_integer()) {
    const int64_t x = v.get<int64_t>();
    if (x >= 0 && x < Tokenizer::kMaxVocabSize) return static_cast<TokenId>(x);
  }
  return std::nullopt;
}

// The field `name` of `object` is absent, null, or equal to `allowed`.
bool AbsentNullOr(const Json& object, const char* name, const Json& allowed) {
  auto it = object.find(name);
  return it == object.end() || it->is_null() || *it == allowed;
}

// Appends what makes a ByteLevel pre-tokenizer (`where` names it) split text
// differently from our GPT-2 pre-tokenizer.
void CheckByteLevel(const Json& p, const std::string& where, std::vector<std::string>* issues) {
  auto prefix = p.find("add_prefix_space");
  if (prefix == p.end()) {
    issues->push_back(where + " ByteLevel add_prefix_space is missing (tokenizers' default is true; expected false)");
  } else if (*prefix != Json(false)) {
    issues->push_back(where + " ByteLevel add_prefix_space " + Dump(*prefix) + " is not supported (expected false)");
  }
  auto regex = p.find("use_regex");
  if (regex != p.end() && *regex != Json(true)) {
    issues->push_back(where + " ByteLevel use_regex " + Dump(*regex) + " is not supported (expected true)");
  }
}

void CheckPreTokenizer(const Json& j, std::vector<std::string>* issues) {
  auto it = j.find("pre_tokenizer");
  if (it == j.end() || it->is_null()) {
    issues->push_back("pre_tokenizer null is not supported (expected ByteLevel)");
    return;
  }
  const std::string type = Describe(*it);
  if (type == "ByteLevel") {
    CheckByteLevel(*it, "pre_tokenizer", issues);
    return;
  }
  if (type == "Sequence") {
    auto members = it->find("pretokenizers");
    if (members != it->end() && members->is_array() && members->size() == 1 && Describe((*members)[0]) == "ByteLevel") {
      CheckByteLevel((*members)[0], "pre_tokenizer Sequence", issues);
      return;
    }
    std::vector<std::string> names;
    if (members != it->end() && members->is_array()) {
      for (const Json& m : *members) names.push_back(Describe(m));
    }
    issues->push_back("pre_tokenizer Sequence [" + absl::StrJoin(names, ", ") +
                      "] is not supported (expected ByteLevel alone)");
    return;
  }
  issues->push_back("pre_tokenizer " + type + " is not supported (expected ByteLevel)");
}

// Model options under which tokenizers' BPE would give other ids than ours.
void CheckModelOptions(const Json& model, std::vector<std::string>* issues) {
  if (!AbsentNullOr(model, "dropout", Json())) {
    issues->push_back("model.dropout " + Dump(model["dropout"]) + " is not supported (expected null)");
  }
  for (const char* name : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (!AbsentNullOr(model, name, Json(""))) {
      issues->push_back(std::string("model.") + name + " " + Dump(model[name]) + " is not supported (expected null)");
    }
  }
  for (const char* name : {"byte_fallback", "ignore_merges"}) {
    if (!AbsentNullOr(model, name, Json(false))) {
      issues->push_back(std::string("model.") + name + " " + Dump(model[name]) + " is not supported (expected false)");
    }
  }
}

struct AddedToken {
  TokenId id;
  std::string content;
  bool special;
  bool normalized;
  // single_word, lstrip, rstrip: change where tokenizers matches the token.
  std::vector<std::pair<std::string, Json>> match_flags;
};

absl::StatusOr<std::vector<AddedToken>> ParseAddedTokens(const Json& j) {
  std::vector<AddedToken> out;
  auto it = j.find("added_tokens");
  if (it == j.end() || it->is_null()) return out;
  if (!it->is_array()) return absl::InvalidArgumentError("added_tokens must be an array, got " + Dump(*it));
  for (size_t i = 0; i < it->size(); ++i) {
    const Json& t = (*it)[i];
    const std::string where = "added_tokens[" + std::to_string(i) + "]: ";
    std::optional<TokenId> id;
    if (t.is_object() && t.contains("id")) id = AsId(t["id"]);
    auto field = [&t](const char* name) { return t.is_object() ? t.find(name) : t.end(); };
    auto content = field("content");
    bool flags_ok = true;
    for (const char* name : {"special", "normalized", "single_word", "lstrip", "rstrip"}) {
      auto f = field(name);
      if (f != t.end() && !f->is_boolean()) flags_ok = false;
    }
    if (!id.has_value() || content == t.end() || !content->is_string() || content->get<std::string>().empty() ||
        !flags_ok) {
      return absl::InvalidArgumentError(where + "expected {\"id\": id, \"content\": text, \"special\": bool}, got " +
                                        Dump(t));
    }
    AddedToken token;
    token.id = *id;
    token.content = content->get<std::string>();
    auto special = field("special");
    token.special = special != t.end() && special->get<bool>();
    // tokenizers' AddedToken::from(content, special): normalized = !special.
    auto normalized = field("normalized");
    token.normalized = normalized != t.end() ? normalized->get<bool>() : !token.special;
    for (const char* name : {"single_word", "lstrip", "rstrip"}) {
      auto f = field(name);
      if (f != t.end()) token.match_flags.emplace_back(name, *f);
    }
    out.push_back(std::move(token));
  }
  return out;
}

// Parses model.vocab into *ids, checking each id's range and uniqueness.
absl::Status ParseVocab(const Json& model, absl::flat_hash_map<std::string, TokenId>* ids,
                        absl::flat_hash_map<TokenId, std::string>* tokens) {
  auto vocab = model.find("vocab");
  if (vocab == model.end() || !vocab->is_object()) {
    return absl::InvalidArgumentError("model.vocab must be an object {token: id}");
  }
  ids->reserve(vocab->size());
  tokens->reserve(vocab->size());
  for (const auto& [token, value] : vocab->items()) {
    std::optional<TokenId> id = AsId(value);
    if (!id.has_value()) {
      return absl::InvalidArgumentError("model.vocab: token " + Dump(Json(token)) + " has id " + Dump(value) +
                                        ", expected an integer in [0, " + std::to_string(Tokenizer::kMaxVocabSize) +
                                        ")");
    }
    auto [other, fresh] = tokens->emplace(*id, token);
    if (!fresh) {
      return absl::InvalidArgumentError("model.vocab: id " + std::to_string(*id) + " is used twice (" +
                                        Dump(Json(other->second)) + " and " + Dump(Json(token)) + ")");
    }
    ids->emplace(token, *id);
  }
  return absl::OkStatus();
}

// What in the added tokens we cannot reproduce: match flags on non-special
// tokens (special tokens are never matched in Encode input, so theirs do not
// matter), and a missing <|endoftext|>.
void CheckAddedTokens(const std::vector<AddedToken>& added, std::vector<std::string>* issues) {
  bool has_eot = false;
  for (size_t i = 0; i < added.size(); ++i) {
    const AddedToken& t = added[i];
    if (t.special && t.content == kEndOfTextToken) has_eot = true;
    if (t.special) continue;
    for (const auto& [name, value] : t.match_flags) {
      if (value != Json(false)) {
        issues->push_back("added_tokens[" + std::to_string(i) + "] " + Dump(Json(t.content)) + ": " + name + " " +
                          Dump(value) + " is not supported (expected false)");
      }
    }
  }
  if (!has_eot) issues->push_back(std::string("added_tokens has no special token ") + kEndOfTextToken);
}

}  // namespace

absl::StatusOr<Tokenizer> Tokenizer::LoadHfTokenizerJson(const std::string& path) {
  auto text = ReadFile(path);
  if (!text.ok()) return Annotate(text.status(), "loading Hugging Face tokenizer");
  const std::string context = "loading Hugging Face tokenizer '" + path + "'";
  auto fail = [&context](const std::string& what) {
    return Annotate(absl::InvalidArgumentError(what), context);
  };
  // nlohmann throws on type mismatches; nothing may escape the API.
  try {
    const Json j = Json::parse(*text, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) return fail("not valid JSON (truncated or corrupt file?)");
    if (!j.is_object()) return fail("expected a JSON object at top level");
    auto model_it = j.find("model");
    if (model_it == j.end() || !model_it->is_object()) return fail("model must be an object");
    const Json& model = *model_it;

    std::vector<std::string> issues;
    auto normalizer = j.find("normalizer");
    Layout::Normalizer normalizer_kind = Layout::Normalizer::kNone;
    if (normalizer != j.end() && !normalizer->is_null()) {
      if (normalizer->is_object() && Describe(*normalizer) == "NFC") {
        normalizer_kind = Layout::Normalizer::kNfc;  // GPT-NeoX
      } else {
        issues.push_back("normalizer " + Describe(*normalizer) + " is not supported (expected null or NFC)");
      }
    }
    CheckPreTokenizer(j, &issues);
    auto type = model.find("type");
    if (type == model.end() || *type != Json("BPE")) {
      issues.push_back("model.type " + (type == model.end() ? std::string("(missing)") : Describe(*type)) +
                       " is not supported (expected BPE)");
      return fail(absl::StrJoin(issues, "; "));
    }
    CheckModelOptions(model, &issues);

    StringVocab vocab;
    absl::flat_hash_map<TokenId, std::string> tokens;  // id -> token, for the checks below
    if (absl::Status s = ParseVocab(model, &vocab.ids, &tokens); !s.ok()) return Annotate(s, context);
    auto added = ParseAddedTokens(j);
    if (!added.ok()) return Annotate(added.status(), context);
    // Special tokens need not be in model.vocab; where they are, the ids
    // must agree.
    std::vector<std::pair<std::string, TokenId>> specials;
    for (const AddedToken& t : *added) {
      auto by_text = vocab.ids.find(t.content);
      auto by_id = tokens.find(t.id);
      if ((by_text != vocab.ids.end() && by_text->second != t.id) ||
          (by_id != tokens.end() && by_id->second != t.content)) {
        return fail("added token " + Dump(Json(t.content)) + " has id " + std::to_string(t.id) + " but model.vocab " +
                    (by_text != vocab.ids.end() && by_text->second != t.id
                         ? "gives it id " + std::to_string(by_text->second)
                         : "gives that id to " + Dump(Json(by_id->second))));
      }
      if (!t.special) {
        vocab.added.push_back({t.content, t.id, t.normalized});
        continue;
      }
      specials.emplace_back(t.content, t.id);
      vocab.ids.emplace(t.content, t.id);
    }

    auto merges_it = model.find("merges");
    if (merges_it == model.end() || !merges_it->is_array()) {
      return fail("model.merges must be an array of \"left right\" or [\"left\", \"right\"]");
    }
    const Json& merges = *merges_it;
    CheckAddedTokens(*added, &issues);
    if (!issues.empty()) return fail(absl::StrJoin(issues, "; "));

    vocab.vocab_name = "model.vocab";
    vocab.vocab_context = context;
    vocab.merges_context = context;
    vocab.specials = std::move(specials);
    vocab.normalizer = normalizer_kind;
    size_t next = 0;
    // tokenizers < 0.20 writes "left right"; later versions ["left", "right"]
    // (tokens may then hold spaces, which no byte-level token does).
    vocab.next_merge = [&merges, &next](std::string* left, std::string* right) -> absl::StatusOr<bool> {
      if (next == merges.size()) return false;
      const Json& m = merges[next++];
      if (m.is_string()) {
        const std::string& s = m.get_ref<const std::string&>();
        const size_t space = s.find(' ');
        if (space != std::string::npos && space != 0 && space + 1 != s.size() &&
            s.find(' ', space + 1) == std::string::npos) {
          left->assign(s, 0, space);
          right->assign(s, space + 1);
          return true;
        }
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string() &&
                 !m[0].get_ref<const std::string&>().empty() && !m[1].get_ref<const std::string&>().empty()) {
        *left = m[0].get<std::string>();
        *right = m[1].get<std::string>();
        return true;
      }
      return absl::InvalidArgumentError("model.merges[" + std::to_string(next - 1) +
                                        "]: expected \"left right\" or [\"left\", \"right\"], got " + Dump(m));
    };
    vocab.where = [&next] { return "model.merges[" + std::to_string(next - 1) + "]: "; };
    return FromStringVocab(vocab);
  } catch (const Json::exception& e) {
    return fail(e.what());
  }
}

absl::StatusOr<Tokenizer> Tokenizer::LoadHfDirectory(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;  // an unreadable entry counts as absent; the reader then names it
  const fs::path root(dir);
  const std::string json_path = (root / "tokenizer.json").string();
  if (fs::exists(json_path, ec)) return LoadHfTokenizerJson(json_path);
  const std::string vocab_path = (root / "vocab.json").string();
  const std::string merges_path = (root / "merges.txt").string();
  const bool has_vocab = fs::exists(vocab_path, ec);
  const bool has_merges = fs::exists(merges_path, ec);
  if (has_vocab && has_merges) return LoadGpt2(vocab_path, merges_path);
  std::string found;
  if (has_vocab) found = " (vocab.json is there, merges.txt is not)";
  if (has_merges) found = " (merges.txt is there, vocab.json is not)";
  return absl::NotFoundError("no Hugging Face tokenizer in '" + dir +
                             "': looked for tokenizer.json, then vocab.json with merges.txt" + found);
}

}  // namespace rag::lm

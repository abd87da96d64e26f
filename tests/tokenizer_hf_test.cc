// Tokenizer::LoadHfTokenizerJson / LoadHfDirectory on the tokenizer.json that
// the `tokenizers` library wrote for GPT-2's vocabulary
// (tests/data/hf_reference/gpt2-tokenizer), against the ids transformers gave
// (tokenizer_reference.json), and on files changed on purpose.
#include <zlib.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "lm/tokenizer.h"
#include "tests/tokenizer_hf_test_util.h"

namespace rag::lm {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

const std::string kRef = std::string(RAG_TEST_DATA_DIR) + "/hf_reference/";

std::string Gpt2Dir() {
  const char* dir = std::getenv("RAG_GPT2_DIR");
  return dir != nullptr ? dir : "data/gpt2";
}

using hf_test::ExpectRejected;
using hf_test::LoadText;
using hf_test::ReadText;
using hf_test::TempDir;
using hf_test::WriteText;

// zlib's gzread; "" if the file is missing or corrupt (the tests then fail
// on the load, with the path in the message).
std::string Gunzip(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (f == nullptr) return "";
  std::string out;
  char buf[1 << 16];
  int n = 0;
  while ((n = gzread(f, buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
  if (n < 0) out.clear();
  gzclose(f);
  return out;
}

// The reference tokenizer.json, decompressed once into a temp dir.
const std::string& Gpt2TokenizerJsonPath() {
  static const std::string* path = [] {
    auto* p = new std::string(TempDir("gpt2") + "/tokenizer.json");
    WriteText(*p, Gunzip(kRef + "gpt2-tokenizer/tokenizer.json.gz"));
    return p;
  }();
  return *path;
}

const Json& Gpt2TokenizerJson() {
  static const Json* j = new Json(Json::parse(ReadText(Gpt2TokenizerJsonPath()), nullptr, false));
  return *j;
}

// Loaded once: parsing 50k tokens and merges is the slow step here.
const absl::StatusOr<Tokenizer>& HfGpt2() {
  static const auto* t = new absl::StatusOr<Tokenizer>(Tokenizer::LoadHfTokenizerJson(Gpt2TokenizerJsonPath()));
  return *t;
}

const absl::StatusOr<Tokenizer>& OpenAiGpt2() {
  static const auto* t = new absl::StatusOr<Tokenizer>(
      Tokenizer::LoadGpt2(Gpt2Dir() + "/encoder.json", Gpt2Dir() + "/vocab.bpe"));
  return *t;
}

// GPT-2's tokenizer.json cut to its first `k` merges: the tokens those make,
// and <|endoftext|> moved to 256 + k. Small enough to edit per test.
Json SmallGpt2(int k) {
  const Json& full = Gpt2TokenizerJson();
  Json j = full;
  Json vocab = Json::object();
  for (const auto& [token, id] : full["model"]["vocab"].items()) {
    if (id.get<int>() < 256 + k) vocab[token] = id;
  }
  vocab["<|endoftext|>"] = 256 + k;
  Json merges = Json::array();
  for (int i = 0; i < k; ++i) merges.push_back(full["model"]["merges"][i]);
  j["model"]["vocab"] = std::move(vocab);
  j["model"]["merges"] = std::move(merges);
  j["added_tokens"][0]["id"] = 256 + k;
  return j;
}

#define ASSERT_REFERENCE_LOADED()                                                                        \
  ASSERT_FALSE(Gpt2TokenizerJson().is_discarded()) << "cannot read " << kRef                             \
                                                   << "gpt2-tokenizer/tokenizer.json.gz";               \
  ASSERT_TRUE(HfGpt2().ok()) << HfGpt2().status()

// ---------------------------------------------------------------- GPT-2

TEST(TokenizerHfTest, MatchesTransformersIdsOnReferenceTexts) {
  ASSERT_REFERENCE_LOADED();
  const Tokenizer& t = *HfGpt2();
  EXPECT_EQ(t.vocab_size(), 50257);
  EXPECT_EQ(t.eot_id(), 50256);
  const Json reference = Json::parse(ReadText(kRef + "tokenizer_reference.json"), nullptr, false);
  ASSERT_TRUE(reference.is_object()) << "cannot read " << kRef << "tokenizer_reference.json";
  const Json& texts = reference["texts"];
  const Json& fast = reference["fast"];
  ASSERT_EQ(texts.size(), fast.size());
  ASSERT_GE(texts.size(), 10u);
  // OpenAI's encoder.py on the text "<|endoftext|>" (see tokenizer_test.cc).
  const std::vector<TokenId> eot_as_bytes = {27, 91, 437, 1659, 5239, 91, 29};
  int with_special = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    const std::string text = texts[i].get<std::string>();
    const std::vector<TokenId> want = fast[i].get<std::vector<TokenId>>();
    SCOPED_TRACE("text " + std::to_string(i) + ": " + text);
    const std::vector<TokenId> got = t.Encode(text);
    if (text.find(kEndOfTextToken) == std::string::npos) {
      EXPECT_EQ(got, want);
      continue;
    }
    // Deliberate difference: transformers splits special-token text out as
    // its id; our Encode keeps it as plain bytes so user text can never
    // forge a document boundary (callers insert eot_id() by id). In these
    // texts the special token sits at a pre-tokenizer boundary, so our ids
    // are transformers' with each 50256 spelled out as bytes.
    ++with_special;
    std::vector<TokenId> spelled;
    for (TokenId id : want) {
      if (id == t.eot_id()) {
        spelled.insert(spelled.end(), eot_as_bytes.begin(), eot_as_bytes.end());
      } else {
        spelled.push_back(id);
      }
    }
    EXPECT_EQ(got, spelled);
    EXPECT_EQ(std::count(got.begin(), got.end(), t.eot_id()), 0);
    auto decoded = t.Decode(got);
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    EXPECT_EQ(*decoded, text);
  }
  EXPECT_GE(with_special, 1) << "the reference no longer covers special-token text";
}

TEST(TokenizerHfTest, SameHashAsOpenAiFiles) {
  ASSERT_REFERENCE_LOADED();
  ASSERT_TRUE(OpenAiGpt2().ok()) << "GPT-2 files needed in " << Gpt2Dir() << " (set RAG_GPT2_DIR): "
                                 << OpenAiGpt2().status();
  EXPECT_EQ(HfGpt2()->Hash(), OpenAiGpt2()->Hash());
  EXPECT_EQ(HfGpt2()->ToJson(), OpenAiGpt2()->ToJson());
  // The value every release has given: models' content hashes include it.
  EXPECT_EQ(HfGpt2()->Hash(), "272e071cc2c5f835");
  EXPECT_EQ(HfGpt2()->ToJson().rfind("{\n  \"format\": \"rag-byte-bpe\",\n  \"version\": 1,\n", 0), 0u);
}

TEST(TokenizerHfTest, BothMergeFormsGiveTheSameTokenizer) {
  ASSERT_REFERENCE_LOADED();
  Json j = Gpt2TokenizerJson();
  ASSERT_TRUE(j["model"]["merges"][0].is_array()) << "reference file expected in the [left, right] form";
  // tokenizers < 0.20 wrote each merge as one "left right" string.
  for (Json& m : j["model"]["merges"]) m = m[0].get<std::string>() + " " + m[1].get<std::string>();
  std::string path;
  auto strings = LoadText(j.dump(), &path);
  ASSERT_TRUE(strings.ok()) << strings.status();
  EXPECT_EQ(strings->Hash(), HfGpt2()->Hash());
  // The two forms may also be mixed within one file.
  j["model"]["merges"][1] = Json::array({"Ġ", "a"});
  auto mixed = LoadText(j.dump(), &path);
  ASSERT_TRUE(mixed.ok()) << mixed.status();
  EXPECT_EQ(mixed->Hash(), HfGpt2()->Hash());
}

TEST(TokenizerHfTest, SmallVocabularyEncodes) {
  ASSERT_REFERENCE_LOADED();
  std::string path;
  auto t = LoadText(SmallGpt2(10).dump(), &path);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->vocab_size(), 256 + 10 + 1);
  EXPECT_EQ(t->eot_id(), 266);
  // "Ġ t" makes 256, "h e" 258, "Ġt he" 262: GPT-2's own id for " the".
  EXPECT_EQ(t->Encode(" the"), (std::vector<TokenId>{262}));
  // Accepted variants: a Sequence holding only ByteLevel, "" affixes, absent
  // options, and a special token missing from model.vocab.
  Json j = SmallGpt2(10);
  j["pre_tokenizer"] = Json{{"type", "Sequence"}, {"pretokenizers", Json::array({j["pre_tokenizer"]})}};
  j["model"]["continuing_subword_prefix"] = "";
  j["model"]["end_of_word_suffix"] = "";
  j["model"].erase("dropout");
  j["model"].erase("byte_fallback");
  j["pre_tokenizer"]["pretokenizers"][0].erase("use_regex");
  j["model"]["vocab"].erase("<|endoftext|>");
  auto variant = LoadText(j.dump(), &path);
  ASSERT_TRUE(variant.ok()) << variant.status();
  EXPECT_EQ(variant->Hash(), t->Hash());
}

// ---------------------------------------------------------------- rejected

TEST(TokenizerHfTest, UnsupportedSettingsAreNamed) {
  ASSERT_REFERENCE_LOADED();
  const Json small = SmallGpt2(10);
  auto with = [&small](const Json::json_pointer& where, const Json& value) {
    Json j = small;
    j[where] = value;
    return j.dump();
  };
  using P = Json::json_pointer;
  ExpectRejected(with(P("/normalizer"), Json{{"type", "NFKC"}}), "normalizer NFKC is not supported (expected null or NFC)");
  ExpectRejected(with(P("/normalizer"), "NFC"), "normalizer NFC is not supported");  // not an object
  ExpectRejected(with(P("/pre_tokenizer/add_prefix_space"), true),
                 "pre_tokenizer ByteLevel add_prefix_space true is not supported");
  ExpectRejected(with(P("/pre_tokenizer/use_regex"), false), "pre_tokenizer ByteLevel use_regex false");
  ExpectRejected(with(P("/pre_tokenizer"), Json{{"type", "Whitespace"}}), "pre_tokenizer Whitespace is not supported");
  ExpectRejected(with(P("/pre_tokenizer"), nullptr), "pre_tokenizer null is not supported");
  ExpectRejected(with(P("/pre_tokenizer"),
                      Json{{"type", "Sequence"},
                           {"pretokenizers", Json::array({Json{{"type", "Split"}}, small["pre_tokenizer"]})}}),
                 "pre_tokenizer Sequence [Split, ByteLevel] is not supported");
  ExpectRejected(with(P("/model/type"), "WordPiece"), "model.type WordPiece is not supported");
  ExpectRejected(with(P("/model/dropout"), 0.1), "model.dropout 0.1 is not supported");
  ExpectRejected(with(P("/model/continuing_subword_prefix"), "##"),
                 "model.continuing_subword_prefix \"##\" is not supported");
  ExpectRejected(with(P("/model/end_of_word_suffix"), "</w>"), "model.end_of_word_suffix \"</w>\" is not supported");
  ExpectRejected(with(P("/model/byte_fallback"), true), "model.byte_fallback true is not supported");
  ExpectRejected(with(P("/model/ignore_merges"), true), "model.ignore_merges true is not supported");
  // Several at once: all named.
  Json both = small;
  both["normalizer"] = Json{{"type", "NFKC"}};
  both["model"]["dropout"] = 0.5;
  ExpectRejected(both.dump(), "normalizer NFKC is not supported (expected null or NFC); model.dropout 0.5");
}

TEST(TokenizerHfTest, ReorderedMergesLoadAsAnotherTokenizer) {
  ASSERT_REFERENCE_LOADED();
  const int k = 10;
  auto canonical = LoadText(SmallGpt2(k).dump(), nullptr);
  ASSERT_TRUE(canonical.ok()) << canonical.status();
  // "Ġ a" (makes 257) ranked before "Ġ t" (makes 256): each merge still
  // makes the id model.vocab gives it, so this is a valid tokenizer, just
  // not in the canonical layout -- written as version 2, another Hash().
  Json swapped = SmallGpt2(k);
  std::swap(swapped["model"]["merges"][0], swapped["model"]["merges"][1]);
  auto t = LoadText(swapped.dump(), nullptr);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->merge(0), (std::pair<TokenId, TokenId>{220, 64}));
  EXPECT_EQ(t->merge_result(0), 257);
  EXPECT_EQ(t->merge_result(1), 256);
  EXPECT_NE(t->ToJson().find("\"version\": 2"), std::string::npos);
  EXPECT_NE(t->Hash(), canonical->Hash());
  EXPECT_EQ(t->Encode(" the at"), canonical->Encode(" the at"));
}

TEST(TokenizerHfTest, IdLayoutWeCannotRepresentSaysWhatDiffers) {
  ASSERT_REFERENCE_LOADED();
  const int k = 10;
  // Merge 6 ("Ġt he", makes 262) moved first: it would use "Ġt" (256) before
  // any merge made it.
  Json early = SmallGpt2(k);
  ASSERT_EQ(early["model"]["merges"][6], Json::array({"\xc4\xa0t", "he"}));
  std::swap(early["model"]["merges"][0], early["model"]["merges"][6]);
  ExpectRejected(early.dump(),
                 "merge 0 [256, 258] uses id 256, which is neither a byte token nor made by an earlier merge");
  // Two merges making one token: "Ġt he" and then "Ġth e".
  Json twice = SmallGpt2(k);
  twice["model"]["vocab"]["\xc4\xa0th"] = 256 + k;
  twice["model"]["vocab"]["<|endoftext|>"] = 257 + k;
  twice["added_tokens"][0]["id"] = 257 + k;
  twice["model"]["merges"].push_back(Json::array({"\xc4\xa0t", "h"}));
  twice["model"]["merges"].push_back(Json::array({"\xc4\xa0th", "e"}));
  ExpectRejected(twice.dump(), "merge 11 [266, 68] has id 262, already used by merge 6 [256, 258]");
  // A special token on a byte's id.
  Json shared = SmallGpt2(k);
  shared["model"]["vocab"].erase("<|endoftext|>");
  shared["added_tokens"][0]["id"] = 71;
  ExpectRejected(shared.dump(), "added token \"<|endoftext|>\" has id 71 but model.vocab gives that id to \"h\"");
  // A byte that valid UTF-8 uses must have a token (GPT-NeoX may lack
  // only 0xC0, 0xC1, 0xF5..0xFF).
  Json no_h = SmallGpt2(k);
  no_h["model"]["vocab"].erase("h");
  ExpectRejected(no_h.dump(), "no token for byte 104");
}

TEST(TokenizerHfTest, MalformedFilesAreInvalidArgument) {
  ASSERT_REFERENCE_LOADED();
  const Json small = SmallGpt2(10);
  const std::string good = small.dump();
  ExpectRejected(good.substr(0, good.size() / 2), "not valid JSON");
  ExpectRejected(good.substr(0, good.size() - 1), "not valid JSON");
  ExpectRejected("", "not valid JSON");
  ExpectRejected("[]", "expected a JSON object");
  ExpectRejected("{}", "model must be an object");
  auto edit = [&small](const std::function<void(Json*)>& change) {
    Json j = small;
    change(&j);
    return j.dump();
  };
  ExpectRejected(edit([](Json* j) { (*j)["model"]["merges"][0] = "Ġ t x"; }), "model.merges[0]: expected");
  ExpectRejected(edit([](Json* j) { (*j)["model"]["merges"][2] = Json::array({"h"}); }), "model.merges[2]: expected");
  ExpectRejected(edit([](Json* j) { (*j)["model"]["merges"][3] = 7; }), "model.merges[3]: expected");
  ExpectRejected(edit([](Json* j) { (*j)["model"]["merges"][0] = "Ġ zzz"; }),
                 "model.merges[0]: merge 'Ġ zzz' uses or makes a token missing from model.vocab");
  ExpectRejected(edit([](Json* j) { (*j)["model"]["merges"] = "no"; }), "model.merges must be an array");
  ExpectRejected(edit([](Json* j) { (*j)["model"]["vocab"] = Json::array(); }), "model.vocab must be an object");
  ExpectRejected(edit([](Json* j) { (*j)["model"]["vocab"]["h"] = 0; }), "model.vocab: id 0 is used twice");
  ExpectRejected(edit([](Json* j) { (*j)["model"]["vocab"]["h"] = -3; }), "model.vocab: token \"h\" has id -3");
  ExpectRejected(edit([](Json* j) { (*j)["model"]["vocab"]["h"] = "x"; }), "model.vocab: token \"h\" has id \"x\"");
  ExpectRejected(edit([](Json* j) { (*j)["model"]["vocab"].erase("h"); }), "no token for byte 104");
  ExpectRejected(edit([](Json* j) { (*j)["model"]["vocab"]["zz"] = 267; }),
                 "1 tokens of model.vocab are made by no merge");
  ExpectRejected(edit([](Json* j) { (*j)["added_tokens"] = Json::array(); }),
                 "added_tokens has no special token <|endoftext|>");
  ExpectRejected(edit([](Json* j) { (*j)["added_tokens"] = 5; }), "added_tokens must be an array");
  ExpectRejected(edit([](Json* j) { (*j)["added_tokens"][0].erase("id"); }), "added_tokens[0]: expected");
  ExpectRejected(edit([](Json* j) { (*j)["added_tokens"][0]["special"] = "yes"; }), "added_tokens[0]: expected");
  ExpectRejected(edit([](Json* j) { (*j)["added_tokens"][0]["id"] = 265; }),
                 "added token \"<|endoftext|>\" has id 265 but model.vocab gives it id 266");
  ExpectRejected(edit([](Json* j) { (*j)["added_tokens"][0]["content"] = ""; }), "added_tokens[0]: expected");
  ExpectRejected(edit([](Json* j) { (*j)["added_tokens"][0]["lstrip"] = 1; }), "added_tokens[0]: expected");
  // Bytes that are not UTF-8 inside a string: still an error, not a throw.
  ExpectRejected("{\"model\": {\"type\": \"B\xff\"}}", "not valid JSON");

  const std::string missing = TempDir("missing") + "/tokenizer.json";
  auto loaded = Tokenizer::LoadHfTokenizerJson(missing);
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kNotFound) << loaded.status();
  EXPECT_NE(loaded.status().message().find(missing), std::string::npos) << loaded.status();
}

TEST(TokenizerHfTest, IdsNothingUsesAreHoles) {
  ASSERT_REFERENCE_LOADED();
  // <|endoftext|> at 300 instead of 266: ids 266..299 are holes.
  Json j = SmallGpt2(10);
  j["model"]["vocab"]["<|endoftext|>"] = 300;
  j["added_tokens"][0]["id"] = 300;
  auto t = LoadText(j.dump(), nullptr);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->vocab_size(), 301);
  EXPECT_EQ(t->eot_id(), 300);
  EXPECT_EQ(t->TokenBytes(270), "");
  auto hole = t->Decode({262, 270});
  EXPECT_EQ(hole.status().code(), absl::StatusCode::kInvalidArgument) << hole.status();
  EXPECT_NE(hole.status().message().find("270 at position 1 is no token"), std::string::npos) << hole.status();
  auto eot = t->Decode({262, 300});
  ASSERT_TRUE(eot.ok()) << eot.status();
  EXPECT_EQ(*eot, " the<|endoftext|>");
  auto copy = Tokenizer::FromJson(t->ToJson());
  ASSERT_TRUE(copy.ok()) << copy.status();
  EXPECT_EQ(copy->Hash(), t->Hash());
  EXPECT_EQ(copy->vocab_size(), 301);
}

// ---------------------------------------------------------------- directories

TEST(TokenizerHfTest, DirectoryWithTokenizerJson) {
  ASSERT_REFERENCE_LOADED();
  auto t = Tokenizer::LoadHfDirectory(fs::path(Gpt2TokenizerJsonPath()).parent_path().string());
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->Hash(), HfGpt2()->Hash());
}

TEST(TokenizerHfTest, DirectoryWithVocabAndMerges) {
  ASSERT_TRUE(OpenAiGpt2().ok()) << "GPT-2 files needed in " << Gpt2Dir() << " (set RAG_GPT2_DIR): "
                                 << OpenAiGpt2().status();
  // A GPT-2 download from the hub: vocab.json + merges.txt ("#version: 0.2").
  const std::string dir = TempDir("vocab_merges");
  fs::copy_file(Gpt2Dir() + "/encoder.json", dir + "/vocab.json");
  fs::copy_file(Gpt2Dir() + "/vocab.bpe", dir + "/merges.txt");
  ASSERT_EQ(ReadText(dir + "/merges.txt").substr(0, 8), "#version");
  auto t = Tokenizer::LoadHfDirectory(dir);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->Hash(), OpenAiGpt2()->Hash());

  // tokenizer.json wins when present, and its error is not papered over by
  // falling back to vocab.json + merges.txt.
  ASSERT_REFERENCE_LOADED();
  Json nfkc = SmallGpt2(10);
  nfkc["normalizer"] = Json{{"type", "NFKC"}};
  WriteText(dir + "/tokenizer.json", nfkc.dump());
  auto preferred = Tokenizer::LoadHfDirectory(dir);
  EXPECT_EQ(preferred.status().code(), absl::StatusCode::kInvalidArgument) << preferred.status();
  EXPECT_NE(preferred.status().message().find("tokenizer.json"), std::string::npos) << preferred.status();
  EXPECT_NE(preferred.status().message().find("normalizer NFKC"), std::string::npos) << preferred.status();
}

TEST(TokenizerHfTest, DirectoryWithoutTokenizerIsNotFound) {
  const std::string dir = TempDir("empty");
  auto t = Tokenizer::LoadHfDirectory(dir);
  EXPECT_EQ(t.status().code(), absl::StatusCode::kNotFound) << t.status();
  const std::string message(t.status().message());
  for (const char* name : {"tokenizer.json", "vocab.json", "merges.txt"}) {
    EXPECT_NE(message.find(name), std::string::npos) << t.status();
  }
  EXPECT_NE(message.find(dir), std::string::npos) << t.status();
  WriteText(dir + "/vocab.json", "{}");
  auto half = Tokenizer::LoadHfDirectory(dir);
  EXPECT_EQ(half.status().code(), absl::StatusCode::kNotFound) << half.status();
  EXPECT_NE(half.status().message().find("merges.txt is not"), std::string::npos) << half.status();
  EXPECT_EQ(Tokenizer::LoadHfDirectory(dir + "/no_such_dir").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace rag::lm

// Tokenizer::LoadHfTokenizerJson on a GPT-NeoX-like tokenizer.json (NFC
// normalizer, added tokens, bytes without a token), written by the test from
// the layout Pythia's tokenizer has, and saved and loaded back.
#include <algorithm>
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

using Json = nlohmann::json;
using hf_test::ExpectRejected;
using hf_test::LoadText;
using hf_test::TempDir;
using hf_test::WriteText;

// GPT-2's bytes_to_unicode(): byte b's token string (UTF-8).
std::string ByteString(int b) {
  const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
  int cp = b;
  if (!printable) {
    cp = 256;
    for (int c = 0; c < b; ++c) {
      const bool p = (c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF);
      if (!p) ++cp;
    }
  }
  std::string utf8;
  if (cp < 0x80) {
    utf8.push_back(static_cast<char>(cp));
  } else {
    utf8.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    utf8.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
  return utf8;
}

// A miniature of GPT-NeoX-20B's tokenizer.json (Pythia's), laid out as it is:
// <|endoftext|> 0 and <|padding|> 1 (special, also in model.vocab), the 256
// byte tokens at 2..257 ordered by their character's code point, merge
// results where model.vocab says (not 258 + rank), non-special whitespace
// added tokens, NFC. The ids below are derived by hand from that order:
// printable ASCII byte b is at b - 31 ('a' 66, 'b' 67, 'c' 68, 'e' 70,
// 'f' 71, 'h' 73, 't' 85, ' ' is U+0120 'Ġ', index 188 + 32 -> 222);
// 0xC3 'Ã' -> 129, 0xA9 '©' -> 104 (é = C3 A9); 0xCC 'Ì' -> 138 and 0x81
// (U+0123) -> 225 (U+0301 = CC 81); 0xEF 'ï' 173, 0xBF '¿' 125, 0xBD '½' 123
// (U+FFFD = EF BF BD).
constexpr TokenId kA = 66, kB = 67, kC = 68, kE = 70, kF = 71, kT = 85, kSpace = 222;
constexpr TokenId kHe = 400, kSpaceT = 300, kSpaceThe = 350, kEAcute = 310, kTwoSpaces = 320;
constexpr TokenId kAdded2 = 500, kAdded3 = 501;

Json NeoxLike() {
  std::vector<std::pair<std::string, int>> bytes;
  for (int b = 0; b < 256; ++b) bytes.emplace_back(ByteString(b), b);
  std::sort(bytes.begin(), bytes.end(), [](const auto& x, const auto& y) {
    auto cp = [](const std::string& s) {
      return s.size() == 1 ? static_cast<int>(s[0]) : ((s[0] & 0x1F) << 6) | (s[1] & 0x3F);
    };
    return cp(x.first) < cp(y.first);
  });
  Json vocab = Json::object();
  vocab["<|endoftext|>"] = 0;
  vocab["<|padding|>"] = 1;
  for (size_t i = 0; i < bytes.size(); ++i) vocab[bytes[i].first] = 2 + static_cast<int>(i);
  const std::string g = ByteString(' ');  // "Ġ"
  vocab["he"] = kHe;
  vocab[g + "t"] = kSpaceT;
  vocab[g + "the"] = kSpaceThe;
  vocab["\xc3\x83\xc2\xa9"] = kEAcute;  // "Ã©": é's two bytes
  vocab[g + g] = kTwoSpaces;
  Json merges = Json::array({"h e", g + " t", g + "t he", "\xc3\x83 \xc2\xa9", g + " " + g});
  auto added = [](int id, const std::string& content, bool special) {
    return Json{{"id", id},           {"content", content}, {"single_word", false}, {"lstrip", false},
                {"rstrip", false},    {"normalized", !special}, {"special", special}};
  };
  Json j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  j["added_tokens"] = Json::array({added(0, "<|endoftext|>", true), added(1, "<|padding|>", true),
                                   added(kAdded3, "   ", false), added(kAdded2, "  ", false)});
  j["normalizer"] = Json{{"type", "NFC"}};
  j["pre_tokenizer"] = Json{{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}};
  j["post_processor"] = j["pre_tokenizer"];
  j["decoder"] = j["pre_tokenizer"];
  j["model"] = Json{{"type", "BPE"},          {"dropout", nullptr},           {"unk_token", nullptr},
                    {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr},
                    {"fuse_unk", false},      {"vocab", vocab},               {"merges", merges}};
  return j;
}

const absl::StatusOr<Tokenizer>& Neox() {
  static const auto* t = [] {
    const std::string dir = TempDir("neox");
    WriteText(dir + "/tokenizer.json", NeoxLike().dump(2));
    return new absl::StatusOr<Tokenizer>(Tokenizer::LoadHfDirectory(dir));
  }();
  return *t;
}

#define ASSERT_NEOX_LOADED() ASSERT_TRUE(Neox().ok()) << Neox().status()

using Ids = std::vector<TokenId>;

TEST(TokenizerNeoxTest, LayoutAndMerges) {
  ASSERT_NEOX_LOADED();
  const Tokenizer& t = *Neox();
  EXPECT_EQ(t.vocab_size(), kAdded3 + 1);
  EXPECT_EQ(t.eot_id(), 0);
  EXPECT_EQ(t.num_merges(), 5);
  EXPECT_EQ(t.merge(0), (std::pair<TokenId, TokenId>{73, kE}));
  EXPECT_EQ(t.merge_result(0), kHe);
  EXPECT_EQ(t.merge_result(2), kSpaceThe);
  EXPECT_EQ(t.TokenBytes(kSpaceThe), " the");
  EXPECT_EQ(t.TokenBytes(kAdded3), "   ");
  EXPECT_EQ(t.TokenBytes(1), "<|padding|>");
  EXPECT_EQ(t.TokenBytes(258), "");  // a hole
  // " the": h e -> 400 (rank 0), Ġ t -> 300 (rank 1), Ġt he -> 350 (rank 2).
  EXPECT_EQ(t.Encode(" the"), (Ids{kSpaceThe}));
  EXPECT_EQ(t.Encode("the"), (Ids{kT, kHe}));
  EXPECT_EQ(t.Encode("the cat"), (Ids{kT, kHe, kSpace, kC, kA, kT}));
}

TEST(TokenizerNeoxTest, NfcBeforeSplitting) {
  ASSERT_NEOX_LOADED();
  const Tokenizer& t = *Neox();
  // "café" precomposed: c a f + (Ã ©) -> 310.
  const std::string composed = "caf\xc3\xa9";
  const std::string decomposed = "cafe\xcc\x81";  // e + U+0301
  EXPECT_EQ(t.Encode(composed), (Ids{kC, kA, kF, kEAcute}));
  EXPECT_EQ(t.Encode(decomposed), (Ids{kC, kA, kF, kEAcute}));
  EXPECT_EQ(t.Normalize(decomposed), composed);
  auto back = t.Decode(t.Encode(decomposed));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, composed);
  // Without the normalizer the combining mark stays: e, then U+0301 as its
  // own piece (a mark is not \p{L}).
  Json plain = NeoxLike();
  plain["normalizer"] = nullptr;
  auto raw = LoadText(plain.dump(), nullptr);
  ASSERT_TRUE(raw.ok()) << raw.status();
  EXPECT_EQ(raw->Encode(decomposed), (Ids{kC, kA, kF, kE, 138, 225}));
  EXPECT_EQ(raw->Normalize(decomposed), decomposed);
  // NFC stops at invalid UTF-8: the invalid byte stays, and e + U+0301
  // after it still composes.
  const std::string split = "e\xff\xcc\x81" "e\xcc\x81";
  EXPECT_EQ(t.Normalize(split), "e\xff\xcc\x81\xc3\xa9");
}

TEST(TokenizerNeoxTest, NonSpecialAddedTokensSplitFirst) {
  ASSERT_NEOX_LOADED();
  const Tokenizer& t = *Neox();
  // Hugging Face splits added tokens out before the pre-tokenizer and BPE,
  // longest match at the leftmost position first: "Hi  Hello" is Hi, "  ",
  // Hello in Pythia (12764, 50276, 12092).
  EXPECT_EQ(t.Encode("a  b"), (Ids{kA, kAdded2, kB}));
  EXPECT_EQ(t.Encode("a   b"), (Ids{kA, kAdded3, kB}));
  // Four spaces: "   " wins at the first space, " b" stays.
  EXPECT_EQ(t.Encode("a    b"), (Ids{kA, kAdded3, kSpace, kB}));
  EXPECT_EQ(t.Encode("  the"), (Ids{kAdded2, kT, kHe}));
  EXPECT_EQ(t.Encode("a b"), (Ids{kA, kSpace, kB}));
  // The merge "Ġ Ġ" (320) is unreachable: two spaces are always split out.
  for (const std::string& text : {std::string("  "), std::string("x\n  \n")}) {
    const Ids ids = t.Encode(text);
    EXPECT_EQ(std::count(ids.begin(), ids.end(), kTwoSpaces), 0) << text;
  }
  // Special-token text stays plain bytes (the documented difference).
  const Ids special = t.Encode("x<|padding|><|endoftext|>");
  EXPECT_EQ(std::count(special.begin(), special.end(), 0), 0);
  EXPECT_EQ(std::count(special.begin(), special.end(), 1), 0);
  for (const std::string& text : {std::string("a    b\t  c"), std::string(" \n   \n"), std::string("<|padding|>")}) {
    auto back = t.Decode(t.Encode(text));
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(*back, text);
  }
}

TEST(TokenizerNeoxTest, RawAddedTokensMatchBeforeNormalizing) {
  // normalized=false: matched on the raw text, so a decomposed é inside it
  // is not composed; the gaps around it are.
  Json j = NeoxLike();
  j["added_tokens"].push_back(Json{{"id", 600}, {"content", "e\xcc\x81!"}, {"special", false}, {"normalized", false}});
  auto t = LoadText(j.dump(), nullptr);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->Encode("ce\xcc\x81!e\xcc\x81"), (Ids{kC, 600, kEAcute}));
  EXPECT_EQ(t->Normalize("ce\xcc\x81!e\xcc\x81"), "ce\xcc\x81!\xc3\xa9");
  // normalized=true with text NFC would change: refused (it could match
  // without decoding back to what was matched).
  j["added_tokens"].back()["normalized"] = true;
  ExpectRejected(j.dump(), "added token \"e\xcc\x81!\" (normalized) is not in NFC");
}

TEST(TokenizerNeoxTest, BytesWithoutTokensBecomeReplacementCharacters) {
  // GPT-NeoX-20B has no token for 0xC0, 0xC1 and 0xF5..0xFF, which never
  // occur in valid UTF-8; in invalid input they become U+FFFD.
  Json j = NeoxLike();
  for (int b : {0xC0, 0xC1, 0xF5, 0xF6, 0xF7, 0xF8, 0xF9, 0xFA, 0xFB, 0xFC, 0xFD, 0xFE, 0xFF}) {
    j["model"]["vocab"].erase(ByteString(b));
  }
  auto t = LoadText(j.dump(), nullptr);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->Encode("\xff"), (Ids{173, 125, 123}));
  EXPECT_EQ(t->Normalize("a\xff\x80"), "a\xef\xbf\xbd\x80");  // 0x80 has a token: kept
  EXPECT_EQ(t->TokenBytes(189), "");  // 0xFF ('ÿ', index 187) left a hole
  EXPECT_EQ(t->Decode({189}).status().code(), absl::StatusCode::kInvalidArgument);
  std::mt19937 rng(11);
  for (int i = 0; i < 200; ++i) {
    std::string text;
    for (int n = rng() % 40; n > 0; --n) text.push_back(static_cast<char>(rng() % 256));
    const Ids ids = t->Encode(text);
    auto back = t->Decode(ids);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(*back, t->Normalize(text));
  }
}

TEST(TokenizerNeoxTest, SavedAsVersion2AndLoadedBack) {
  ASSERT_NEOX_LOADED();
  const Tokenizer& t = *Neox();
  const std::string json = t.ToJson();
  EXPECT_NE(json.find("\"version\": 2,"), std::string::npos);
  EXPECT_NE(json.find("\"normalizer\": \"nfc\","), std::string::npos);
  EXPECT_NE(json.find("{\"id\": 500, \"text\": \"  \", \"normalized\": true}"), std::string::npos) << json;
  EXPECT_NE(json.find("[73, 70, 400]"), std::string::npos);  // merge 0: h e -> 400
  const std::string path = TempDir("neox_saved") + "/tokenizer.json";
  ASSERT_TRUE(t.Save(path).ok());
  auto loaded = Tokenizer::Load(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->Hash(), t.Hash());
  EXPECT_EQ(loaded->ToJson(), json);
  EXPECT_EQ(loaded->eot_id(), 0);
  EXPECT_EQ(loaded->vocab_size(), t.vocab_size());
  for (const std::string& text : {std::string("cafe\xcc\x81 the  cat   \xff"), std::string("a    b"), std::string("")}) {
    EXPECT_EQ(loaded->Encode(text), t.Encode(text)) << text;
  }
  // Version 1 cannot hold this layout.
  std::string as_v1 = json;
  as_v1.replace(as_v1.find("\"version\": 2"), 12, "\"version\": 1");
  auto v1 = Tokenizer::FromJson(as_v1);
  EXPECT_EQ(v1.status().code(), absl::StatusCode::kInvalidArgument) << v1.status();
  // Broken version 2 files are errors, not crashes.
  auto replace = [&json](const std::string& from, const std::string& to) {
    std::string s = json;
    const size_t at = s.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    return at == std::string::npos ? s : s.replace(at, from.size(), to);
  };
  for (const auto& [text, needle] : std::vector<std::pair<std::string, std::string>>{
           {replace("\"nfc\"", "\"nfkc\""), "normalizer is 'nfkc'"},
           {replace("[73, 70, 400]", "[73, 70]"), "merge 0 must be [left id, right id, result id]"},
           {replace("[73, 70, 400]", "[73, 70, 66]"), "merge 0 [73, 70] has id 66, already used by byte 97"},
           {replace("[73, 70, 400]", "[73, 400, 400]"), "uses id 400, which is neither"},
           {replace("\"<|padding|>\": 1", "\"<|padding|>\": 500"), "has id 500, already used by"},
           {replace("\"normalized\": true}", "\"normalized\": 1}"), "added token must be"},
           {replace("\"vocab_size\": 502", "\"vocab_size\": 503"), "vocab_size is 503"},
           {replace("\"byte_ids\": [", "\"byte_ids\": [-2, "), "field 'byte_ids'"},
       }) {
    auto broken = Tokenizer::FromJson(text);
    EXPECT_EQ(broken.status().code(), absl::StatusCode::kInvalidArgument) << needle;
    EXPECT_NE(broken.status().message().find(needle), std::string::npos) << broken.status();
  }
}

TEST(TokenizerNeoxTest, UnsupportedAddedTokenFlagsAreNamed) {
  for (const char* flag : {"single_word", "lstrip", "rstrip"}) {
    Json j = NeoxLike();
    j["added_tokens"][2][flag] = true;
    ExpectRejected(j.dump(), std::string("added_tokens[2] \"   \": ") + flag + " true is not supported (expected false)");
  }
  // On special tokens the flags do not matter: they are never matched.
  Json special = NeoxLike();
  special["added_tokens"][1]["lstrip"] = true;
  auto t = LoadText(special.dump(), nullptr);
  EXPECT_TRUE(t.ok()) << t.status();
}

}  // namespace
}  // namespace rag::lm

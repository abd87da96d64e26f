#include "lm/tokenizer.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

namespace rag::lm {
namespace {

using Merge = std::pair<TokenId, TokenId>;

std::string Gpt2Dir() {
  const char* dir = std::getenv("RAG_GPT2_DIR");
  return dir != nullptr ? dir : "data/gpt2";
}

// Loaded once: parsing the 50k-token vocabulary is the slowest step here.
const absl::StatusOr<Tokenizer>& Gpt2() {
  static const auto* tokenizer = new absl::StatusOr<Tokenizer>(
      Tokenizer::LoadGpt2(Gpt2Dir() + "/encoder.json", Gpt2Dir() + "/vocab.bpe"));
  return *tokenizer;
}

#define ASSERT_GPT2_LOADED()                                                                            \
  ASSERT_TRUE(Gpt2().ok()) << "GPT-2 tokenizer files needed in " << Gpt2Dir()                          \
                           << " (set RAG_GPT2_DIR to the folder holding encoder.json and vocab.bpe): " \
                           << Gpt2().status()

// Random "words" from a small alphabet, so that a few hundred merges exist.
std::vector<std::string> MakeCorpus(int n_docs, uint32_t seed) {
  std::mt19937 rng(seed);
  const std::vector<std::string> syllables = {"ka", "lo", "mi", "ne", "tu", "ra", "si", "po", "é", "漢"};
  const std::vector<std::string> separators = {" ", " ", " ", ", ", ". ", "\n", "  ", " 42 "};
  std::vector<std::string> docs;
  for (int d = 0; d < n_docs; ++d) {
    std::string doc;
    for (int w = 0; w < 200; ++w) {
      int n = 1 + static_cast<int>(rng() % 4);
      for (int s = 0; s < n; ++s) doc += syllables[rng() % syllables.size()];
      doc += separators[rng() % separators.size()];
    }
    docs.push_back(doc);
  }
  return docs;
}

// Arbitrary bytes, biased towards the interesting ones: whitespace, ASCII
// letters, UTF-8 lead/continuation bytes, NUL.
std::string RandomBytes(std::mt19937* rng, size_t max_len) {
  const std::string specials = std::string(" \t\n\r\0'sa1.", 11) + "\xc3\xa9\xe6\xbc\xa2\x80\xbf\xff\xfe\xc0\xed";
  size_t len = (*rng)() % (max_len + 1);
  std::string s;
  for (size_t i = 0; i < len; ++i) {
    if ((*rng)() % 2 == 0) {
      s.push_back(specials[(*rng)() % specials.size()]);
    } else {
      s.push_back(static_cast<char>((*rng)() % 256));
    }
  }
  return s;
}

Tokenizer TrainOrDie(const std::vector<std::string>& docs, int vocab_size) {
  TokenizerTrainOptions options;
  options.vocab_size = vocab_size;
  auto tokenizer = Tokenizer::Train(docs, options);
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return *std::move(tokenizer);
}

std::string TempPath(const std::string& name) {
  return (std::filesystem::path(testing::TempDir()) / ("tokenizer_test_" + name)).string();
}

void WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

void ExpectRoundTrip(const Tokenizer& tokenizer, const std::string& text) {
  std::vector<TokenId> ids = tokenizer.Encode(text);
  auto decoded = tokenizer.Decode(ids);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(*decoded, text) << "round trip changed a " << text.size() << "-byte string";
}

// ---------------------------------------------------------------- training

// "aaabdaaabac": pairs aa x4 -> 256; then (256,a) and (a,b) tie at 2 and
// the smaller pair (97,98) wins -> 257; then (256,257) x2 -> 258; the rest
// occur once, below min_pair_count 2.
TEST(TokenizerTrainTest, TinyCorpusMergesAreExact) {
  Tokenizer tokenizer = TrainOrDie({"aaabdaaabac"}, 300);
  ASSERT_EQ(tokenizer.num_merges(), 3);
  EXPECT_EQ(tokenizer.merge(0), Merge(97, 97));
  EXPECT_EQ(tokenizer.merge(1), Merge(97, 98));
  EXPECT_EQ(tokenizer.merge(2), Merge(256, 257));
  EXPECT_EQ(tokenizer.merge_result(2), 258);
  EXPECT_EQ(tokenizer.merge_result(3), -1);
  EXPECT_EQ(tokenizer.vocab_size(), 260);  // min_pair_count stopped early
  EXPECT_EQ(tokenizer.eot_id(), 259);
  EXPECT_EQ(tokenizer.TokenBytes(258), "aaab");
  EXPECT_EQ(tokenizer.Encode("aaabdaaabac"), (std::vector<TokenId>{258, 'd', 258, 'a', 'c'}));
  EXPECT_EQ(tokenizer.Encode("aaab"), (std::vector<TokenId>{258}));
  EXPECT_EQ(tokenizer.Encode("aa"), (std::vector<TokenId>{256}));
  // Format version 1, byte for byte as every release wrote it: Hash() of
  // existing tokenizers (and the content hashes of their models) must not
  // change.
  std::string byte_ids;
  for (int b = 0; b < 256; ++b) byte_ids += (b > 0 ? ", " : "") + std::to_string(b);
  EXPECT_EQ(tokenizer.ToJson(),
            "{\n  \"format\": \"rag-byte-bpe\",\n  \"version\": 1,\n  \"pretokenizer\": \"gpt2\",\n"
            "  \"vocab_size\": 260,\n  \"special_tokens\": {\"<|endoftext|>\": 259},\n  \"byte_ids\": [" +
                byte_ids + "],\n  \"merges\": [\n    [97, 97],\n    [97, 98],\n    [256, 257]\n  ]\n}\n");
  EXPECT_EQ(tokenizer.Hash(), "c203539481e49fae");
}

TEST(TokenizerTrainTest, VocabSizeCapsMerges) {
  Tokenizer tokenizer = TrainOrDie({"aaabdaaabac"}, 258);
  ASSERT_EQ(tokenizer.num_merges(), 1);
  EXPECT_EQ(tokenizer.vocab_size(), 258);
  EXPECT_EQ(tokenizer.eot_id(), 257);
  EXPECT_EQ(tokenizer.Encode("aaab"), (std::vector<TokenId>{256, 'a', 'b'}));
}

// Pieces: "the", " cat", " the" x2, " hat", " bat". (a,t), (h,e), (t,h)
// tie at 3 -> "at"; then "he"; then (t, he) -> "the"; then (" ", the) x2.
TEST(TokenizerTrainTest, WordsWithSpacesMergeWithinPieces) {
  Tokenizer tokenizer = TrainOrDie({"the cat the hat the bat"}, 1000);
  ASSERT_EQ(tokenizer.num_merges(), 4);
  EXPECT_EQ(tokenizer.merge(0), Merge('a', 't'));
  EXPECT_EQ(tokenizer.merge(1), Merge('h', 'e'));
  EXPECT_EQ(tokenizer.merge(2), Merge('t', 257));
  EXPECT_EQ(tokenizer.merge(3), Merge(' ', 258));
  EXPECT_EQ(tokenizer.TokenBytes(259), " the");
  EXPECT_EQ(tokenizer.Encode("the cat"), (std::vector<TokenId>{258, ' ', 'c', 256}));
  // "t h" never merges across the piece boundary between "cat" and " the".
  EXPECT_EQ(tokenizer.Encode("cat the"), (std::vector<TokenId>{'c', 256, 259}));
}

TEST(TokenizerTrainTest, DeterministicHash) {
  std::vector<std::string> docs = MakeCorpus(20, 7);
  Tokenizer a = TrainOrDie(docs, 600);
  Tokenizer b = TrainOrDie(docs, 600);
  EXPECT_EQ(a.Hash(), b.Hash());
  EXPECT_EQ(a.ToJson(), b.ToJson());
  EXPECT_EQ(a.Hash().size(), 16u);
  Tokenizer c = TrainOrDie(MakeCorpus(20, 8), 600);
  EXPECT_NE(a.Hash(), c.Hash());
}

TEST(TokenizerTrainTest, BadOptionsAreInvalidArgument) {
  std::vector<std::string> docs = {"hello world"};
  for (int vocab : {-1, 0, 256, 257, Tokenizer::kMaxVocabSize + 1}) {
    TokenizerTrainOptions options;
    options.vocab_size = vocab;
    auto tokenizer = Tokenizer::Train(docs, options);
    EXPECT_EQ(tokenizer.status().code(), absl::StatusCode::kInvalidArgument) << "vocab_size " << vocab;
  }
  TokenizerTrainOptions options;
  options.min_pair_count = 0;
  EXPECT_EQ(Tokenizer::Train(docs, options).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(TokenizerTrainTest, NoTextIsInvalidArgument) {
  for (const auto& docs : {std::vector<std::string>{}, std::vector<std::string>{"", ""}}) {
    auto tokenizer = Tokenizer::Train(docs, TokenizerTrainOptions());
    EXPECT_EQ(tokenizer.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(tokenizer.status().message().find("no text to train on"), std::string::npos)
        << tokenizer.status();
  }
}

TEST(TokenizerTrainTest, TextWithoutRepeatsStillTrains) {
  Tokenizer tokenizer = TrainOrDie({"x"}, 4096);
  EXPECT_EQ(tokenizer.num_merges(), 0);
  EXPECT_EQ(tokenizer.vocab_size(), 257);
  ExpectRoundTrip(tokenizer, "anything at all \xff");
}

// ---------------------------------------------------------------- encoding

TEST(TokenizerEncodeTest, RoundTripRandomBytes) {
  Tokenizer trained = TrainOrDie(MakeCorpus(10, 1), 800);
  std::mt19937 rng(12345);
  for (int i = 0; i < 500; ++i) {
    std::string text = RandomBytes(&rng, 200);
    ExpectRoundTrip(trained, text);
    if (Gpt2().ok()) ExpectRoundTrip(*Gpt2(), text);
  }
}

TEST(TokenizerEncodeTest, RoundTripEdgeCases) {
  Tokenizer trained = TrainOrDie(MakeCorpus(10, 1), 800);
  const std::vector<std::string> cases = {
      "",
      std::string(1, '\0'),
      std::string("a\0b\0\0c", 6),
      "\xff\xfe abc",              // invalid bytes, then valid text
      "abc \xe2\x82",              // truncated 3-byte sequence at the end
      "\xc0\xaf overlong",         // overlong encoding of '/'
      "\xed\xa0\x80 surrogate",    // UTF-16 surrogate in UTF-8
      "\xf4\x90\x80\x80 too big",  // above U+10FFFF
      "\x80\x80\x80",              // lone continuation bytes
      "mid\xe6\xbc\xa2\xe6\xbcword",
      "Ünïcödé 漢字 😀 Ωμέγα Жизнь العربية עברית\u00a0nbsp\u2028ls \u0301combining",
      "tabs\t\tand\r\nnewlines\n\n\n   trailing   ",
      "I'm can't we've they'll he'd she's it'S",
      "<|endoftext|>",
      std::string(100000, 'a'),     // one huge piece (heap merge path)
      std::string(100000, ' ') + "x",
      std::string(100000, '\xff'),  // one huge invalid run
      "ab" + std::string(3000, '\n') + "\xc3",
  };
  for (const std::string& text : cases) {
    SCOPED_TRACE(text.substr(0, 40));
    ExpectRoundTrip(trained, text);
    if (Gpt2().ok()) ExpectRoundTrip(*Gpt2(), text);
  }
  EXPECT_TRUE(trained.Encode("").empty());
}

TEST(TokenizerEncodeTest, SpecialTokenTextIsPlainBytes) {
  Tokenizer trained = TrainOrDie(MakeCorpus(5, 3), 600);
  std::vector<TokenId> ids = trained.Encode("a <|endoftext|> b");
  for (TokenId id : ids) EXPECT_NE(id, trained.eot_id());
  EXPECT_EQ(trained.TokenBytes(trained.eot_id()), "<|endoftext|>");
  auto decoded = trained.Decode({trained.eot_id()});
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(*decoded, "<|endoftext|>");
}

TEST(TokenizerEncodeTest, DecodeOutOfRangeIsInvalidArgument) {
  Tokenizer trained = TrainOrDie(MakeCorpus(5, 3), 600);
  const TokenId too_big = trained.vocab_size();
  auto decoded = trained.Decode({'a', too_big});
  EXPECT_EQ(decoded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(decoded.status().message().find(std::to_string(too_big)), std::string::npos) << decoded.status();
  EXPECT_EQ(trained.Decode({-1}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(trained.TokenBytes(too_big), "");
  EXPECT_EQ(trained.TokenBytes(-1), "");
  auto empty = trained.Decode({});
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(*empty, "");
}

TEST(TokenizerEncodeTest, ConcurrentEncodeMatchesSerial) {
  Tokenizer trained = TrainOrDie(MakeCorpus(10, 1), 800);
  std::vector<std::string> texts = MakeCorpus(16, 99);
  std::vector<std::vector<TokenId>> expected;
  for (const auto& t : texts) expected.push_back(trained.Encode(t));
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      // A fresh copy shares the cache, as server threads would.
      Tokenizer copy = trained;
      for (int round = 0; round < 3; ++round) {
        for (size_t i = 0; i < texts.size(); ++i) {
          if (copy.Encode(texts[(i + t) % texts.size()]) != expected[(i + t) % texts.size()]) ++mismatches[t];
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  for (int t = 0; t < 4; ++t) EXPECT_EQ(mismatches[t], 0) << "thread " << t;
}

// ---------------------------------------------------------------- files

TEST(TokenizerFileTest, SaveLoadKeepsEncodingAndHash) {
  Tokenizer trained = TrainOrDie(MakeCorpus(10, 5), 700);
  const std::string path = TempPath("save.json");
  ASSERT_TRUE(trained.Save(path).ok());
  auto loaded = Tokenizer::Load(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->Hash(), trained.Hash());
  EXPECT_EQ(loaded->ToJson(), trained.ToJson());
  EXPECT_EQ(loaded->vocab_size(), trained.vocab_size());
  EXPECT_EQ(loaded->eot_id(), trained.eot_id());
  std::mt19937 rng(3);
  for (const std::string& text : MakeCorpus(3, 6)) EXPECT_EQ(loaded->Encode(text), trained.Encode(text));
  for (int i = 0; i < 50; ++i) {
    std::string text = RandomBytes(&rng, 100);
    EXPECT_EQ(loaded->Encode(text), trained.Encode(text));
  }
  std::filesystem::remove(path);
}

TEST(TokenizerFileTest, MissingFileIsNotFoundWithPath) {
  const std::string path = TempPath("does_not_exist.json");
  auto loaded = Tokenizer::Load(path);
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(loaded.status().message().find(path), std::string::npos) << loaded.status();
  auto gpt2 = Tokenizer::LoadGpt2(path, path);
  EXPECT_EQ(gpt2.status().code(), absl::StatusCode::kNotFound);
}

TEST(TokenizerFileTest, CorruptJsonIsAnErrorNotACrash) {
  Tokenizer trained = TrainOrDie({"aaabdaaabac"}, 300);
  const std::string good = trained.ToJson();
  ASSERT_TRUE(Tokenizer::FromJson(good).ok());
  auto replace = [&](const std::string& from, const std::string& to) {
    std::string s = good;
    size_t at = s.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    return at == std::string::npos ? s : s.replace(at, from.size(), to);
  };
  const std::vector<std::string> bad = {
      "",
      "not json",
      "[]",
      "{}",
      good.substr(0, good.size() / 2),                          // truncated
      good.substr(0, good.size() - 3),                          // truncated at the end
      replace("rag-byte-bpe", "something-else"),                // wrong format
      replace("\"version\": 1", "\"version\": 99"),             // future version
      replace("\"version\": 1", "\"version\": \"1\""),          // wrong type
      replace("\"vocab_size\": 260", "\"vocab_size\": 261"),    // inconsistent
      replace("[256, 257]", "[256, 5000]"),                     // unknown token
      replace("[256, 257]", "[256, 258]"),                      // uses its own result
      replace("[256, 257]", "[256, -1]"),                       // negative id
      replace("[256, 257]", "[256, 257, 1]"),                   // wrong arity
      replace("[256, 257]", "[\"a\", 257]"),                    // wrong type
      replace("[97, 98]", "[97, 97]"),                          // duplicate merge
      replace("\"byte_ids\": [0, 1,", "\"byte_ids\": [1, 1,"),  // not a permutation
      replace("\"<|endoftext|>\": 259", "\"<|other|>\": 259"),  // no eot
      replace("\"<|endoftext|>\": 259", "\"<|endoftext|>\": 7"),
      replace("\"merges\": [", "\"merges\": {\"a\": ["),
  };
  for (const std::string& text : bad) {
    auto loaded = Tokenizer::FromJson(text);
    EXPECT_FALSE(loaded.ok()) << text;
    EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument) << loaded.status();
  }
  const std::string path = TempPath("truncated.json");
  WriteText(path, good.substr(0, 40));
  auto loaded = Tokenizer::Load(path);
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(loaded.status().message().find(path), std::string::npos) << loaded.status();
  std::filesystem::remove(path);
}

// ---------------------------------------------------------------- GPT-2

TEST(TokenizerGpt2Test, ReferenceEncoding) {
  ASSERT_GPT2_LOADED();
  const Tokenizer& gpt2 = *Gpt2();
  EXPECT_EQ(gpt2.vocab_size(), 50257);
  EXPECT_EQ(gpt2.eot_id(), 50256);
  // Written as format version 1, byte for byte as every release did: the
  // content hashes of models built on GPT-2 include this value.
  EXPECT_EQ(gpt2.Hash(), "272e071cc2c5f835");
  EXPECT_EQ(gpt2.Normalize("e\xcc\x81 \xff"), "e\xcc\x81 \xff");  // no normalizer
  EXPECT_EQ(gpt2.Encode("Hello world. The capital of France is Paris."),
            (std::vector<TokenId>{15496, 995, 13, 383, 3139, 286, 4881, 318, 6342, 13}));
  // Reference values from OpenAI's encoder.py.
  EXPECT_EQ(gpt2.Encode("<|endoftext|>"), (std::vector<TokenId>{27, 91, 437, 1659, 5239, 91, 29}));
  EXPECT_EQ(gpt2.Encode(" Ünïcödé 漢字 😀\u00a0x"),
            (std::vector<TokenId>{49363, 77, 26884, 66, 9101, 67, 2634, 10545, 120, 95, 27764, 245, 30325, 222,
                                  1849, 87}));
  EXPECT_EQ(gpt2.TokenBytes(995), " world");
  auto decoded = gpt2.Decode({15496, 995, gpt2.eot_id()});
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(*decoded, "Hello world<|endoftext|>");
}

TEST(TokenizerGpt2Test, JsonRoundTripKeepsGpt2) {
  ASSERT_GPT2_LOADED();
  const Tokenizer& gpt2 = *Gpt2();
  auto copy = Tokenizer::FromJson(gpt2.ToJson());
  ASSERT_TRUE(copy.ok()) << copy.status();
  EXPECT_EQ(copy->Hash(), gpt2.Hash());
  EXPECT_EQ(copy->eot_id(), 50256);
  const std::string text = "Hello world. The capital of France is Paris.";
  EXPECT_EQ(copy->Encode(text), gpt2.Encode(text));
}

TEST(TokenizerGpt2Test, MalformedMergesAreInvalidArgument) {
  const std::string encoder = Gpt2Dir() + "/encoder.json";
  ASSERT_TRUE(std::filesystem::exists(encoder)) << "missing " << encoder << " (set RAG_GPT2_DIR)";
  const std::string path = TempPath("vocab.bpe");
  for (const std::string& text : {std::string("#version: 0.2\nĠ t\nno_space_here\n"),
                                  std::string("#version: 0.2\nĠ zzzzzz\n"),
                                  std::string("#version: 0.2\nh e\n")}) {  // right tokens, wrong id order
    WriteText(path, text);
    auto loaded = Tokenizer::LoadGpt2(encoder, path);
    EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument) << text;
  }
  WriteText(path, "{\"a\": ");
  EXPECT_EQ(Tokenizer::LoadGpt2(path, Gpt2Dir() + "/vocab.bpe").status().code(),
            absl::StatusCode::kInvalidArgument);
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace rag::lm

// Byte-level BPE tokenizer in the style of GPT-2: trains on our corpus,
// reads GPT-2's encoder.json + vocab.bpe and Hugging Face's tokenizer.json or
// vocab.json + merges.txt (GPT-2's and GPT-NeoX-20B's / Pythia's), and
// saves/loads its own JSON.
// Immutable after construction; Encode/Decode are thread-safe.
//
// Token ids. Every id below vocab_size() is one of
//   a byte token       `byte_ids[b]` is the id of byte b, or -1 when byte b
//                      has no token (allowed only for 0xC0, 0xC1, 0xF5..0xFF,
//                      which never occur in valid UTF-8: GPT-NeoX lacks them);
//   a merge result     merge i (rank i) joins (left, right) into `result`;
//                      each operand is a byte token or an earlier merge's
//                      result, and no two merges make the same id;
//   a special token    its text, e.g. "<|endoftext|>" (always present);
//   an added token     non-special text that Encode splits out of the input
//                      before BPE, as Hugging Face's added tokens (GPT-NeoX's
//                      runs of spaces, 50254..50276);
//   or a hole          an id nothing uses (vocab_size() is the largest id + 1):
//                      TokenBytes gives "" and Decode rejects it.
// The canonical layout -- bytes at 0..255, merge i makes 256 + i, specials
// right after, no added tokens, no normalizer, every byte present -- is what
// Train() makes and GPT-2 has; GPT-NeoX's is not canonical (specials at 0 and
// 1, 243 bytes at 2..244, merges from 245, added tokens last, NFC).
//
// On-disk format (tokenizer.json). UTF-8 JSON. A canonical tokenizer is
// written as version 1 (unchanged since the first release, so Hash() of
// existing tokenizers stays the same):
//   {
//     "format": "rag-byte-bpe",        // fixed; anything else is rejected
//     "version": 1,
//     "pretokenizer": "gpt2",          // the GPT-2 split regex (see below)
//     "vocab_size": V,                 // = 256 + M + number of specials
//     "special_tokens": {"<|endoftext|>": V - 1},
//     "byte_ids": [256 ints],          // a permutation of 0..255
//     "merges": [[left, right], ...]   // M pairs of ids; merge i makes 256 + i
//   }
// Any other layout is written as version 2, which names every id:
//   {
//     "format": "rag-byte-bpe",
//     "version": 2,
//     "pretokenizer": "gpt2",
//     "normalizer": "none" | "nfc",    // applied before splitting (below)
//     "vocab_size": V,                 // = largest id + 1
//     "special_tokens": {"<|endoftext|>": 0, "<|padding|>": 1},
//     "added_tokens": [{"id": 50254, "text": "  ", "normalized": true}, ...],
//     "byte_ids": [256 ints],          // distinct ids, -1 = byte has no token
//     "merges": [[left, right, result], ...]   // in rank order
//   }
// Load() reads both. Merges name tokens by id, so any byte sequence
// round-trips with no escaping. ToJson() writes either version canonically
// (fixed key order, one merge per line), so Hash() depends only on the
// tokenizer's content.
//
// Encoding, in order:
//   1. Added tokens with normalized=false are split out of the raw text,
//      leftmost-longest match first, as Hugging Face does; special tokens are
//      never split out (user text cannot forge <|endoftext|>).
//   2. Each remaining gap is normalized: with the "nfc" normalizer, Unicode
//      NFC (ICU) is applied to each maximal run of valid UTF-8 (invalid bytes
//      are kept as they are and split runs: NFC never composes across them);
//      then every byte that has no token (necessarily invalid UTF-8) becomes
//      U+FFFD. Normalize() returns the text after this step.
//   3. Added tokens with normalized=true are split out of the normalized gaps
//      (their text must already be in NFC), leftmost-longest.
//   4. What remains is split by GPT-2's regex
//        's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//      (PCRE2, UTF + UCP; bytes that are not valid UTF-8 never match it and
//      each such run becomes a piece of its own, so every byte string
//      encodes), and each piece is merged by rank.
// A canonical tokenizer skips steps 1-3: Decode(Encode(x)) == x for every x.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace rag::lm {

using TokenId = int32_t;

inline constexpr char kEndOfTextToken[] = "<|endoftext|>";

struct TokenizerTrainOptions {
  // Total vocabulary, including the 256 byte tokens and the special token.
  // At least 258 (one merge). Default: 4096
  int vocab_size = 4096;
  // Stop merging when the most frequent pair occurs fewer times than this;
  // the trained vocabulary is then smaller than `vocab_size`. Default: 2
  int min_pair_count = 2;
  // Progress line on stderr (merges, rate, ETA). Default: false
  bool show_progress = false;
};

// Copies are cheap and share one immutable state (and the encode cache). A
// moved-from Tokenizer may only be destroyed or assigned to.
class Tokenizer {
 public:
  // Largest vocabulary Train() and the loaders accept.
  static constexpr int kMaxVocabSize = 1 << 22;

  // Learns merges greedily: repeatedly merges the most frequent adjacent
  // pair within pre-tokenized pieces (ties: smallest (left id, right id)).
  // Deterministic: same documents and options give the same Hash().
  // "<|endoftext|>" gets the last id. InvalidArgument if vocab_size is out
  // of [258, kMaxVocabSize], min_pair_count < 1, or the documents hold no
  // bytes at all.
  static absl::StatusOr<Tokenizer> Train(const std::vector<std::string>& documents,
                                         const TokenizerTrainOptions& options);

  // Reads our tokenizer.json, version 1 or 2. NotFound (naming the path) if
  // it is missing, InvalidArgument if it is not valid JSON of the format
  // above (a version 1 file must hold the canonical layout).
  static absl::StatusOr<Tokenizer> Load(const std::string& json_path);
  static absl::StatusOr<Tokenizer> FromJson(const std::string& json_text);

  // Reads OpenAI's GPT-2 files: encoder.json (token string -> id, strings in
  // GPT-2's bytes_to_unicode alphabet) and vocab.bpe ("#version" line, then
  // one "left right" merge per line). NotFound if a file is missing,
  // InvalidArgument if they are malformed or inconsistent.
  static absl::StatusOr<Tokenizer> LoadGpt2(const std::string& encoder_json_path,
                                            const std::string& vocab_bpe_path);

  // Reads a Hugging Face `tokenizers` file (tokenizer.json) holding a
  // byte-level BPE such as GPT-2's or GPT-NeoX-20B's (every Pythia model):
  // model.type "BPE" with model.vocab {token: id} in GPT-2's bytes_to_unicode
  // alphabet and model.merges as "left right" strings or ["left", "right"]
  // pairs (tokenizers >= 0.20), each merge making the id model.vocab gives
  // left + right; added_tokens marked special become our special tokens, the
  // others our added tokens ("normalized" absent means true). Accepted only
  // when encoding is exactly Hugging Face's: normalizer null or NFC;
  // pre_tokenizer ByteLevel with add_prefix_space false and use_regex true or
  // absent (trim_offsets is ignored; alone or as the only member of a
  // Sequence); model.dropout null; continuing_subword_prefix and
  // end_of_word_suffix null or ""; byte_fallback and ignore_merges false or
  // absent; non-special added tokens with single_word, lstrip and rstrip
  // false or absent, and (if normalized, under NFC) text already in NFC; and
  // an id layout as above (ids disjoint, merges built from earlier tokens).
  // post_processor, decoder, truncation and padding are ignored. NotFound if
  // the file is missing; InvalidArgument naming the file, each unsupported
  // field and its value ("normalizer NFKC is not supported (expected null or
  // NFC)"), or the malformed part. GPT-2's vocabulary gives the same Hash()
  // as LoadGpt2. Unlike Hugging Face, special-token text in Encode() input
  // stays plain bytes (Hugging Face would split it out as the special id);
  // non-special added tokens are split out as Hugging Face does.
  static absl::StatusOr<Tokenizer> LoadHfTokenizerJson(const std::string& path);

  // Reads the tokenizer of a Hugging Face model directory: `dir`/tokenizer.json
  // when present (LoadHfTokenizerJson, its errors returned as they are),
  // else `dir`/vocab.json + `dir`/merges.txt, which are GPT-2's encoder.json
  // and vocab.bpe under other names (LoadGpt2; added_tokens.json and
  // tokenizer_config.json are not read). NotFound naming `dir` and the files
  // looked for when neither is there.
  static absl::StatusOr<Tokenizer> LoadHfDirectory(const std::string& dir);

  // Writes ToJson() to `json_path` atomically (old file or new, never half).
  absl::Status Save(const std::string& json_path) const;
  // Canonical serialization in the format documented above.
  std::string ToJson() const;

  // Encodes any byte string (invalid UTF-8, NUL bytes, "" -> {}) as
  // described above. Never fails. Special-token text such as
  // "<|endoftext|>" in `text` is encoded as ordinary bytes: callers insert
  // eot_id() by id, so user text can never forge a document boundary.
  std::vector<TokenId> Encode(std::string_view text) const;

  // The text Encode() tokenizes: `text` with added tokens matched on the raw
  // text kept as they are and the rest normalized (NFC on valid UTF-8 runs
  // under the "nfc" normalizer, bytes without a token -> U+FFFD). `text`
  // itself for canonical tokenizers (ours, GPT-2's).
  std::string Normalize(std::string_view text) const;

  // Concatenates TokenBytes() of `ids`. Decode(Encode(x)) == Normalize(x)
  // for every x (== x for canonical tokenizers). Special tokens decode to
  // their text ("<|endoftext|>"), as in GPT-2; added tokens to their text.
  // InvalidArgument naming the first id outside [0, vocab_size()) or a hole.
  absl::StatusOr<std::string> Decode(const std::vector<TokenId>& ids) const;

  // Raw bytes of one token; the text for a special or added token; "" for a
  // hole or an id outside [0, vocab_size()).
  std::string TokenBytes(TokenId id) const;

  // Largest id + 1; for canonical tokenizers 256 + number of merges + number
  // of special tokens. GPT-NeoX-20B: 50277 (its models have 50304 rows).
  int vocab_size() const;
  int num_merges() const;
  // The "<|endoftext|>" id: 50256 for GPT-2, 0 for GPT-NeoX, vocab_size() - 1
  // for ours.
  TokenId eot_id() const;
  // Merge `rank` as (left id, right id); it creates merge_result(rank)
  // (256 + rank in the canonical layout). {-1, -1} (and -1) if rank is
  // outside [0, num_merges()).
  std::pair<TokenId, TokenId> merge(int rank) const;
  TokenId merge_result(int rank) const;

  // HashHex (xxh3, 16 hex digits) of ToJson(): identifies the tokenizer in
  // the manifests of later stages. Computed once at construction.
  std::string Hash() const;

 private:
  struct Impl;
  explicit Tokenizer(std::shared_ptr<const Impl> impl);

  // Validates the parts (lm/internal/tokenizer_layout.h) and builds the
  // lookup tables. Every factory ends here.
  struct Layout;
  static absl::StatusOr<Tokenizer> Build(Layout layout);

  // A vocabulary spelled in GPT-2's byte alphabet (lm/internal/string_vocab.h)
  // mapped onto ids; the GPT-2 and Hugging Face readers end here.
  struct StringVocab;
  static absl::StatusOr<Tokenizer> FromStringVocab(const StringVocab& vocab);

  std::shared_ptr<const Impl> impl_;
};

}  // namespace rag::lm

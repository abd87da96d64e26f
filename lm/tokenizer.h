// Byte-level BPE tokenizer in the style of GPT-2: trains on our corpus,
// reads GPT-2's encoder.json + vocab.bpe and Hugging Face's tokenizer.json or
// vocab.json + merges.txt, and saves/loads its own JSON.
// Immutable after construction; Encode/Decode are thread-safe.
//
// Token ids
//   0..255          the 256 byte tokens. `byte_ids[b]` is the id of byte b;
//                   ours is the identity, GPT-2's is a permutation.
//   256..256+M-1    merge results: merge i (rank i) creates id 256 + i.
//   256+M..V-1      special tokens; "<|endoftext|>" is always one of them.
//
// On-disk format (tokenizer.json), version 1. UTF-8 JSON:
//   {
//     "format": "rag-byte-bpe",        // fixed; anything else is rejected
//     "version": 1,                    // bumped on any incompatible change
//     "pretokenizer": "gpt2",          // the GPT-2 split regex (see below)
//     "vocab_size": V,                 // = 256 + M + number of specials
//     "special_tokens": {"<|endoftext|>": V - 1},
//     "byte_ids": [256 ints],          // a permutation of 0..255
//     "merges": [[left, right], ...]   // M pairs of ids, in rank order
//   }
// Merges name tokens by id, so any byte sequence round-trips with no escaping;
// merge i may only use ids below 256 + i. Specials occupy the last ids.
// ToJson() writes this layout canonically (fixed key order, one merge per
// line), so Hash() depends only on the tokenizer's content.
//
// Pre-tokenization is GPT-2's regex
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
// (PCRE2, UTF + UCP). Bytes that are not valid UTF-8 never match it; each
// such run becomes a piece of its own, so every byte string encodes.
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

  // Reads our tokenizer.json. NotFound (naming the path) if it is missing,
  // InvalidArgument if it is not valid JSON of the format above.
  static absl::StatusOr<Tokenizer> Load(const std::string& json_path);
  static absl::StatusOr<Tokenizer> FromJson(const std::string& json_text);

  // Reads OpenAI's GPT-2 files: encoder.json (token string -> id, strings in
  // GPT-2's bytes_to_unicode alphabet) and vocab.bpe ("#version" line, then
  // one "left right" merge per line). NotFound if a file is missing,
  // InvalidArgument if they are malformed or inconsistent.
  static absl::StatusOr<Tokenizer> LoadGpt2(const std::string& encoder_json_path,
                                            const std::string& vocab_bpe_path);

  // Reads a Hugging Face `tokenizers` file (tokenizer.json) holding a GPT-2
  // style byte-level BPE: model.type "BPE" with model.vocab {token: id} in
  // GPT-2's bytes_to_unicode alphabet and model.merges as "left right"
  // strings or ["left", "right"] pairs (tokenizers >= 0.20); added_tokens
  // marked special become our special tokens. Accepted only when encoding
  // is exactly ours: normalizer null; pre_tokenizer ByteLevel with
  // add_prefix_space false and use_regex true or absent (alone or as the only
  // member of a Sequence); model.dropout null; continuing_subword_prefix and
  // end_of_word_suffix null or ""; byte_fallback and ignore_merges false or
  // absent; no non-special added tokens; and our id layout (bytes 0..255,
  // merge i makes 256 + i, special tokens after). post_processor, decoder,
  // truncation and padding are ignored. NotFound if the file is missing;
  // InvalidArgument naming the file, each unsupported field and its value
  // ("normalizer NFC is not supported (expected null)"), or what differs in
  // the id layout (e.g. GPT-NeoX's: specials at 0, bytes at 2..257), or the
  // malformed part. GPT-2's vocabulary gives the same Hash() as LoadGpt2.
  // Like every loader, special-token text in Encode() input stays plain bytes
  // (Hugging Face would split it out as the special id).
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

  // Encodes any byte string (invalid UTF-8, NUL bytes, "" -> {}). Never
  // fails. Special-token text such as "<|endoftext|>" in `text` is encoded
  // as ordinary bytes: callers insert eot_id() by id, so user text can never
  // forge a document boundary.
  std::vector<TokenId> Encode(std::string_view text) const;

  // Concatenates TokenBytes() of `ids`. Decode(Encode(x)) == x for every x.
  // Special tokens decode to their text ("<|endoftext|>"), as in GPT-2.
  // InvalidArgument naming the first id outside [0, vocab_size()).
  absl::StatusOr<std::string> Decode(const std::vector<TokenId>& ids) const;

  // Raw bytes of one token; the text for a special token; "" for an id
  // outside [0, vocab_size()).
  std::string TokenBytes(TokenId id) const;

  // 256 + number of merges + number of special tokens.
  int vocab_size() const;
  int num_merges() const;
  // The "<|endoftext|>" id: 50256 for GPT-2, vocab_size() - 1 for ours.
  TokenId eot_id() const;
  // Merge `rank` as (left id, right id); it creates id 256 + rank.
  // {-1, -1} if rank is outside [0, num_merges()).
  std::pair<TokenId, TokenId> merge(int rank) const;

  // HashHex (xxh3, 16 hex digits) of ToJson(): identifies the tokenizer in
  // the manifests of later stages. Computed once at construction.
  std::string Hash() const;

 private:
  struct Impl;
  explicit Tokenizer(std::shared_ptr<const Impl> impl);

  // Validates the parts and builds the lookup tables. Every factory ends here.
  static absl::StatusOr<Tokenizer> Build(std::vector<TokenId> byte_ids,
                                         std::vector<std::pair<TokenId, TokenId>> merges,
                                         std::vector<std::pair<std::string, TokenId>> specials);

  // A vocabulary spelled in GPT-2's byte alphabet (lm/internal/string_vocab.h)
  // mapped onto our id layout; the GPT-2 and Hugging Face readers end here.
  struct StringVocab;
  static absl::StatusOr<Tokenizer> FromStringVocab(const StringVocab& vocab);

  std::shared_ptr<const Impl> impl_;
};

}  // namespace rag::lm

// Tokenizer::Impl, the built tokenizer behind lm/tokenizer.h, shared by
// its two halves: lm/tokenizer.cc (building and encoding) and
// lm/tokenizer_json.cc (the tokenizer.json format). Private to lm/.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "lm/internal/pretokenizer.h"
#include "lm/internal/tokenizer_layout.h"
#include "lm/tokenizer.h"

namespace rag::lm {
namespace internal {

// Per-piece encode cache. Sharded so that many server threads rarely meet on
// one mutex; bounded because a long-running server sees unbounded distinct
// pieces. A full shard is simply cleared: cheap, and hot pieces come back
// within a few lookups.
inline constexpr int kCacheShards = 64;
inline constexpr size_t kMaxCacheEntriesPerShard = 4096;

// (left, right) -> (rank, merged id). Open addressing with linear probing:
// this lookup is the inner loop of encoding, and a flat power-of-two table
// of 16-byte slots beats a general hash map by a wide margin here.
class PairTable {
 public:
  struct Slot {
    uint64_t key = kEmpty;
    int32_t rank = -1;
    TokenId merged = -1;
  };

  void Init(size_t num_pairs) {
    size_t capacity = 16;
    while (capacity < num_pairs * 2) capacity <<= 1;
    slots_.assign(capacity, Slot{});
    mask_ = capacity - 1;
  }

  // Returns false if `key` is already present (the first rank wins).
  bool Insert(uint64_t key, int32_t rank, TokenId merged) {
    for (size_t i = Hash(key) & mask_;; i = (i + 1) & mask_) {
      if (slots_[i].key == key) return false;
      if (slots_[i].key == kEmpty) {
        slots_[i] = Slot{key, rank, merged};
        return true;
      }
    }
  }

  const Slot* Find(uint64_t key) const {
    for (size_t i = Hash(key) & mask_;; i = (i + 1) & mask_) {
      const Slot& slot = slots_[i];
      if (slot.key == key) return &slot;
      if (slot.key == kEmpty) return nullptr;
    }
  }

 private:
  // Ids are < 2^31, so no real pair has all bits set.
  static constexpr uint64_t kEmpty = ~uint64_t{0};
  static size_t Hash(uint64_t key) {
    key *= 0x9E3779B97F4A7C15ull;
    return static_cast<size_t>(key ^ (key >> 29));
  }

  std::vector<Slot> slots_;
  size_t mask_ = 0;
};

struct CacheShard {
  std::mutex mu;
  absl::flat_hash_map<std::string, std::vector<TokenId>> map;
};

// Leftmost-longest matching of added tokens, as Hugging Face's
// aho-corasick (MatchKind::LeftmostLongest) does: scanning left to right, at
// the first position where any token matches, the longest one wins, and the
// scan resumes after it. Tokens are few (GPT-NeoX: 23), so a per-first-byte
// list sorted longest first is enough.
class AddedTokenMatcher {
 public:
  void Add(const std::string& pattern, TokenId id) {
    auto& list = by_first_[static_cast<uint8_t>(pattern[0])];
    list.emplace_back(pattern, id);
    std::stable_sort(list.begin(), list.end(),
                     [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
    empty_ = false;
  }
  bool empty() const { return empty_; }

  // Calls gap() with each non-empty stretch between matches and token() with
  // each match's id, in text order.
  void Split(std::string_view text, absl::FunctionRef<void(std::string_view)> gap,
             absl::FunctionRef<void(TokenId)> token) const {
    size_t gap_start = 0;
    size_t i = 0;
    while (i < text.size()) {
      const auto& list = by_first_[static_cast<uint8_t>(text[i])];
      const std::pair<std::string, TokenId>* hit = nullptr;
      for (const auto& candidate : list) {
        if (text.compare(i, candidate.first.size(), candidate.first) == 0) {
          hit = &candidate;
          break;
        }
      }
      if (hit == nullptr) {
        ++i;
        continue;
      }
      if (i > gap_start) gap(text.substr(gap_start, i - gap_start));
      token(hit->second);
      i += hit->first.size();
      gap_start = i;
    }
    if (text.size() > gap_start) gap(text.substr(gap_start));
  }

 private:
  std::array<std::vector<std::pair<std::string, TokenId>>, 256> by_first_;
  bool empty_ = true;
};

}  // namespace internal

struct Tokenizer::Impl {
  // byte_ids [256] (-1: no token), merges in rank order, specials and added
  // tokens sorted by id, normalizer.
  Layout layout;
  TokenId eot = -1;
  std::vector<std::string> token_bytes;  // id -> bytes; "" for a hole
  std::vector<bool> defined;             // id -> not a hole
  std::array<bool, 256> has_token{};     // byte -> has a token
  // The canonical layout: written as format version 1.
  bool canonical = false;
  // Encode is pre-tokenization + BPE only (no normalizer, no added tokens,
  // every byte has a token), so Normalize is the identity.
  bool plain = false;
  internal::PairTable pairs;
  internal::AddedTokenMatcher raw_added;         // normalized=false: matched on the raw text
  internal::AddedTokenMatcher normalized_added;  // normalized=true: matched after normalization
  std::unique_ptr<internal::Pretokenizer> pretokenizer;
  std::string hash;
  mutable std::array<internal::CacheShard, internal::kCacheShards> cache;

  int vocab_size() const { return static_cast<int>(token_bytes.size()); }

  // Steps 1-2 of Encode (lm/tokenizer.h): raw added tokens as ids, the gaps
  // between them normalized; calls text() or token() in order.
  void SplitAndNormalize(std::string_view text, absl::FunctionRef<void(std::string_view)> normalized_gap,
                         absl::FunctionRef<void(TokenId)> token) const;
  // Steps 3-4 on one normalized gap.
  void EncodeNormalized(std::string_view text, std::vector<TokenId>* out) const;
  // Appends the BPE encoding of one pre-tokenized piece, through the cache.
  void EncodePiece(std::string_view piece, std::vector<TokenId>* out) const;
  // Applies the merges to `piece` by rank, lowest first, all occurrences of
  // a pair left to right -- exactly GPT-2's bpe(). Uncached.
  void MergePiece(std::string_view piece, std::vector<TokenId>* out) const;
  void MergeSimple(std::string_view piece, std::vector<TokenId>* out) const;
  void MergeWithHeap(std::string_view piece, std::vector<TokenId>* out) const;

  // "" if the layout is canonical, else what differs first.
  std::string NonCanonicalReason() const;
  std::string ToJson() const;
  std::string CanonicalJson() const;
  std::string GeneralJson() const;
};

}  // namespace rag::lm

#include "lm/tokenizer.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <functional>
#include <limits>
#include <mutex>
#include <queue>
#include <utility>

#include <nlohmann/json.hpp>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/hash/hash.h"
#include "absl/strings/string_view.h"
#include "common/file_util.h"
#include "common/status.h"
#include "lm/internal/bpe_pair.h"
#include "lm/internal/pretokenizer.h"
#include "lm/internal/text_normalizer.h"
#include "lm/internal/tokenizer_layout.h"

namespace rag::lm {
namespace {

using internal::KeyLeft;
using internal::KeyRight;
using internal::PairKey;

constexpr char kFormatName[] = "rag-byte-bpe";
// Version 1 holds the canonical layout only; version 2 any layout.
constexpr int kCanonicalFormatVersion = 1;
constexpr int kGeneralFormatVersion = 2;
constexpr char kPretokenizerName[] = "gpt2";

// Per-piece encode cache. Sharded so that many server threads rarely meet on
// one mutex; bounded because a long-running server sees unbounded distinct
// pieces. A full shard is simply cleared: cheap, and hot pieces come back
// within a few lookups.
constexpr int kCacheShards = 64;
constexpr size_t kMaxCacheEntriesPerShard = 4096;
// Longer pieces are rare (runs of whitespace, binary junk) and would only
// evict useful entries.
constexpr size_t kMaxCachedPieceBytes = 64;
// Pieces up to this many bytes use the simple rescanning merge loop (like
// GPT-2's encoder.py, O(n^2) but tiny n); longer ones a heap, O(n log n).
constexpr size_t kMaxSimpleMergeBytes = 48;

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

// `text` as a JSON string for messages; invalid UTF-8 is replaced, not thrown on.
std::string Quote(const std::string& text) {
  return nlohmann::json(text).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

absl::Status JsonError(const std::string& what) {
  return absl::InvalidArgumentError("tokenizer json: " + what);
}

}  // namespace

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
  PairTable pairs;
  AddedTokenMatcher raw_added;         // normalized=false: matched on the raw text
  AddedTokenMatcher normalized_added;  // normalized=true: matched after normalization
  std::unique_ptr<internal::Pretokenizer> pretokenizer;
  std::string hash;
  mutable std::array<CacheShard, kCacheShards> cache;

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

void Tokenizer::Impl::SplitAndNormalize(std::string_view text,
                                        absl::FunctionRef<void(std::string_view)> normalized_gap,
                                        absl::FunctionRef<void(TokenId)> token) const {
  const bool nfc = layout.normalizer == Layout::Normalizer::kNfc;
  std::string normalized;
  raw_added.Split(
      text,
      [&](std::string_view gap) {
        normalized.clear();
        internal::AppendNormalized(gap, nfc, has_token, &normalized);
        normalized_gap(normalized);
      },
      token);
}

void Tokenizer::Impl::EncodeNormalized(std::string_view text, std::vector<TokenId>* out) const {
  normalized_added.Split(
      text, [&](std::string_view gap) { pretokenizer->Split(gap, [&](std::string_view piece) { EncodePiece(piece, out); }); },
      [&](TokenId id) { out->push_back(id); });
}

void Tokenizer::Impl::EncodePiece(std::string_view piece, std::vector<TokenId>* out) const {
  if (piece.size() == 1) {
    out->push_back(layout.byte_ids[static_cast<uint8_t>(piece[0])]);
    return;
  }
  if (piece.size() > kMaxCachedPieceBytes) {
    MergePiece(piece, out);
    return;
  }
  absl::string_view key(piece.data(), piece.size());
  // Top bits pick the shard: flat_hash_map uses the low bits internally, and
  // reusing them would crowd each shard's control bytes.
  CacheShard& shard = cache[absl::Hash<absl::string_view>{}(key) >> (sizeof(size_t) * 8 - 6)];
  static_assert(kCacheShards == 64, "shard index uses the top 6 hash bits");
  {
    std::lock_guard<std::mutex> lock(shard.mu);
    auto it = shard.map.find(key);
    if (it != shard.map.end()) {
      out->insert(out->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  size_t begin = out->size();
  MergePiece(piece, out);
  std::vector<TokenId> ids(out->begin() + static_cast<std::ptrdiff_t>(begin), out->end());
  std::lock_guard<std::mutex> lock(shard.mu);
  if (shard.map.size() >= kMaxCacheEntriesPerShard) shard.map.clear();
  shard.map.emplace(std::string(piece), std::move(ids));
}

void Tokenizer::Impl::MergePiece(std::string_view piece, std::vector<TokenId>* out) const {
  if (piece.size() <= kMaxSimpleMergeBytes) {
    MergeSimple(piece, out);
  } else {
    MergeWithHeap(piece, out);
  }
}

void Tokenizer::Impl::MergeSimple(std::string_view piece, std::vector<TokenId>* out) const {
  TokenId syms[kMaxSimpleMergeBytes];
  size_t n = piece.size();
  for (size_t i = 0; i < n; ++i) syms[i] = layout.byte_ids[static_cast<uint8_t>(piece[i])];
  while (n > 1) {
    const PairTable::Slot* best = nullptr;
    for (size_t i = 0; i + 1 < n; ++i) {
      const PairTable::Slot* slot = pairs.Find(PairKey(syms[i], syms[i + 1]));
      if (slot != nullptr && (best == nullptr || slot->rank < best->rank)) best = slot;
    }
    if (best == nullptr) break;
    const TokenId left = KeyLeft(best->key);
    const TokenId right = KeyRight(best->key);
    size_t w = 0;
    for (size_t r = 0; r < n;) {
      if (r + 1 < n && syms[r] == left && syms[r + 1] == right) {
        syms[w++] = best->merged;
        r += 2;
      } else {
        syms[w++] = syms[r++];
      }
    }
    n = w;
  }
  out->insert(out->end(), syms, syms + n);
}

void Tokenizer::Impl::MergeWithHeap(std::string_view piece, std::vector<TokenId>* out) const {
  // Symbols form a linked list over their original positions; a merge keeps
  // the left node. Candidates are ordered by (rank, position), which visits
  // the occurrences of the lowest-rank pair left to right, as GPT-2 does.
  // Stale candidates (a neighbour changed) are detected by re-checking the
  // rank. A merge only creates pairs of higher rank than its own because a
  // merge may only use bytes and earlier merges' results, each made by one
  // merge (checked in Build), so no occurrence of the current rank can
  // appear behind the scan. This is also Hugging Face's algorithm
  // (tokenizers' Word::merge_all).
  const int n = static_cast<int>(piece.size());
  std::vector<TokenId> ids(n);
  std::vector<int> prev(n), next(n);
  for (int i = 0; i < n; ++i) {
    ids[i] = layout.byte_ids[static_cast<uint8_t>(piece[i])];
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  using Candidate = std::pair<int32_t, int>;  // (rank, position)
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
  auto push = [&](int pos) {
    if (pos < 0 || next[pos] < 0) return;
    const PairTable::Slot* slot = pairs.Find(PairKey(ids[pos], ids[next[pos]]));
    if (slot != nullptr) heap.push({slot->rank, pos});
  };
  for (int i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    auto [rank, pos] = heap.top();
    heap.pop();
    if (ids[pos] < 0 || next[pos] < 0) continue;
    const int right = next[pos];
    const PairTable::Slot* slot = pairs.Find(PairKey(ids[pos], ids[right]));
    if (slot == nullptr || slot->rank != rank) continue;
    ids[pos] = slot->merged;
    ids[right] = -1;
    next[pos] = next[right];
    if (next[pos] >= 0) prev[next[pos]] = pos;
    push(prev[pos]);
    push(pos);
  }
  for (int i = 0; i >= 0; i = next[i]) out->push_back(ids[i]);
}

std::string Tokenizer::Impl::ToJson() const { return canonical ? CanonicalJson() : GeneralJson(); }

namespace {

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
  s += "  \"byte_ids\": [";
  for (int b = 0; b < 256; ++b) {
    if (b > 0) s += ", ";
    s += std::to_string(layout.byte_ids[b]);
  }
  s += "],\n";
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
  s += "  \"byte_ids\": [";
  for (int b = 0; b < 256; ++b) {
    if (b > 0) s += ", ";
    s += std::to_string(layout.byte_ids[b]);
  }
  s += "],\n";
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

Tokenizer::Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}

absl::StatusOr<Tokenizer> Tokenizer::Build(Layout layout) {
  auto bad = [](const std::string& what) { return absl::InvalidArgumentError(what); };
  auto in_range = [](TokenId id) { return id >= 0 && id < kMaxVocabSize; };
  if (layout.byte_ids.size() != 256) {
    return bad("byte_ids: expected 256 entries, got " + std::to_string(layout.byte_ids.size()));
  }
  // Every id in range first, so the tables below can be sized by the largest.
  TokenId largest = -1;
  for (int b = 0; b < 256; ++b) {
    const TokenId id = layout.byte_ids[b];
    if (id == -1) {
      // A byte of valid UTF-8 without a token could not be encoded at all;
      // the others only occur in invalid UTF-8 and become U+FFFD.
      if (!internal::NeverInUtf8(static_cast<unsigned char>(b))) {
        return bad("byte_ids: no token for byte " + std::to_string(b) +
                   " (only 0xC0, 0xC1 and 0xF5..0xFF, never in valid UTF-8, may lack one)");
      }
      continue;
    }
    if (!in_range(id)) return bad("byte_ids: entry " + std::to_string(b) + " is " + std::to_string(id));
    largest = std::max(largest, id);
  }
  for (size_t i = 0; i < layout.merges.size(); ++i) {
    const Layout::Merge& m = layout.merges[i];
    for (TokenId id : {m.left, m.right, m.result}) {
      if (!in_range(id)) {
        return bad("merge " + std::to_string(i) + " [" + std::to_string(m.left) + ", " + std::to_string(m.right) +
                   "] refers to an id outside [0, " + std::to_string(kMaxVocabSize) + ")");
      }
    }
    largest = std::max(largest, m.result);
  }
  for (const auto& [text, id] : layout.specials) {
    if (!in_range(id)) return bad("special token " + text + " has id " + std::to_string(id));
    largest = std::max(largest, id);
  }
  for (const Layout::AddedToken& t : layout.added) {
    if (!in_range(t.id)) return bad("added token " + Quote(t.text) + " has id " + std::to_string(t.id));
    largest = std::max(largest, t.id);
  }
  const int64_t vocab = static_cast<int64_t>(largest) + 1;
  if (vocab > kMaxVocabSize) {
    return bad("vocabulary of " + std::to_string(vocab) + " tokens exceeds the maximum " +
               std::to_string(kMaxVocabSize));
  }

  auto impl = std::make_shared<Impl>();
  impl->token_bytes.resize(vocab);
  // What each id is, for the messages: "byte 104", "merge 7", ...
  std::vector<std::string> owner(vocab);
  auto claim = [&](TokenId id, const std::string& who) -> absl::Status {
    if (!owner[id].empty()) {
      return bad(who + " has id " + std::to_string(id) + ", already used by " + owner[id]);
    }
    owner[id] = who;
    return absl::OkStatus();
  };
  for (int b = 0; b < 256; ++b) {
    const TokenId id = layout.byte_ids[b];
    if (id < 0) continue;
    RAG_RETURN_IF_ERROR(claim(id, "byte " + std::to_string(b)));
    impl->token_bytes[id] = std::string(1, static_cast<char>(b));
    impl->has_token[b] = true;
  }
  // Operands must be bytes or earlier merges' results: the merge order is
  // then a valid build-up of the vocabulary, which MergeWithHeap relies on.
  std::vector<bool> buildable(vocab, false);
  for (int b = 0; b < 256; ++b) {
    if (layout.byte_ids[b] >= 0) buildable[layout.byte_ids[b]] = true;
  }
  impl->pairs.Init(layout.merges.size());
  for (size_t i = 0; i < layout.merges.size(); ++i) {
    const auto [left, right, result] = layout.merges[i];
    const std::string name = "merge " + std::to_string(i) + " [" + std::to_string(left) + ", " +
                             std::to_string(right) + "]";
    for (TokenId operand : {left, right}) {
      if (operand >= vocab || !buildable[operand]) {
        return bad(name + " uses id " + std::to_string(operand) +
                   ", which is neither a byte token nor made by an earlier merge");
      }
    }
    RAG_RETURN_IF_ERROR(claim(result, name));
    if (!impl->pairs.Insert(PairKey(left, right), static_cast<int32_t>(i), result)) {
      return bad(name + " is a duplicate");
    }
    impl->token_bytes[result] = impl->token_bytes[left] + impl->token_bytes[right];
    buildable[result] = true;
  }

  std::sort(layout.specials.begin(), layout.specials.end(),
            [](const auto& a, const auto& b) { return a.second < b.second; });
  std::sort(layout.added.begin(), layout.added.end(),
            [](const Layout::AddedToken& a, const Layout::AddedToken& b) { return a.id < b.id; });
  absl::flat_hash_map<std::string, std::string> texts;  // special/added text -> what it is
  for (const auto& [text, id] : layout.specials) {
    if (text.empty()) return bad("special token with empty text");
    const std::string who = "special token " + text;
    if (!texts.emplace(text, who).second) return bad(who + " is listed twice");
    RAG_RETURN_IF_ERROR(claim(id, who));
    if (text == kEndOfTextToken) impl->eot = id;
    impl->token_bytes[id] = text;
  }
  if (impl->eot < 0) return bad(std::string("special_tokens: missing ") + kEndOfTextToken);

  const bool nfc = layout.normalizer == Layout::Normalizer::kNfc;
  if (nfc) RAG_RETURN_IF_ERROR(internal::InitNfc());
  for (const Layout::AddedToken& t : layout.added) {
    const std::string who = "added token " + Quote(t.text);
    if (t.text.empty()) return bad("added token with empty text (id " + std::to_string(t.id) + ")");
    auto [it, fresh] = texts.emplace(t.text, who);
    if (!fresh) return bad(who + " has the same text as " + it->second);
    RAG_RETURN_IF_ERROR(claim(t.id, who));
    impl->token_bytes[t.id] = t.text;
    if (!t.normalized) {
      impl->raw_added.Add(t.text, t.id);
      continue;
    }
    // Matched on normalized text: under NFC a text that NFC changes could
    // match without decoding back to what was matched, so it is refused.
    if (nfc) {
      std::string normal;
      if (absl::Status s = internal::Nfc(t.text, &normal); !s.ok()) return bad(who + ": " + std::string(s.message()));
      if (normal != t.text) return bad(who + " (normalized) is not in NFC");
    }
    impl->normalized_added.Add(t.text, t.id);
  }

  impl->defined.assign(vocab, false);
  for (int64_t id = 0; id < vocab; ++id) impl->defined[id] = !owner[id].empty();
  bool every_byte = true;
  for (bool b : impl->has_token) every_byte = every_byte && b;
  impl->plain = !nfc && layout.added.empty() && every_byte;

  RAG_ASSIGN_OR_RETURN(impl->pretokenizer, internal::Pretokenizer::Create());
  impl->layout = std::move(layout);
  impl->canonical = impl->NonCanonicalReason().empty();
  impl->hash = HashHex(impl->ToJson());
  return Tokenizer(std::move(impl));
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

// ---------------------------------------------------------------- use

absl::Status Tokenizer::Save(const std::string& json_path) const {
  return Annotate(WriteFileAtomic(json_path, ToJson()), "saving tokenizer");
}

std::string Tokenizer::ToJson() const { return impl_->ToJson(); }

std::vector<TokenId> Tokenizer::Encode(std::string_view text) const {
  std::vector<TokenId> out;
  out.reserve(text.size() / 4 + 1);
  const Impl& impl = *impl_;
  if (impl.plain) {
    impl.pretokenizer->Split(text, [&](std::string_view piece) { impl.EncodePiece(piece, &out); });
    return out;
  }
  impl.SplitAndNormalize(
      text, [&](std::string_view gap) { impl.EncodeNormalized(gap, &out); }, [&](TokenId id) { out.push_back(id); });
  return out;
}

std::string Tokenizer::Normalize(std::string_view text) const {
  const Impl& impl = *impl_;
  if (impl.plain) return std::string(text);
  std::string out;
  out.reserve(text.size());
  impl.SplitAndNormalize(
      text, [&](std::string_view gap) { out.append(gap); }, [&](TokenId id) { out += impl.token_bytes[id]; });
  return out;
}

absl::StatusOr<std::string> Tokenizer::Decode(const std::vector<TokenId>& ids) const {
  const auto& tokens = impl_->token_bytes;
  size_t total = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    const TokenId id = ids[i];
    if (id < 0 || id >= impl_->vocab_size()) {
      return absl::InvalidArgumentError("Decode: token id " + std::to_string(id) + " at position " +
                                        std::to_string(i) + " is outside [0, " +
                                        std::to_string(impl_->vocab_size()) + ")");
    }
    if (!impl_->defined[id]) {
      return absl::InvalidArgumentError("Decode: token id " + std::to_string(id) + " at position " +
                                        std::to_string(i) + " is no token (a hole in the vocabulary)");
    }
    total += tokens[id].size();
  }
  std::string out;
  out.reserve(total);
  for (TokenId id : ids) out += tokens[id];
  return out;
}

std::string Tokenizer::TokenBytes(TokenId id) const {
  if (id < 0 || id >= impl_->vocab_size()) return "";
  return impl_->token_bytes[id];
}

int Tokenizer::vocab_size() const { return impl_->vocab_size(); }
int Tokenizer::num_merges() const { return static_cast<int>(impl_->layout.merges.size()); }
TokenId Tokenizer::eot_id() const { return impl_->eot; }
std::pair<TokenId, TokenId> Tokenizer::merge(int rank) const {
  if (rank < 0 || rank >= num_merges()) return {-1, -1};
  return {impl_->layout.merges[rank].left, impl_->layout.merges[rank].right};
}
TokenId Tokenizer::merge_result(int rank) const {
  if (rank < 0 || rank >= num_merges()) return -1;
  return impl_->layout.merges[rank].result;
}
std::string Tokenizer::Hash() const { return impl_->hash; }

}  // namespace rag::lm

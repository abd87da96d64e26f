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
#include "lm/internal/tokenizer_impl.h"
#include "lm/internal/tokenizer_layout.h"

namespace rag::lm {
namespace {

using internal::KeyLeft;
using internal::KeyRight;
using internal::PairKey;

using internal::CacheShard;
using internal::kCacheShards;
using internal::kMaxCacheEntriesPerShard;
using internal::PairTable;

// Longer pieces are rare (runs of whitespace, binary junk) and would only
// evict useful entries.
constexpr size_t kMaxCachedPieceBytes = 64;
// Pieces up to this many bytes use the simple rescanning merge loop (like
// GPT-2's encoder.py, O(n^2) but tiny n); longer ones a heap, O(n log n).
constexpr size_t kMaxSimpleMergeBytes = 48;

// `text` as a JSON string for messages; invalid UTF-8 is replaced, not thrown on.
std::string Quote(const std::string& text) {
  return nlohmann::json(text).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace

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

// ---------------------------------------------------------------- use

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

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
#include "absl/hash/hash.h"
#include "absl/strings/string_view.h"
#include "common/file_util.h"
#include "common/status.h"
#include "lm/internal/bpe_pair.h"
#include "lm/internal/pretokenizer.h"

namespace rag::lm {
namespace {

using internal::KeyLeft;
using internal::KeyRight;
using internal::PairKey;

constexpr char kFormatName[] = "rag-byte-bpe";
constexpr int kFormatVersion = 1;
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

absl::Status JsonError(const std::string& what) {
  return absl::InvalidArgumentError("tokenizer json: " + what);
}

}  // namespace

struct Tokenizer::Impl {
  std::vector<TokenId> byte_ids;                           // [256]
  std::vector<std::pair<TokenId, TokenId>> merges;         // rank -> (left, right)
  std::vector<std::pair<std::string, TokenId>> specials;   // sorted by id
  TokenId eot = -1;
  std::vector<std::string> token_bytes;                    // id -> bytes
  PairTable pairs;
  std::unique_ptr<internal::Pretokenizer> pretokenizer;
  std::string hash;
  mutable std::array<CacheShard, kCacheShards> cache;

  int vocab_size() const { return static_cast<int>(token_bytes.size()); }

  // Appends the BPE encoding of one pre-tokenized piece, through the cache.
  void EncodePiece(std::string_view piece, std::vector<TokenId>* out) const;
  // Applies the merges to `piece` by rank, lowest first, all occurrences of
  // a pair left to right -- exactly GPT-2's bpe(). Uncached.
  void MergePiece(std::string_view piece, std::vector<TokenId>* out) const;
  void MergeSimple(std::string_view piece, std::vector<TokenId>* out) const;
  void MergeWithHeap(std::string_view piece, std::vector<TokenId>* out) const;

  std::string ToJson() const;
};

void Tokenizer::Impl::EncodePiece(std::string_view piece, std::vector<TokenId>* out) const {
  if (piece.size() == 1) {
    out->push_back(byte_ids[static_cast<uint8_t>(piece[0])]);
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
  for (size_t i = 0; i < n; ++i) syms[i] = byte_ids[static_cast<uint8_t>(piece[i])];
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
  // merge may only use earlier ids (checked in Build), so no occurrence of
  // the current rank can appear behind the scan.
  const int n = static_cast<int>(piece.size());
  std::vector<TokenId> ids(n);
  std::vector<int> prev(n), next(n);
  for (int i = 0; i < n; ++i) {
    ids[i] = byte_ids[static_cast<uint8_t>(piece[i])];
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

std::string Tokenizer::Impl::ToJson() const {
  // Written by hand rather than json::dump() so that merges are one per
  // line (readable, diffable) and the bytes are stable across library
  // versions: Hash() is recorded by later stages.
  std::string s;
  s.reserve(64 + merges.size() * 16);
  s += "{\n";
  s += "  \"format\": \"" + std::string(kFormatName) + "\",\n";
  s += "  \"version\": " + std::to_string(kFormatVersion) + ",\n";
  s += "  \"pretokenizer\": \"" + std::string(kPretokenizerName) + "\",\n";
  s += "  \"vocab_size\": " + std::to_string(vocab_size()) + ",\n";
  s += "  \"special_tokens\": {";
  for (size_t i = 0; i < specials.size(); ++i) {
    if (i > 0) s += ", ";
    s += nlohmann::json(specials[i].first).dump() + ": " + std::to_string(specials[i].second);
  }
  s += "},\n";
  s += "  \"byte_ids\": [";
  for (int b = 0; b < 256; ++b) {
    if (b > 0) s += ", ";
    s += std::to_string(byte_ids[b]);
  }
  s += "],\n";
  s += "  \"merges\": [";
  for (size_t i = 0; i < merges.size(); ++i) {
    s += i == 0 ? "\n    [" : ",\n    [";
    s += std::to_string(merges[i].first) + ", " + std::to_string(merges[i].second) + "]";
  }
  s += merges.empty() ? "]\n" : "\n  ]\n";
  s += "}\n";
  return s;
}

Tokenizer::Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}

absl::StatusOr<Tokenizer> Tokenizer::Build(std::vector<TokenId> byte_ids,
                                           std::vector<std::pair<TokenId, TokenId>> merges,
                                           std::vector<std::pair<std::string, TokenId>> specials) {
  if (byte_ids.size() != 256) {
    return absl::InvalidArgumentError("byte_ids: expected 256 entries, got " + std::to_string(byte_ids.size()));
  }
  std::array<bool, 256> seen{};
  for (int b = 0; b < 256; ++b) {
    TokenId id = byte_ids[b];
    if (id < 0 || id >= 256 || seen[id]) {
      return absl::InvalidArgumentError("byte_ids: expected a permutation of 0..255, entry " + std::to_string(b) +
                                        " is " + std::to_string(id));
    }
    seen[id] = true;
  }
  const int64_t vocab = 256 + static_cast<int64_t>(merges.size()) + static_cast<int64_t>(specials.size());
  if (vocab > kMaxVocabSize) {
    return absl::InvalidArgumentError("vocabulary of " + std::to_string(vocab) + " tokens exceeds the maximum " +
                                      std::to_string(kMaxVocabSize));
  }

  auto impl = std::make_shared<Impl>();
  impl->token_bytes.resize(vocab);
  for (int b = 0; b < 256; ++b) impl->token_bytes[byte_ids[b]] = std::string(1, static_cast<char>(b));
  impl->pairs.Init(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const TokenId merged = static_cast<TokenId>(256 + i);
    auto [left, right] = merges[i];
    // Only earlier ids: keeps the merge order a valid build-up of the
    // vocabulary and is what MergeWithHeap relies on.
    if (left < 0 || left >= merged || right < 0 || right >= merged) {
      return absl::InvalidArgumentError("merge " + std::to_string(i) + " [" + std::to_string(left) + ", " +
                                        std::to_string(right) + "] refers to an id outside [0, " +
                                        std::to_string(merged) + ")");
    }
    if (!impl->pairs.Insert(PairKey(left, right), static_cast<int32_t>(i), merged)) {
      return absl::InvalidArgumentError("merge " + std::to_string(i) + " [" + std::to_string(left) + ", " +
                                        std::to_string(right) + "] is a duplicate");
    }
    impl->token_bytes[merged] = impl->token_bytes[left] + impl->token_bytes[right];
  }

  std::sort(specials.begin(), specials.end(), [](const auto& a, const auto& b) { return a.second < b.second; });
  for (size_t i = 0; i < specials.size(); ++i) {
    const TokenId expected = static_cast<TokenId>(256 + merges.size() + i);
    const auto& [text, id] = specials[i];
    if (text.empty()) return absl::InvalidArgumentError("special token with empty text");
    if (id != expected) {
      return absl::InvalidArgumentError("special token " + text + ": expected id " + std::to_string(expected) +
                                        " (special tokens take the ids after the merges), got " +
                                        std::to_string(id));
    }
    if (text == kEndOfTextToken) impl->eot = id;
    impl->token_bytes[id] = text;
  }
  if (impl->eot < 0) {
    return absl::InvalidArgumentError(std::string("special_tokens: missing ") + kEndOfTextToken);
  }

  RAG_ASSIGN_OR_RETURN(impl->pretokenizer, internal::Pretokenizer::Create());
  impl->byte_ids = std::move(byte_ids);
  impl->merges = std::move(merges);
  impl->specials = std::move(specials);
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
    if (version != kFormatVersion) {
      return JsonError("unsupported version " + std::to_string(version) + " (this build reads version " +
                       std::to_string(kFormatVersion) + ")");
    }
    RAG_ASSIGN_OR_RETURN(std::string pretokenizer, StringField(j, "pretokenizer"));
    if (pretokenizer != kPretokenizerName) {
      return JsonError("pretokenizer is '" + pretokenizer + "', expected '" + kPretokenizerName + "'");
    }
    RAG_ASSIGN_OR_RETURN(int64_t vocab_size, IntField(j, "vocab_size"));

    auto bytes_it = j.find("byte_ids");
    if (bytes_it == j.end() || !bytes_it->is_array() || bytes_it->size() != 256) {
      return JsonError("field 'byte_ids' must be an array of 256 ids");
    }
    std::vector<TokenId> byte_ids;
    for (const auto& v : *bytes_it) {
      if (!IsId(v)) return JsonError("field 'byte_ids' holds a non-id value " + v.dump());
      byte_ids.push_back(v.get<TokenId>());
    }

    auto merges_it = j.find("merges");
    if (merges_it == j.end() || !merges_it->is_array()) return JsonError("field 'merges' must be an array");
    std::vector<std::pair<TokenId, TokenId>> merges;
    merges.reserve(merges_it->size());
    for (const auto& m : *merges_it) {
      if (!m.is_array() || m.size() != 2 || !IsId(m[0]) || !IsId(m[1])) {
        return JsonError("merge " + std::to_string(merges.size()) + " must be [left id, right id], got " +
                         m.dump());
      }
      merges.emplace_back(m[0].get<TokenId>(), m[1].get<TokenId>());
    }

    auto specials_it = j.find("special_tokens");
    if (specials_it == j.end() || !specials_it->is_object()) {
      return JsonError("field 'special_tokens' must be an object {text: id}");
    }
    std::vector<std::pair<std::string, TokenId>> specials;
    for (const auto& [text, id] : specials_it->items()) {
      if (!IsId(id)) return JsonError("special token " + text + " has a non-id value " + id.dump());
      specials.emplace_back(text, id.get<TokenId>());
    }

    auto tokenizer = Build(std::move(byte_ids), std::move(merges), std::move(specials));
    if (!tokenizer.ok()) return Annotate(tokenizer.status(), "tokenizer json");
    if (tokenizer->vocab_size() != vocab_size) {
      return JsonError("vocab_size is " + std::to_string(vocab_size) + " but the merges and special tokens make " +
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
  impl_->pretokenizer->Split(text, [&](std::string_view piece) { impl_->EncodePiece(piece, &out); });
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
int Tokenizer::num_merges() const { return static_cast<int>(impl_->merges.size()); }
TokenId Tokenizer::eot_id() const { return impl_->eot; }
std::pair<TokenId, TokenId> Tokenizer::merge(int rank) const {
  if (rank < 0 || rank >= num_merges()) return {-1, -1};
  return impl_->merges[rank];
}
std::string Tokenizer::Hash() const { return impl_->hash; }

}  // namespace rag::lm

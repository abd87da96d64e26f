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
#include "common/progress.h"
#include "common/status.h"
#include "lm/internal/pretokenizer.h"

namespace rag::lm {
namespace {

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

uint64_t PairKey(TokenId left, TokenId right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}
TokenId KeyLeft(uint64_t key) { return static_cast<TokenId>(key >> 32); }
TokenId KeyRight(uint64_t key) { return static_cast<TokenId>(key & 0xffffffffu); }

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

// GPT-2's bytes_to_unicode(): printable Latin-1 bytes map to themselves,
// the other 68 to U+0100.. in byte order. Returned as UTF-8 strings.
std::array<std::string, 256> BytesToUnicode() {
  std::array<bool, 256> printable{};
  for (int b = '!'; b <= '~'; ++b) printable[b] = true;
  for (int b = 0xA1; b <= 0xAC; ++b) printable[b] = true;
  for (int b = 0xAE; b <= 0xFF; ++b) printable[b] = true;
  std::array<std::string, 256> out;
  int next_extra = 256;
  for (int b = 0; b < 256; ++b) {
    uint32_t cp = printable[b] ? static_cast<uint32_t>(b) : static_cast<uint32_t>(next_extra++);
    std::string utf8;
    if (cp < 0x80) {
      utf8.push_back(static_cast<char>(cp));
    } else {  // all code points here are < 0x800
      utf8.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      utf8.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
    out[b] = std::move(utf8);
  }
  return out;
}

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

// ---------------------------------------------------------------- training

namespace {

// A distinct pre-tokenized piece of the training text, as current symbols.
struct Word {
  std::vector<TokenId> symbols;
  int64_t count = 0;
};

// Max-heap order for merge candidates: higher count first, then the
// smaller (left, right) so that ties resolve deterministically.
struct MergeCandidate {
  int64_t count;
  uint64_t key;
  bool operator<(const MergeCandidate& other) const {
    if (count != other.count) return count < other.count;
    return key > other.key;
  }
};

}  // namespace

absl::StatusOr<Tokenizer> Tokenizer::Train(const std::vector<std::string>& documents,
                                           const TokenizerTrainOptions& options) {
  if (options.vocab_size < 258 || options.vocab_size > kMaxVocabSize) {
    return absl::InvalidArgumentError("vocab_size: expected [258, " + std::to_string(kMaxVocabSize) +
                                      "] (256 bytes + >= 1 merge + " + kEndOfTextToken + "), got " +
                                      std::to_string(options.vocab_size));
  }
  if (options.min_pair_count < 1) {
    return absl::InvalidArgumentError("min_pair_count: expected >= 1, got " +
                                      std::to_string(options.min_pair_count));
  }
  RAG_ASSIGN_OR_RETURN(std::unique_ptr<internal::Pretokenizer> pretokenizer, internal::Pretokenizer::Create());

  // 1. Distinct pieces and their counts. Keys view into `documents`.
  absl::flat_hash_map<absl::string_view, int64_t> piece_counts;
  int64_t total_bytes = 0;
  for (const std::string& doc : documents) {
    total_bytes += static_cast<int64_t>(doc.size());
    pretokenizer->Split(doc, [&](std::string_view piece) {
      ++piece_counts[absl::string_view(piece.data(), piece.size())];
    });
  }
  if (total_bytes == 0) return absl::InvalidArgumentError("no text to train on");

  // Sorted so word indices, and with them everything below, do not depend
  // on hash-map iteration order.
  std::vector<std::pair<absl::string_view, int64_t>> sorted(piece_counts.begin(), piece_counts.end());
  piece_counts.clear();
  std::sort(sorted.begin(), sorted.end());
  std::vector<Word> words(sorted.size());
  for (size_t w = 0; w < sorted.size(); ++w) {
    const absl::string_view piece = sorted[w].first;
    words[w].symbols.reserve(piece.size());
    for (char c : piece) words[w].symbols.push_back(static_cast<uint8_t>(c));
    words[w].count = sorted[w].second;
  }
  sorted.clear();

  // 2. Pair counts and, per pair, the words that (may) contain it. The word
  // lists only grow; a listed word that lost the pair is skipped later.
  absl::flat_hash_map<uint64_t, int64_t> pair_counts;
  absl::flat_hash_map<uint64_t, std::vector<int32_t>> pair_words;
  for (size_t w = 0; w < words.size(); ++w) {
    const auto& s = words[w].symbols;
    for (size_t i = 0; i + 1 < s.size(); ++i) {
      uint64_t key = PairKey(s[i], s[i + 1]);
      pair_counts[key] += words[w].count;
      auto& list = pair_words[key];
      if (list.empty() || list.back() != static_cast<int32_t>(w)) list.push_back(static_cast<int32_t>(w));
    }
  }
  // Lazy max-heap: an entry's count may be stale, but only ever too high
  // (existing pairs only lose occurrences; new pairs are pushed exactly), so
  // re-pushing stale entries on pop finds the true maximum.
  std::vector<MergeCandidate> initial;
  initial.reserve(pair_counts.size());
  for (const auto& [key, count] : pair_counts) initial.push_back({count, key});
  std::priority_queue<MergeCandidate> heap(std::less<MergeCandidate>(), std::move(initial));

  const int target_merges = options.vocab_size - 256 - 1;
  std::vector<std::pair<TokenId, TokenId>> merges;
  merges.reserve(target_merges);
  std::unique_ptr<Progress> progress;
  if (options.show_progress) progress = std::make_unique<Progress>("bpe train", target_merges, "merges");

  std::vector<TokenId> merged_symbols;
  std::vector<uint64_t> new_pairs;
  while (static_cast<int>(merges.size()) < target_merges && !heap.empty()) {
    MergeCandidate top = heap.top();
    heap.pop();
    auto count_it = pair_counts.find(top.key);
    const int64_t current = count_it == pair_counts.end() ? 0 : count_it->second;
    if (current != top.count) {
      if (current > 0) heap.push({current, top.key});
      continue;
    }
    if (current < options.min_pair_count) break;

    const TokenId left = KeyLeft(top.key);
    const TokenId right = KeyRight(top.key);
    const TokenId merged = static_cast<TokenId>(256 + merges.size());
    merges.emplace_back(left, right);

    std::vector<int32_t> affected = std::move(pair_words[top.key]);
    pair_words.erase(top.key);
    new_pairs.clear();
    for (int32_t w : affected) {
      Word& word = words[w];
      std::vector<TokenId>& s = word.symbols;
      // Rewrite the word, merging (left, right) left to right.
      merged_symbols.clear();
      bool changed = false;
      for (size_t i = 0; i < s.size();) {
        if (i + 1 < s.size() && s[i] == left && s[i + 1] == right) {
          merged_symbols.push_back(merged);
          i += 2;
          changed = true;
        } else {
          merged_symbols.push_back(s[i++]);
        }
      }
      if (!changed) continue;
      // Remove the old word's pairs and add the new word's. Unchanged pairs
      // net to zero; words are short, so this is cheaper than being clever.
      for (size_t i = 0; i + 1 < s.size(); ++i) pair_counts[PairKey(s[i], s[i + 1])] -= word.count;
      for (size_t i = 0; i + 1 < merged_symbols.size(); ++i) {
        const TokenId a = merged_symbols[i];
        const TokenId b = merged_symbols[i + 1];
        const uint64_t key = PairKey(a, b);
        pair_counts[key] += word.count;
        if (a == merged || b == merged) {
          auto& list = pair_words[key];
          if (list.empty() || list.back() != w) list.push_back(w);
          new_pairs.push_back(key);
        }
      }
      s.swap(merged_symbols);
    }
    pair_counts.erase(top.key);
    std::sort(new_pairs.begin(), new_pairs.end());
    new_pairs.erase(std::unique(new_pairs.begin(), new_pairs.end()), new_pairs.end());
    for (uint64_t key : new_pairs) heap.push({pair_counts[key], key});
    if (progress) progress->Update(static_cast<int64_t>(merges.size()));
  }
  if (progress) progress->Finish(std::to_string(merges.size()) + " merges");

  const TokenId eot = static_cast<TokenId>(256 + merges.size());
  std::vector<TokenId> byte_ids(256);
  for (int b = 0; b < 256; ++b) byte_ids[b] = b;
  return Build(std::move(byte_ids), std::move(merges), {{kEndOfTextToken, eot}});
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

absl::StatusOr<Tokenizer> Tokenizer::LoadGpt2(const std::string& encoder_json_path,
                                               const std::string& vocab_bpe_path) {
  auto encoder_text = ReadFile(encoder_json_path);
  if (!encoder_text.ok()) return Annotate(encoder_text.status(), "loading GPT-2 encoder.json");
  auto bpe_text = ReadFile(vocab_bpe_path);
  if (!bpe_text.ok()) return Annotate(bpe_text.status(), "loading GPT-2 vocab.bpe");
  const std::string encoder_context = "loading GPT-2 encoder '" + encoder_json_path + "'";
  const std::string bpe_context = "loading GPT-2 merges '" + vocab_bpe_path + "'";

  // token string -> id, checked for duplicates and range.
  absl::flat_hash_map<std::string, TokenId> encoder;
  try {
    nlohmann::json j = nlohmann::json::parse(*encoder_text, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) {
      return Annotate(absl::InvalidArgumentError("expected a JSON object {token: id}"), encoder_context);
    }
    std::vector<bool> used(j.size(), false);
    for (const auto& [token, id] : j.items()) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= static_cast<int64_t>(j.size())) {
        return Annotate(absl::InvalidArgumentError("token " + nlohmann::json(token).dump() + " has id " + id.dump() +
                                                   ", expected an integer in [0, " + std::to_string(j.size()) + ")"),
                        encoder_context);
      }
      TokenId value = id.get<TokenId>();
      if (used[value]) {
        return Annotate(absl::InvalidArgumentError("id " + std::to_string(value) + " is used twice"),
                        encoder_context);
      }
      used[value] = true;
      encoder.emplace(token, value);
    }
  } catch (const nlohmann::json::exception& e) {
    return Annotate(absl::InvalidArgumentError(e.what()), encoder_context);
  }

  const std::array<std::string, 256> byte_strings = BytesToUnicode();
  std::vector<TokenId> byte_ids(256);
  for (int b = 0; b < 256; ++b) {
    auto it = encoder.find(byte_strings[b]);
    if (it == encoder.end()) {
      return Annotate(absl::InvalidArgumentError("no token for byte " + std::to_string(b)), encoder_context);
    }
    byte_ids[b] = it->second;
  }

  std::vector<std::pair<TokenId, TokenId>> merges;
  std::string_view rest = *bpe_text;
  int line_number = 0;
  while (!rest.empty()) {
    size_t eol = rest.find('\n');
    std::string_view line = rest.substr(0, eol);
    rest = eol == std::string_view::npos ? std::string_view() : rest.substr(eol + 1);
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty() || (line_number == 1 && line.substr(0, 8) == "#version")) continue;
    const std::string where = "line " + std::to_string(line_number) + ": ";
    size_t space = line.find(' ');
    if (space == std::string_view::npos || space == 0 || space + 1 == line.size() ||
        line.find(' ', space + 1) != std::string_view::npos) {
      return Annotate(absl::InvalidArgumentError(where + "expected 'left right', got '" + std::string(line) + "'"),
                      bpe_context);
    }
    std::string left(line.substr(0, space));
    std::string right(line.substr(space + 1));
    auto left_it = encoder.find(left);
    auto right_it = encoder.find(right);
    auto merged_it = encoder.find(left + right);
    if (left_it == encoder.end() || right_it == encoder.end() || merged_it == encoder.end()) {
      return Annotate(absl::InvalidArgumentError(where + "merge '" + std::string(line) +
                                                 "' uses or makes a token missing from encoder.json"),
                      bpe_context);
    }
    // Our id layout (merge i creates id 256 + i) holds for GPT-2; a file
    // that breaks it is not one we can represent.
    const TokenId expected = static_cast<TokenId>(256 + merges.size());
    if (merged_it->second != expected) {
      return Annotate(absl::InvalidArgumentError(where + "merge '" + std::string(line) + "' makes id " +
                                                 std::to_string(merged_it->second) + ", expected " +
                                                 std::to_string(expected) + " (ids in merge order)"),
                      bpe_context);
    }
    merges.emplace_back(left_it->second, right_it->second);
  }

  // What encoder.json holds beyond bytes and merges must be "<|...|>"
  // special tokens; anything else means vocab.bpe is cut short.
  std::vector<std::pair<std::string, TokenId>> specials;
  int unmade = 0;
  for (const auto& [token, id] : encoder) {
    if (id < static_cast<TokenId>(256 + merges.size())) continue;
    const bool special = token.size() > 4 && token.compare(0, 2, "<|") == 0 &&
                         token.compare(token.size() - 2, 2, "|>") == 0;
    if (special) {
      specials.emplace_back(token, id);
    } else {
      ++unmade;
    }
  }
  if (unmade > 0) {
    return Annotate(absl::InvalidArgumentError(std::to_string(unmade) +
                                               " tokens of encoder.json are made by no merge (truncated file?)"),
                    bpe_context);
  }
  auto tokenizer = Build(std::move(byte_ids), std::move(merges), std::move(specials));
  if (!tokenizer.ok()) return Annotate(tokenizer.status(), bpe_context);
  return tokenizer;
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

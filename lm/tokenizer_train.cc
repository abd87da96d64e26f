// Tokenizer::Train: learning byte-level BPE merges from a corpus (the
// tokenizer's core, lm/tokenizer.cc, validates the result and encodes).
#include <algorithm>
#include <memory>
#include <queue>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/string_view.h"
#include "common/progress.h"
#include "common/status.h"
#include "lm/internal/bpe_pair.h"
#include "lm/internal/pretokenizer.h"
#include "lm/internal/tokenizer_layout.h"
#include "lm/tokenizer.h"

namespace rag::lm {

using internal::KeyLeft;
using internal::KeyRight;
using internal::PairKey;

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
  return Build(Layout::Canonical(std::move(byte_ids), merges, {{kEndOfTextToken, eot}}));
}

}  // namespace rag::lm

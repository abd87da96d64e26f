#include "retriever/bm25.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <unordered_map>

namespace rag::retriever {

absl::Status Bm25Index::Add(ChunkId id, int64_t doc_index, const std::vector<Token>& tokens) {
  if (id != num_chunks()) {
    return absl::InvalidArgumentError("BM25: chunk " + std::to_string(id) + " added out of order (next is " +
                                      std::to_string(num_chunks()) + ")");
  }
  std::unordered_map<Token, int32_t> tf;
  for (Token t : tokens) {
    if (t < 0) return absl::InvalidArgumentError("BM25: negative token id in chunk " + std::to_string(id));
    ++tf[t];
  }
  for (const auto& [t, n] : tf) {
    if (static_cast<size_t>(t) >= postings_.size()) postings_.resize(static_cast<size_t>(t) + 1);
    postings_[static_cast<size_t>(t)].push_back({static_cast<int32_t>(id), n});
  }
  lengths_.push_back(static_cast<int32_t>(tokens.size()));
  doc_index_.push_back(doc_index);
  total_length_ += static_cast<int64_t>(tokens.size());
  return absl::OkStatus();
}

std::vector<std::pair<ChunkId, float>> Bm25Index::Search(const std::vector<Token>& query, int k,
                                                         const std::function<bool(ChunkId)>& skip) const {
  std::vector<std::pair<ChunkId, float>> out;
  const int64_t n = num_chunks();
  if (n == 0 || k < 1) return out;
  const double avg = static_cast<double>(total_length_) / static_cast<double>(n);
  // A query term counts once (a query is short; repeating a word in it
  // should not outweigh a rarer one).
  std::vector<Token> terms(query);
  std::sort(terms.begin(), terms.end());
  terms.erase(std::unique(terms.begin(), terms.end()), terms.end());
  std::unordered_map<int32_t, double> score;
  for (Token t : terms) {
    if (t < 0 || static_cast<size_t>(t) >= postings_.size()) continue;
    const auto& list = postings_[static_cast<size_t>(t)];
    if (list.empty()) continue;
    const double df = static_cast<double>(list.size());
    const double idf = std::log(1.0 + (static_cast<double>(n) - df + 0.5) / (df + 0.5));
    for (const Posting& p : list) {
      const double tf = p.tf;
      const double norm = k1_ * (1.0 - b_ + b_ * lengths_[static_cast<size_t>(p.chunk)] / avg);
      score[p.chunk] += idf * tf * (k1_ + 1.0) / (tf + norm);
    }
  }
  out.reserve(score.size());
  for (const auto& [chunk, s] : score) {
    if (skip && skip(chunk)) continue;
    out.emplace_back(chunk, static_cast<float>(s));
  }
  auto better = [](const std::pair<ChunkId, float>& a, const std::pair<ChunkId, float>& b) {
    return a.second != b.second ? a.second > b.second : a.first < b.first;
  };
  if (static_cast<int64_t>(out.size()) > k) {
    std::partial_sort(out.begin(), out.begin() + k, out.end(), better);
    out.resize(static_cast<size_t>(k));
  } else {
    std::sort(out.begin(), out.end(), better);
  }
  return out;
}

}  // namespace rag::retriever

// Okapi BM25 (Robertson & Zaragoza 2009) over the chunks' token ids: the
// lexical retriever next to the dense one. Dense retrieval with a small LM's
// mean-pooled states misses short queries built around rare names (a
// knowledge probe's "The capital of Tuvalu is" finds its fact 18% of the
// time in the top 2); exact token overlap, weighted by rarity, finds it.
// Terms are token ids of the chunk itself (not its continuation), so no
// second tokenizer is involved. In memory; built from the chunk store and
// extended as documents are added. Thread-safe for concurrent Search; Add
// needs exclusive access (the caller's lock).
#pragma once

#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "retriever/chunk_store.h"

namespace rag::retriever {

class Bm25Index {
 public:
  // k1: term-frequency saturation; b: length normalisation (the usual values).
  explicit Bm25Index(double k1 = 1.2, double b = 0.75) : k1_(k1), b_(b) {}

  // Adds chunk `id` of the document with insertion index `doc_index`; `id`
  // must be the next id (num_chunks()). InvalidArgument otherwise.
  absl::Status Add(ChunkId id, int64_t doc_index, const std::vector<Token>& tokens);

  // The k best chunks for `query` by BM25 score, best first (ties: lower id
  // first), skipping those `skip` returns true for; chunks sharing no token
  // with the query are never returned, so there may be fewer than k.
  std::vector<std::pair<ChunkId, float>> Search(const std::vector<Token>& query, int k,
                                                const std::function<bool(ChunkId)>& skip = nullptr) const;

  int64_t num_chunks() const { return static_cast<int64_t>(lengths_.size()); }
  int64_t doc_index(ChunkId id) const { return doc_index_[static_cast<size_t>(id)]; }

 private:
  struct Posting {
    int32_t chunk;
    int32_t tf;
  };
  double k1_, b_;
  std::vector<std::vector<Posting>> postings_;  // by token id
  std::vector<int32_t> lengths_;                // by chunk id
  std::vector<int64_t> doc_index_;              // by chunk id
  int64_t total_length_ = 0;
};

}  // namespace rag::retriever

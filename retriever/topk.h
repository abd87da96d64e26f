// The canonical top-k: the one order every neighbour list is cut and
// returned in, so that a search is a function of the index's contents, not
// of the order documents were added, and so that N shards whose top-k lists
// are merged by the same order return what one index holding all of them
// returns. Pure functions and stateless comparators; thread-safe.
//
// Why this is needed: FAISS (and our BM25 and exact searches) break ties
// between equal distances by internal id, i.e. by insertion order, and cut
// a tie at the k-th place wherever that id order puts the cut. Duplicated
// text (boilerplate, mirrored pages, repeated tokens) makes exact ties
// common. The rule, applied by every search:
//   1. order candidates by distance, then by a key that does not depend on
//      where they were stored (ChunkNeighbourOrder, DatastoreNeighbourOrder);
//   2. when the k-th kept distance equals the last distance the index
//      returned and the index may hold more, ask it for more (MustFetchMore):
//      a candidate it has not returned yet may be tied with the k-th and come
//      first by step 1;
//   3. keep the first k (KeepFirst).
// Step 2 needs the search to return every candidate nearer than the last one
// it returned, which FAISS does (within the IVF lists probed; nprobe and the
// trained quantizer are the same for every shard, so shards probe the same
// lists). A tie that continues past VectorIndex::kMaxK candidates cannot be
// completed and is cut in FAISS's order.
#pragma once

#include <cstddef>
#include <vector>

namespace rag::retriever {

// Chunk neighbours (Neighbour, or any type with `float distance`,
// `std::string doc_id` and `int64_t offset`): nearer first; equal distances
// by document id (byte-wise, std::string's operator<), then by the chunk's
// offset in its document. (doc_id, offset) names a chunk in every index that
// holds its document, whatever its chunk id there, so the order is the same
// in a single index, in each shard and in a merge of shards.
struct ChunkNeighbourOrder {
  template <typename N>
  bool operator()(const N& a, const N& b) const {
    if (a.distance != b.distance) return a.distance < b.distance;
    if (a.doc_id != b.doc_id) return a.doc_id < b.doc_id;
    return a.offset < b.offset;
  }
};

// kNN-LM datastore neighbours (DatastoreNeighbour, or any type with
// `float distance`, `value`, `doc` and `key_id`): nearer first; equal
// distances by value (the next-token id), then by doc and key_id.
// Why value and not a document name: the kNN-LM distribution,
// p_knn(y) ∝ Σ_{kept i, value_i = y} exp(-distance_i / T), depends only on the
// multiset of (value, distance) pairs of the k kept keys. Ordering by
// (distance, value) makes that multiset canonical: whichever of several keys
// with equal distance *and* equal value is kept, the multiset is the same.
// doc and key_id are numbers local to one datastore (a shard numbers its
// documents and keys from 0), so they only make the order total within one
// datastore; they never change the distribution.
struct DatastoreNeighbourOrder {
  template <typename N>
  bool operator()(const N& a, const N& b) const {
    if (a.distance != b.distance) return a.distance < b.distance;
    if (a.value != b.value) return a.value < b.value;
    if (a.doc != b.doc) return a.doc < b.doc;
    return a.key_id < b.key_id;
  }
};

// Whether the top k of `sorted` (the eligible candidates fetched so far,
// sorted by one of the orders above: excluded ones already dropped) may
// differ from the top k of the whole index, so the caller must fetch more.
// `last_fetched_distance`: the largest distance the index returned in this
// fetch, excluded candidates included (the index returns nearest first, so
// it is the last one's). `index_may_hold_more`: the fetch came back full
// (as many results as asked for) and asked for fewer than the index holds
// or than the search accepts; when false, every candidate was fetched and
// the answer is false. Otherwise true when fewer than k candidates are
// eligible (exclusions: over-retrieve), or when the k-th distance is not
// smaller than the last fetched one: an unfetched candidate may be tied
// with the k-th and come before it by the order.
template <typename N>
bool MustFetchMore(const std::vector<N>& sorted, size_t k, float last_fetched_distance, bool index_may_hold_more) {
  if (!index_may_hold_more || k == 0) return false;
  if (sorted.size() < k) return true;
  return !(sorted[k - 1].distance < last_fetched_distance);
}

// Keeps the first k of `sorted` (all of them when there are fewer).
template <typename N>
void KeepFirst(std::vector<N>* sorted, size_t k) {
  if (sorted->size() > k) sorted->erase(sorted->begin() + static_cast<std::ptrdiff_t>(k), sorted->end());
}

}  // namespace rag::retriever

// Tests for retriever/topk.h, the canonical top-k order: the comparators on
// the real neighbour types, the fetch-more rule on ties at the k-th place,
// and that shards cut and merged by the rule equal one index cut by it.
#include "retriever/topk.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "retriever/datastore.h"

namespace rag::retriever {
namespace {

// The fields ChunkNeighbourOrder reads (retriever::Neighbour has them too;
// this test does not pull in the embedder's headers).
struct Chunk {
  std::string doc_id;
  int64_t offset = 0;
  float distance = 0;
};

bool operator==(const Chunk& a, const Chunk& b) {
  return a.doc_id == b.doc_id && a.offset == b.offset && a.distance == b.distance;
}

void PrintTo(const Chunk& c, std::ostream* os) { *os << "(" << c.doc_id << ", " << c.offset << ", " << c.distance << ")"; }

TEST(TopKTest, ChunksOrderByDistanceThenDocumentThenOffset) {
  std::vector<Chunk> v = {{"b", 0, 1.0f}, {"a", 64, 1.0f}, {"a", 0, 1.0f}, {"z", 0, 0.5f}, {"a", 0, 2.0f}};
  std::sort(v.begin(), v.end(), ChunkNeighbourOrder());
  const std::vector<Chunk> want = {{"z", 0, 0.5f}, {"a", 0, 1.0f}, {"a", 64, 1.0f}, {"b", 0, 1.0f}, {"a", 0, 2.0f}};
  EXPECT_EQ(v, want);
}

TEST(TopKTest, DatastoreNeighboursOrderByDistanceThenValueThenDocThenKey) {
  std::vector<DatastoreNeighbour> v = {{7, 30, 1, 1.0f}, {3, 20, 9, 1.0f}, {2, 20, 4, 1.0f},
                                       {1, 20, 4, 1.0f}, {9, 99, 0, 0.5f}};
  std::sort(v.begin(), v.end(), DatastoreNeighbourOrder());
  std::vector<int64_t> keys;
  for (const auto& n : v) keys.push_back(n.key_id);
  EXPECT_EQ(keys, (std::vector<int64_t>{9, 1, 2, 3, 7}));
}

TEST(TopKTest, MustFetchMoreOnlyWhenTheKthDistanceMayContinuePastTheFetch) {
  const std::vector<Chunk> sorted = {{"a", 0, 0.1f}, {"b", 0, 0.2f}, {"c", 0, 0.2f}};
  // Index exhausted: never.
  EXPECT_FALSE(MustFetchMore(sorted, 2, 0.2f, false));
  EXPECT_FALSE(MustFetchMore(sorted, 5, 0.2f, false));
  // Too few eligible (exclusions) and the index may hold more.
  EXPECT_TRUE(MustFetchMore(sorted, 4, 0.9f, true));
  // The 2nd distance equals the last fetched one: a tie may continue.
  EXPECT_TRUE(MustFetchMore(sorted, 2, 0.2f, true));
  EXPECT_TRUE(MustFetchMore(sorted, 3, 0.2f, true));
  // The 1st is strictly nearer than anything unfetched.
  EXPECT_FALSE(MustFetchMore(sorted, 1, 0.2f, true));
  // The last fetched was an excluded candidate farther than the k-th.
  EXPECT_FALSE(MustFetchMore(sorted, 3, 0.3f, true));
  EXPECT_FALSE(MustFetchMore(sorted, 0, 0.2f, true));
}

TEST(TopKTest, KeepFirstCutsToK) {
  std::vector<Chunk> v = {{"a", 0, 0.1f}, {"b", 0, 0.2f}, {"c", 0, 0.3f}};
  KeepFirst(&v, 5);
  EXPECT_EQ(v.size(), 3u);
  KeepFirst(&v, 2);
  ASSERT_EQ(v.size(), 2u);
  EXPECT_EQ(v[1].doc_id, "b");
}

// A model of an index: returns the `fetch` nearest by distance, equal
// distances in insertion order (as FAISS's heaps do), at most `max_fetch`.
struct ModelIndex {
  std::vector<Chunk> stored;  // insertion order
  int fetches = 0;

  std::vector<Chunk> Fetch(size_t fetch) {
    ++fetches;
    std::vector<Chunk> v = stored;
    std::stable_sort(v.begin(), v.end(), [](const Chunk& a, const Chunk& b) { return a.distance < b.distance; });
    if (v.size() > fetch) v.resize(fetch);
    return v;
  }

  // The rule as Retriever::SearchEmbeddings applies it, without exclusions.
  std::vector<Chunk> TopK(size_t k) {
    for (size_t fetch = k;; fetch *= 2) {
      std::vector<Chunk> got = Fetch(fetch);
      const bool more = got.size() == fetch && fetch < stored.size();
      const float last = got.empty() ? 0.0f : got.back().distance;
      std::sort(got.begin(), got.end(), ChunkNeighbourOrder());
      if (MustFetchMore(got, k, last, more)) continue;
      KeepFirst(&got, k);
      return got;
    }
  }
};

TEST(TopKTest, TieAtTheKthPlaceIsCompletedWhateverTheInsertionOrder) {
  // Five equal distances in five documents, k = 3, inserted last-name first:
  // the first fetch (3) sees d4, d3, d2 only.
  ModelIndex index;
  for (int d = 4; d >= 0; --d) index.stored.push_back({"d" + std::to_string(d), 0, 0.25f});
  index.stored.push_back({"far", 0, 0.75f});
  const std::vector<Chunk> top = index.TopK(3);
  const std::vector<Chunk> want = {{"d0", 0, 0.25f}, {"d1", 0, 0.25f}, {"d2", 0, 0.25f}};
  EXPECT_EQ(top, want);
  EXPECT_GE(index.fetches, 2);  // the tie sat beyond the first fetch
}

TEST(TopKTest, ShardsMergedEqualOneIndex) {
  // Random chunks with many exact ties, split over N shards by document;
  // each shard's canonical top-k, merged by the same order and cut to k,
  // equals the single index's.
  std::mt19937 rng(7);
  std::vector<Chunk> all;
  for (int d = 0; d < 40; ++d) {
    for (int c = 0; c < 3; ++c) {
      all.push_back({"doc" + std::to_string(rng() % 1000), 64 * c, static_cast<float>(rng() % 6) / 4.0f});
    }
  }
  for (size_t k : {1u, 3u, 7u, 20u, 200u}) {
    std::shuffle(all.begin(), all.end(), rng);
    ModelIndex single{all};
    const std::vector<Chunk> want = single.TopK(k);
    for (int n : {2, 4}) {
      std::vector<ModelIndex> shards(static_cast<size_t>(n));
      for (const Chunk& c : all) shards[std::hash<std::string>()(c.doc_id) % n].stored.push_back(c);
      std::vector<Chunk> merged;
      for (ModelIndex& s : shards) {
        const std::vector<Chunk> part = s.TopK(k);
        merged.insert(merged.end(), part.begin(), part.end());
      }
      std::sort(merged.begin(), merged.end(), ChunkNeighbourOrder());
      KeepFirst(&merged, k);
      EXPECT_EQ(merged, want) << "k " << k << ", " << n << " shards";
    }
  }
}

}  // namespace
}  // namespace rag::retriever

// RetoMaton's pointers (retriever/pointer_search.h, Datastore::Successors)
// over a real Flat datastore: the rule is checked against the rows as
// written (fp32 keys, values, docs), not against the datastore's reading of
// them.
#include "retriever/pointer_search.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <set>
#include <vector>

#include "retriever/datastore.h"
#include "retriever/searcher.h"
#include "tests/datastore_test_util.h"
#include "tests/status_matchers.h"
#include "tests/test_util.h"

namespace rag::retriever {
namespace {

using datastore_test::Factory;
using datastore_test::GaussianKeys;
using datastore_test::Rows;
using datastore_test::SquaredL2;
using datastore_test::WriteDatastore;

constexpr int kDim = 16;
constexpr int64_t kRowsPerDoc = 100;

// Three documents of 100 positions; values repeat every 5 rows, so a
// neighbour list holds several keys with one value.
Rows PointerRows() {
  Rows r;
  r.dim = kDim;
  r.keys = GaussianKeys(3 * kRowsPerDoc, kDim, /*seed=*/3);
  for (int64_t i = 0; i < 3 * kRowsPerDoc; ++i) {
    r.values.push_back(static_cast<int32_t>(i % 5));
    r.docs.push_back(static_cast<int32_t>(i / kRowsPerDoc));
  }
  return r;
}

// A searcher that holds no keys to follow (as a front): Successors is the
// base class's.
class SearchOnly : public KeySearcher {
 public:
  explicit SearchOnly(const KeySearcher* inner) : inner_(inner) {}
  absl::Status Search(const float* q, int64_t nq, const KeySearchOptions& o,
                      std::vector<std::vector<DatastoreNeighbour>>* out) const override {
    return inner_->Search(q, nq, o, out);
  }
  int dim() const override { return inner_->dim(); }

 private:
  const KeySearcher* inner_;
};

class PointerSearchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    rows_ = PointerRows();
    RAG_ASSERT_OK(WriteDatastore(dir_.path(), rows_, 64, Factory("Flat")).status());
    auto ds = Datastore::Open(dir_.path());
    RAG_ASSERT_OK(ds.status());
    ds_ = std::move(*ds);
    keys_ = std::make_unique<LocalKeySearcher>(ds_.get(), nullptr);
  }
  const float* Key(int64_t i) const { return rows_.keys.data() + i * kDim; }

  testing::TempDir dir_;
  Rows rows_;
  std::unique_ptr<Datastore> ds_;
  std::unique_ptr<LocalKeySearcher> keys_;
};

TEST_F(PointerSearchTest, SuccessorsFollowTheTokenThatFollowedWithinADocument) {
  // Keys 3 and 8 have value 3, 13 too; 99 (value 4) ends document 0, 299
  // (value 4) the datastore; 100 has value 0.
  std::vector<DatastoreNeighbour> from;
  for (int64_t id : {3, 8, 13, 99, 299, 100, 42}) from.push_back({id, rows_.values[id], rows_.docs[id], 0});
  const float* query = Key(150);
  for (int32_t token : {3, 4, 0, 1}) {
    std::vector<DatastoreNeighbour> got;
    RAG_ASSERT_OK(ds_->Successors(query, from, token, &got));
    std::vector<int64_t> expected;
    for (const auto& nb : from) {
      const int64_t next = nb.key_id + 1;
      if (rows_.values[nb.key_id] == token && next < rows_.n() && rows_.docs[next] == rows_.docs[nb.key_id]) {
        expected.push_back(next);
      }
    }
    std::sort(expected.begin(), expected.end(), [&](int64_t a, int64_t b) {
      return SquaredL2(query, Key(a), kDim) < SquaredL2(query, Key(b), kDim);
    });
    ASSERT_EQ(got.size(), expected.size()) << "token " << token;
    for (size_t j = 0; j < got.size(); ++j) {
      EXPECT_EQ(got[j].key_id, expected[j]);
      EXPECT_EQ(got[j].value, rows_.values[expected[j]]);
      EXPECT_EQ(got[j].doc, rows_.docs[expected[j]]);
      const double d = SquaredL2(query, Key(expected[j]), kDim);
      EXPECT_NEAR(got[j].distance, d, 1e-3 * d + 1e-3);  // fp16 keys
    }
  }
  // Token 4 from {99, 299}: both end a document, so nothing follows.
  std::vector<DatastoreNeighbour> ends = {from[3], from[4]};
  std::vector<DatastoreNeighbour> got = {from[0]};
  RAG_ASSERT_OK(ds_->Successors(query, ends, 4, &got));
  EXPECT_TRUE(got.empty());
  std::vector<DatastoreNeighbour> bad = {{300, 0, 0, 0}};
  EXPECT_EQ(ds_->Successors(query, bad, 0, &got).code(), absl::StatusCode::kInvalidArgument);
}

// A stored document read back: each position's own key is its nearest
// neighbour and has the token that follows, so after the first position of
// each run every position follows pointers, and its own key leads the list.
TEST_F(PointerSearchTest, AStoredDocumentIsFollowedAfterEachRunsFirstSearch) {
  const int64_t first = kRowsPerDoc, n = kRowsPerDoc;  // document 1
  std::vector<float> queries(Key(first), Key(first + n));
  std::vector<int32_t> tokens(rows_.values.begin() + first, rows_.values.begin() + first + n);
  PointerSearchOptions o;
  o.search.k = 4;
  o.search.nprobe = 0;
  for (int min_pointers : {0, 1}) {
    std::vector<std::vector<DatastoreNeighbour>> out;
    int64_t searched = -1;
    o.min_pointers = min_pointers;
    RAG_ASSERT_OK(SearchFollowingPointers(*keys_, queries.data(), tokens.data(), n, o, &out, &searched));
    ASSERT_EQ(out.size(), static_cast<size_t>(n));
    // 100 positions, runs of at least 32: 3 runs, starting at 0, 34 and 68.
    EXPECT_EQ(searched, min_pointers == 0 ? n : 3);
    for (int64_t i = 0; i < n; ++i) {
      ASSERT_FALSE(out[i].empty()) << "position " << i;
      EXPECT_EQ(out[i][0].key_id, first + i) << "position " << i;
      EXPECT_NEAR(out[i][0].distance, 0.0f, 1e-3f);
      const bool run_start = i == 0 || i == 34 || i == 68;
      if (min_pointers == 0 || run_start) {
        EXPECT_EQ(out[i].size(), 4u);
        continue;
      }
      // The followed set is exactly the successors of the previous list.
      std::set<int64_t> expected;
      for (const auto& nb : out[i - 1]) {
        const int64_t next = nb.key_id + 1;
        if (rows_.values[nb.key_id] == tokens[i - 1] && next < rows_.n() &&
            rows_.docs[next] == rows_.docs[nb.key_id]) {
          expected.insert(next);
        }
      }
      std::set<int64_t> got;
      for (const auto& nb : out[i]) got.insert(nb.key_id);
      EXPECT_EQ(got, expected) << "position " << i;
    }
  }
  // More pointers required than any list holds: every position is searched.
  std::vector<std::vector<DatastoreNeighbour>> out;
  int64_t searched = 0;
  o.min_pointers = 5;
  RAG_ASSERT_OK(SearchFollowingPointers(*keys_, queries.data(), tokens.data(), n, o, &out, &searched));
  EXPECT_EQ(searched, n);
}

TEST_F(PointerSearchTest, BadOptionsAndASearcherWithoutKeysAreErrors) {
  std::vector<float> queries(Key(0), Key(40));
  std::vector<int32_t> tokens(rows_.values.begin(), rows_.values.begin() + 40);
  std::vector<std::vector<DatastoreNeighbour>> out;
  int64_t searched = 0;
  PointerSearchOptions o;
  o.search.k = 4;
  o.min_pointers = -1;
  EXPECT_EQ(SearchFollowingPointers(*keys_, queries.data(), tokens.data(), 40, o, &out, &searched).code(),
            absl::StatusCode::kInvalidArgument);
  o.min_pointers = 1;
  o.lanes = 0;
  EXPECT_EQ(SearchFollowingPointers(*keys_, queries.data(), tokens.data(), 40, o, &out, &searched).code(),
            absl::StatusCode::kInvalidArgument);
  o.lanes = 128;
  EXPECT_EQ(SearchFollowingPointers(*keys_, nullptr, tokens.data(), 40, o, &out, &searched).code(),
            absl::StatusCode::kInvalidArgument);
  const SearchOnly front(keys_.get());
  EXPECT_EQ(SearchFollowingPointers(front, queries.data(), tokens.data(), 40, o, &out, &searched).code(),
            absl::StatusCode::kUnimplemented);
  // Refused up front, even where no position would have had a pointer
  // (every position is a run's first: nothing to follow).
  EXPECT_EQ(SearchFollowingPointers(front, queries.data(), tokens.data(), 1, o, &out, &searched).code(),
            absl::StatusCode::kUnimplemented);
  // Without pointers the same searcher serves.
  o.min_pointers = 0;
  RAG_ASSERT_OK(SearchFollowingPointers(front, queries.data(), tokens.data(), 40, o, &out, &searched));
  EXPECT_EQ(searched, 40);
  RAG_ASSERT_OK(SearchFollowingPointers(*keys_, queries.data(), tokens.data(), 0, o, &out, &searched));
  EXPECT_TRUE(out.empty());
}

}  // namespace
}  // namespace rag::retriever

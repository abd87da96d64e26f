#include "lm/data_split.h"

#include <gtest/gtest.h>

#include <set>

#include "tests/test_util.h"

namespace rag::lm {
namespace {

std::set<std::string> Ids(const std::vector<Document>& docs) {
  std::set<std::string> s;
  for (const auto& d : docs) s.insert(d.id);
  return s;
}

TEST(DataSplitTest, FixedBySeedAndIdNotByOrder) {
  auto docs = testing::MakeCorpus(200, 1, 1);
  DataSplit a = SplitDocuments(docs, 0.1, 42);
  std::reverse(docs.begin(), docs.end());
  DataSplit b = SplitDocuments(docs, 0.1, 42);
  EXPECT_EQ(Ids(a.validation), Ids(b.validation));
  EXPECT_EQ(a.train.size() + a.validation.size(), 200u);
  EXPECT_GT(a.validation.size(), 8u);
  EXPECT_LT(a.validation.size(), 35u);
  DataSplit c = SplitDocuments(docs, 0.1, 43);
  EXPECT_NE(Ids(a.validation), Ids(c.validation));
  // Adding documents never moves an existing one across the split.
  auto more = testing::MakeCorpus(300, 1, 1);
  DataSplit d = SplitDocuments(more, 0.1, 42);
  for (const auto& id : Ids(a.validation)) EXPECT_TRUE(Ids(d.validation).count(id)) << id;
}

TEST(DataSplitTest, TinyCorporaKeepOneDocumentOnEachSide) {
  DataSplit s = SplitDocuments(testing::MakeCorpus(2, 1, 1), 0.05, 1);
  EXPECT_EQ(s.train.size(), 1u);
  EXPECT_EQ(s.validation.size(), 1u);
  DataSplit one = SplitDocuments(testing::MakeCorpus(1, 1, 1), 0.5, 1);
  EXPECT_EQ(one.train.size(), 1u);
}

TEST(DataSplitTest, SplitFileSelectsTheSameDocuments) {
  auto docs = testing::MakeCorpus(50, 2, 1);
  DataSplit s = SplitDocuments(docs, 0.2, 7);
  std::string json = SplitToJson(s, 0.2, 7);
  auto val = SelectSplit(docs, json, "validation");
  auto train = SelectSplit(docs, json, "train");
  ASSERT_TRUE(val.ok() && train.ok());
  EXPECT_EQ(Ids(*val), Ids(s.validation));
  EXPECT_EQ(Ids(*train), Ids(s.train));
  EXPECT_EQ(SelectSplit(docs, json, "test").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SelectSplit(docs, "{}", "train").status().code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace rag::lm

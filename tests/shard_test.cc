// retriever/shard.h: the documented routing rule and --shard parsing.
#include "retriever/shard.h"

#include <map>
#include <set>
#include <string>

#include "gtest/gtest.h"

namespace rag::retriever {
namespace {

EnvironmentReader Env(std::map<std::string, std::string> vars) {
  return [vars](const char* name) {
    auto it = vars.find(name);
    return it == vars.end() ? std::string() : it->second;
  };
}

TEST(ShardOfDocumentTest, IsXxh3OfTheIdModuloTheCount) {
  // XXH3-64 of the empty input with seed 0 is 0x2D06800538D394C2 (the
  // xxHash specification's test vector), independent of this code.
  const uint64_t empty = 0x2D06800538D394C2ull;
  for (int n : {1, 2, 3, 7, 1000, kMaxShards}) {
    EXPECT_EQ(ShardOfDocument("", n), static_cast<int>(empty % static_cast<uint64_t>(n))) << n;
  }
}

TEST(ShardOfDocumentTest, SpreadsIdsOverEveryShard) {
  const int n = 4;
  int counts[n] = {};
  for (int i = 0; i < 4000; ++i) ++counts[ShardOfDocument("doc-" + std::to_string(i), n)];
  for (int s = 0; s < n; ++s) {
    EXPECT_GT(counts[s], 850) << s;
    EXPECT_LT(counts[s], 1150) << s;
  }
  EXPECT_EQ(ShardOfDocument("doc-17", 1), 0);
}

TEST(ParseShardSpecTest, ExplicitIndexAndCount) {
  auto s = ParseShardSpec("2/5", Env({}));
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->index, 2);
  EXPECT_EQ(s->count, 5);
  EXPECT_EQ(s->ToString(), "2/5");
  for (const char* bad : {"5/5", "-1/3", "1/0", "x/2", "1", "1/2/3", "", "1/99999"}) {
    EXPECT_EQ(ParseShardSpec(bad, Env({})).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(ParseShardSpecTest, AutoReadsTheLaunchers) {
  auto mpi = ParseShardSpec("auto", Env({{"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "2"}}));
  ASSERT_TRUE(mpi.ok()) << mpi.status();
  EXPECT_EQ(mpi->ToString(), "1/2");
  auto pmi = ParseShardSpec("auto", Env({{"PMI_RANK", "0"}, {"PMI_SIZE", "3"}}));
  ASSERT_TRUE(pmi.ok());
  EXPECT_EQ(pmi->ToString(), "0/3");
  // A Slurm array --array=1-4 numbers its tasks from 1.
  auto slurm = ParseShardSpec(
      "auto", Env({{"SLURM_ARRAY_TASK_ID", "4"}, {"SLURM_ARRAY_TASK_MIN", "1"}, {"SLURM_ARRAY_TASK_COUNT", "4"}}));
  ASSERT_TRUE(slurm.ok()) << slurm.status();
  EXPECT_EQ(slurm->ToString(), "3/4");
  // Kubernetes gives the index only.
  EXPECT_EQ(ParseShardSpec("auto", Env({{"JOB_COMPLETION_INDEX", "2"}})).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto k8s = ParseShardSpec("auto/3", Env({{"JOB_COMPLETION_INDEX", "2"}}));
  ASSERT_TRUE(k8s.ok()) << k8s.status();
  EXPECT_EQ(k8s->ToString(), "2/3");
}

TEST(ParseShardSpecTest, AutoRefusesWhatDisagrees) {
  EXPECT_EQ(ParseShardSpec("auto", Env({})).status().code(), absl::StatusCode::kInvalidArgument);
  auto mismatch = ParseShardSpec("auto/4", Env({{"OMPI_COMM_WORLD_RANK", "1"}, {"OMPI_COMM_WORLD_SIZE", "2"}}));
  EXPECT_EQ(mismatch.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(mismatch.status().message().find("OMPI_COMM_WORLD_RANK"), std::string::npos) << mismatch.status();
  EXPECT_EQ(ParseShardSpec("auto", Env({{"OMPI_COMM_WORLD_RANK", "2"}, {"OMPI_COMM_WORLD_SIZE", "2"}})).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseShardSpec("auto", Env({{"OMPI_COMM_WORLD_RANK", "one"}, {"OMPI_COMM_WORLD_SIZE", "2"}}))
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace rag::retriever

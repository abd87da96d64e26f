#include "eval/report.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "common/file_util.h"
#include "tests/status_matchers.h"
#include "tests/test_util.h"

namespace rag::eval {
namespace {

namespace fs = std::filesystem;

bool IsPng(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  char magic[8] = {};
  in.read(magic, 8);
  return in.gcount() == 8 && std::string(magic + 1, 3) == "PNG" && fs::file_size(p) > 1000;
}

TEST(ReportTest, RunsAccumulateIntoPlotsAndASummary) {
  testing::TempDir dir;
  RAG_ASSERT_OK(WriteReport(dir.path(), "probes", "lm",
                            R"({"mode": "lm", "probes": 3, "p_at_1": 0.25, "p_at_10": 1, "mrr": 0.5,
                                "by_relation": {"capital-of": {"p_at_1": 0.5}, "occupation": {"p_at_1": 0.0}}})"));
  RAG_ASSERT_OK(WriteReport(dir.path(), "probes", "knnlm",
                            R"({"mode": "knnlm", "probes": 3, "p_at_1": 0.75, "p_at_10": 1, "mrr": 0.8,
                                "by_relation": {"capital-of": {"p_at_1": 1.0}, "capital-is": {"p_at_1": 0.5}}})"));
  RAG_ASSERT_OK(WriteReport(dir.path(), "memorization", "lm",
                            R"({"mode": "lm", "samples": 4, "suffix_tokens": 8,
                                "by_prefix": {"16": {"exact": 0.0, "token_match": 0.1, "by_duplicates": {"1": {"token_match": 0.05}}},
                                              "64": {"exact": 0.25, "token_match": 0.5,
                                                     "by_duplicates": {"1": {"token_match": 0.4}, "5-15": {"token_match": 0.9}}}}})"));
  RAG_ASSERT_OK(WriteReport(dir.path(), "perplexity", "knnlm-validation",
                            R"({"mode": "knnlm", "split": "validation", "tokens": 10, "perplexity": 12.5,
                                "sweep": [{"temperature": 1, "lambda": 0.25, "perplexity": 12.5},
                                          {"temperature": 1, "lambda": 0.5, "perplexity": 13.0}]})"));
  const fs::path d(dir.path());
  for (const char* png : {"probes_p_at_1.png", "memorization_match.png", "memorization_exact.png",
                          "memorization_duplicates.png", "perplexity_lambda.png"}) {
    EXPECT_TRUE(IsPng(d / png)) << png;
  }
  // Both probe runs in one table, a relation missing from a run marked missing.
  auto data = ReadFile((d / "probes_p_at_1.dat").string());
  RAG_ASSERT_OK(data.status());
  EXPECT_EQ(*data,
            "relation knnlm lm\ncapital-is 0.5 ?\ncapital-of 1 0.5\noccupation ? 0\nall 0.75 0.25\n");
  auto mem = ReadFile((d / "memorization_match.dat").string());
  EXPECT_EQ(*mem, "prefix lm\n16 0.1\n64 0.5\n");
  auto dup = ReadFile((d / "memorization_duplicates.dat").string());
  EXPECT_EQ(*dup, "duplicates lm/16 lm/64\n1 0.05 0.4\n2-4 ? ?\n5-15 ? 0.9\n16+ ? ?\n");
  auto summary = ReadFile((d / "summary.md").string());
  RAG_ASSERT_OK(summary.status());
  for (const char* needle : {"| knnlm | knnlm | 3 | 0.750", "| lm | lm | 3 | 0.250", "probes_p_at_1.png",
                             "memorization_match.png", "| knnlm-validation | knnlm | validation | 10 | 12.50 |"}) {
    EXPECT_NE(summary->find(needle), std::string::npos) << needle << "\n" << *summary;
  }
  EXPECT_EQ(WriteReport(dir.path(), "probes", "bad name", "{}").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(WriteReport(dir.path(), "nonsense", "x", "{}").code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace rag::eval

#include "index_builder/corpus_reader.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "tests/test_util.h"

namespace rag::index_builder {
namespace {

namespace fs = std::filesystem;

void Write(const std::string& path, const std::string& text) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path, std::ios::binary) << text;
}

TEST(CorpusReaderTest, TxtIsOneDocumentNamedByItsFile) {
  testing::TempDir dir;
  Write(dir / "a.txt", "Hello there.\nSecond line.");
  auto docs = ReadCorpus(dir / "a.txt");
  ASSERT_TRUE(docs.ok()) << docs.status();
  ASSERT_EQ(docs->size(), 1u);
  EXPECT_EQ((*docs)[0].id, "a.txt");
  EXPECT_EQ((*docs)[0].text, "Hello there.\nSecond line.");
}

TEST(CorpusReaderTest, JsonlKeepsIdsAndNumbersMissingOnes) {
  testing::TempDir dir;
  Write(dir / "c.jsonl", "{\"id\": \"x1\", \"text\": \"one\"}\n\n{\"text\": \"two\"}\n{\"id\": 7, \"text\": \"three\"}\n");
  auto docs = ReadCorpus(dir / "c.jsonl");
  ASSERT_TRUE(docs.ok()) << docs.status();
  ASSERT_EQ(docs->size(), 3u);
  EXPECT_EQ((*docs)[0].id, "x1");
  EXPECT_EQ((*docs)[1].id, "c.jsonl:3");
  EXPECT_EQ((*docs)[2].id, "7");
  EXPECT_EQ((*docs)[2].text, "three");
}

TEST(CorpusReaderTest, InMemoryJsonlEqualsTheFileReader) {
  testing::TempDir dir;
  const std::string content = "{\"id\": \"x1\", \"text\": \"one\"}\r\n\n{\"text\": \"two\"}\n{\"id\": 7, \"text\": \"\"}\n";
  Write(dir / "c.jsonl", content);
  auto from_file = ReadCorpus(dir / "c.jsonl");
  auto in_memory = ParseJsonlCorpus(content, "c.jsonl");
  ASSERT_TRUE(from_file.ok()) << from_file.status();
  ASSERT_TRUE(in_memory.ok()) << in_memory.status();
  ASSERT_EQ(in_memory->size(), 2u);  // the empty one is dropped
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ((*in_memory)[i].id, (*from_file)[i].id);
    EXPECT_EQ((*in_memory)[i].text, (*from_file)[i].text);
  }
  auto bad = ParseJsonlCorpus("{\"text\": \"a\"}\n{oops\n", "m.jsonl");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("m.jsonl:2"), std::string::npos) << bad.status();
}

TEST(CorpusReaderTest, DirectoryIsSearchedRecursivelyInSortedOrder) {
  testing::TempDir dir;
  Write(dir / "b/z.txt", "zed");
  Write(dir / "a.jsonl", "{\"id\": \"j\", \"text\": \"jay\"}\n");
  Write(dir / "b/ignored.md", "not a corpus file");
  CorpusStats stats;
  auto docs = ReadCorpus(dir.path(), &stats);
  ASSERT_TRUE(docs.ok()) << docs.status();
  ASSERT_EQ(docs->size(), 2u);
  EXPECT_EQ((*docs)[0].id, "j");
  EXPECT_EQ((*docs)[1].id, "b/z.txt");
  EXPECT_EQ(stats.files, 2u);
  EXPECT_EQ(stats.bytes, 6u);
}

TEST(CorpusReaderTest, BadInputGivesClearErrors) {
  testing::TempDir dir;
  EXPECT_EQ(ReadCorpus(dir / "missing.txt").status().code(), absl::StatusCode::kNotFound);
  fs::create_directories(dir / "empty_dir");
  Write(dir / "empty_dir/readme.md", "x");
  auto no_text = ReadCorpus(dir / "empty_dir");
  EXPECT_EQ(no_text.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(no_text.status().message().find("no .txt or .jsonl"), std::string::npos);
  Write(dir / "empty.txt", "");
  EXPECT_EQ(ReadCorpus(dir / "empty.txt").status().code(), absl::StatusCode::kInvalidArgument);
  Write(dir / "bad.jsonl", "{\"text\": \"fine\"}\n{\"text\": broken\n");
  auto bad = ReadCorpus(dir / "bad.jsonl");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("bad.jsonl:2"), std::string::npos) << bad.status();
  Write(dir / "notext.jsonl", "{\"id\": \"a\"}\n");
  EXPECT_NE(ReadCorpus(dir / "notext.jsonl").status().message().find("\"text\""), std::string::npos);
  Write(dir / "dup.jsonl", "{\"id\": \"a\", \"text\": \"1\"}\n{\"id\": \"a\", \"text\": \"2\"}\n");
  EXPECT_NE(ReadCorpus(dir / "dup.jsonl").status().message().find("duplicate"), std::string::npos);
  Write(dir / "x.csv", "a,b");
  EXPECT_EQ(ReadCorpus(dir / "x.csv").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(CorpusReaderTest, InvalidUtf8IsKeptByteForByte) {
  testing::TempDir dir;
  const std::string bytes("ab\xff\xfe\x00z", 6);
  Write(dir / "raw.txt", bytes);
  auto docs = ReadCorpus(dir / "raw.txt");
  ASSERT_TRUE(docs.ok());
  EXPECT_EQ((*docs)[0].text, bytes);
}

}  // namespace
}  // namespace rag::index_builder

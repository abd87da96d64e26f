// Helpers shared by the Hugging Face tokenizer tests (tokenizer_hf_test.cc,
// GPT-2; tokenizer_neox_test.cc, GPT-NeoX): files in a per-process temp
// dir, and loading an edited tokenizer.json.
#pragma once

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include <gtest/gtest.h>

#include "lm/tokenizer.h"

namespace rag::lm::hf_test {

inline std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline void WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

// A fresh directory; the pid keeps the two test binaries, run side by side
// by ctest, out of each other's files.
inline std::string TempDir(const std::string& name) {
  const std::filesystem::path dir = std::filesystem::path(testing::TempDir()) /
                                    ("tokenizer_hf_test_" + std::to_string(::getpid()) + "_" + name);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}

// Writes `text` as a tokenizer.json and loads it; `path` (may be null) gets
// where.
inline absl::StatusOr<Tokenizer> LoadText(const std::string& text, std::string* path) {
  const std::string where = TempDir("edited") + "/tokenizer.json";
  if (path != nullptr) *path = where;
  WriteText(where, text);
  return Tokenizer::LoadHfTokenizerJson(where);
}

// InvalidArgument naming the file and holding `needle`.
inline void ExpectRejected(const std::string& text, const std::string& needle) {
  SCOPED_TRACE(needle);
  std::string path;
  auto loaded = LoadText(text, &path);
  ASSERT_FALSE(loaded.ok());
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kInvalidArgument) << loaded.status();
  const std::string message(loaded.status().message());
  EXPECT_NE(message.find(path), std::string::npos) << loaded.status();
  EXPECT_NE(message.find(needle), std::string::npos) << "expected '" << needle << "' in: " << loaded.status();
}

}  // namespace rag::lm::hf_test

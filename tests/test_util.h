// Helpers shared by the test suites: seeded synthetic corpora, temporary
// directories, a tiny trained tokenizer. Header-only.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "common/document.h"

namespace rag::testing {

// Documents of English-like sentences from a small fixed grammar: enough
// structure for a tiny model to learn in seconds, seeded so runs repeat.
inline std::vector<Document> MakeCorpus(int n_docs, uint64_t seed, int sentences_per_doc = 20) {
  static const std::vector<std::string> subjects = {"the cat", "a dog", "the old man", "my sister", "the teacher",
                                                    "a farmer", "the king", "our neighbour", "the child", "a bird"};
  static const std::vector<std::string> verbs = {"sees", "likes", "finds", "carries", "paints",
                                                 "follows", "builds", "remembers", "hears", "feeds"};
  static const std::vector<std::string> objects = {"the red house", "a small boat", "the green field", "an apple",
                                                   "the river", "a wooden box", "the tall tree", "a blue cup",
                                                   "the quiet road", "a letter"};
  static const std::vector<std::string> endings = {" in the morning.", " every day.", " again.", ".", " at night."};
  std::mt19937_64 rng(seed);
  auto pick = [&](const std::vector<std::string>& v) -> const std::string& { return v[rng() % v.size()]; };
  std::vector<Document> docs;
  for (int d = 0; d < n_docs; ++d) {
    std::string text;
    for (int s = 0; s < sentences_per_doc; ++s) {
      std::string sentence = pick(subjects) + " " + pick(verbs) + " " + pick(objects) + pick(endings);
      sentence[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(sentence[0])));
      if (!text.empty()) text += " ";
      text += sentence;
    }
    docs.push_back({"doc" + std::to_string(d), text});
  }
  return docs;
}

// A fresh directory under the system temp dir, removed with the object.
class TempDir {
 public:
  TempDir() {
    std::string templ = (std::filesystem::temp_directory_path() / "rag_test_XXXXXX").string();
    path_ = ::mkdtemp(templ.data());
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return (std::filesystem::path(path_) / name).string(); }

 private:
  std::string path_;
};

}  // namespace rag::testing

// The fixture of the end-to-end tests of the `rag` binary
// (rag_cli_test.cc, rag_cli_eval_test.cc): runs `rag` (RAG_BINARY, a compile
// definition) with its output in files of a temporary directory.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/wait.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "tests/test_util.h"

extern char** environ;

namespace rag::cli_test {

namespace fs = std::filesystem;
using nlohmann::json;

struct Result {
  int exit_code;
  std::string out;
  std::string err;
};

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class RagCliTest : public ::testing::Test {
 protected:
  // Starts `rag args...` with stdout/stderr going to files; returns the pid.
  // `name` prefixes the output files, so a server can run beside commands.
  pid_t Start(const std::vector<std::string>& args, const std::string& name = "") {
    std::vector<std::string> full = {RAG_BINARY};
    full.insert(full.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : full) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, (dir_ / (name + "stdout")).c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&actions, 2, (dir_ / (name + "stderr")).c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    pid_t pid = -1;
    EXPECT_EQ(posix_spawn(&pid, RAG_BINARY, &actions, nullptr, argv.data(), environ), 0);
    posix_spawn_file_actions_destroy(&actions);
    return pid;
  }

  Result Wait(pid_t pid, const std::string& name = "") {
    int status = 0;
    waitpid(pid, &status, 0);
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return {code, Slurp(dir_ / (name + "stdout")), Slurp(dir_ / (name + "stderr"))};
  }

  Result Run(const std::vector<std::string>& args) { return Wait(Start(args)); }

  void WriteCorpus(const std::string& path, int docs) {
    std::ofstream out(path);
    for (const auto& d : rag::testing::MakeCorpus(docs, 21)) out << json{{"id", d.id}, {"text", d.text}}.dump() << "\n";
  }

  std::string TrainTiny(const std::string& name, const std::vector<std::string>& extra = {}) {
    const std::string corpus = dir_ / "corpus.jsonl";
    if (!fs::exists(corpus)) WriteCorpus(corpus, 12);
    std::vector<std::string> args = {"train", "--corpus", corpus, "--out", dir_ / name, "--preset", "tiny",
                                     "--steps", "30", "--vocab-size", "300", "--validation-fraction", "0.2",
                                     "--json"};
    args.insert(args.end(), extra.begin(), extra.end());
    Result r = Run(args);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return dir_ / name;
  }

  rag::testing::TempDir dir_;
};

}  // namespace rag::cli_test

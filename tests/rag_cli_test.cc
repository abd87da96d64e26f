// End-to-end tests of the `rag` binary: what a user types, what they see.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "tests/test_util.h"

extern char** environ;

namespace {

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
  pid_t Start(const std::vector<std::string>& args) {
    std::vector<std::string> full = {RAG_BINARY};
    full.insert(full.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : full) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, (dir_ / "stdout").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&actions, 2, (dir_ / "stderr").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    pid_t pid = -1;
    EXPECT_EQ(posix_spawn(&pid, RAG_BINARY, &actions, nullptr, argv.data(), environ), 0);
    posix_spawn_file_actions_destroy(&actions);
    return pid;
  }

  Result Wait(pid_t pid) {
    int status = 0;
    waitpid(pid, &status, 0);
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return {code, Slurp(dir_ / "stdout"), Slurp(dir_ / "stderr")};
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

TEST_F(RagCliTest, TrainScoreGenerateEvaluate) {
  const std::string model = TrainTiny("m");
  for (const char* f : {"config.json", "tokenizer.json", "model.pt", "model_info.json", "split.json"}) {
    EXPECT_TRUE(fs::exists(fs::path(model) / f)) << f;
  }
  Result score = Run({"score", "--model", model, "--text", "The cat sees the red house.", "--json"});
  ASSERT_EQ(score.exit_code, 0) << score.err;
  json s = json::parse(score.out);
  EXPECT_GT(s["tokens"].get<int>(), 3);
  EXPECT_NEAR(s["perplexity"].get<double>(), std::exp(s["nll"].get<double>()), 1e-6);
  EXPECT_EQ(s["token_logprobs"].size(), s["tokens"].get<size_t>());

  // A sentence from the training grammar is far more likely than noise.
  Result noise = Run({"score", "--model", model, "--text", "zq xv kkj wqp zzv bbq.", "--json"});
  ASSERT_EQ(noise.exit_code, 0);
  EXPECT_LT(s["perplexity"].get<double>(), json::parse(noise.out)["perplexity"].get<double>());

  Result g1 = Run({"generate", "--model", model, "--prompt", "The cat", "--temperature", "0", "--json"});
  Result g2 = Run({"generate", "--model", model, "--prompt", "The cat", "--temperature", "0", "--json"});
  ASSERT_EQ(g1.exit_code, 0) << g1.err;
  EXPECT_EQ(json::parse(g1.out)["text"], json::parse(g2.out)["text"]);
  EXPECT_GT(json::parse(g1.out)["tokens"].get<int>(), 0);
  Result sampled = Run({"generate", "--model", model, "--prompt", "", "--top-p", "0.9", "--top-k", "50",
                        "--seed", "3", "--max-tokens", "12"});
  EXPECT_EQ(sampled.exit_code, 0) << sampled.err;

  Result ppl = Run({"eval", "perplexity", "--model", model, "--corpus", dir_ / "corpus.jsonl", "--split",
                    "validation", "--json", "--quiet"});
  ASSERT_EQ(ppl.exit_code, 0) << ppl.err;
  json p = json::parse(ppl.out);
  EXPECT_GT(p["tokens"].get<int>(), 0);
  EXPECT_LT(p["perplexity"].get<double>(), p["unigram_perplexity"].get<double>());
}

TEST_F(RagCliTest, BadInputFailsClearlyAndWritesNothingHalf) {
  Result r = Run({"train", "--corpus", dir_ / "missing.jsonl", "--out", dir_ / "m"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("does not exist"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir_ / "m"));

  fs::create_directories(dir_ / "nothing");
  r = Run({"train", "--corpus", dir_ / "nothing", "--out", dir_ / "m"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("no .txt or .jsonl"), std::string::npos) << r.err;

  WriteCorpus(dir_ / "corpus.jsonl", 4);
  r = Run({"train", "--corpus", dir_ / "corpus.jsonl", "--out", dir_ / "m", "--preset", "gigantic"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("unknown preset"), std::string::npos) << r.err;

  r = Run({"score", "--model", dir_ / "no_model", "--text", "hi"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("does not exist"), std::string::npos) << r.err;

  const std::string model = TrainTiny("ok");
  r = Run({"score", "--model", model, "--text", ""});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("empty"), std::string::npos) << r.err;
  r = Run({"score", "--model", model, "--text", "hi", "--mode", "nonsense"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("--mode"), std::string::npos) << r.err;

  // Invalid UTF-8 is just bytes: it scores.
  r = Run({"score", "--model", model, "--text", "caf\xe9 \xff\xfe"});
  EXPECT_EQ(r.exit_code, 0) << r.err;

  // A corrupt checkpoint of the weights is caught by the content hash.
  fs::resize_file(fs::path(model) / "model.pt", 100);
  r = Run({"generate", "--model", model, "--prompt", "The"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("content hash"), std::string::npos) << r.err;
}

TEST_F(RagCliTest, BuildQueryValidate) {
  const std::string model = TrainTiny("m");
  const std::string corpus = dir_ / "corpus.jsonl";
  Result r = Run({"build", "--corpus", corpus, "--model", model, "--out", dir_ / "idx", "--chunk-tokens", "16",
                  "--quiet", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  json manifest = json::parse(r.out);
  EXPECT_EQ(manifest["faiss"]["index_factory"], "Flat");  // a corpus this small gets an exact index
  r = Run({"query", "--model", model, "--index", dir_ / "idx", "--text", "The cat sees the red house", "-k", "3",
           "--exclude-doc", "doc0", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  json q = json::parse(r.out);
  ASSERT_EQ(q["neighbours"].size(), 3u);
  for (const auto& n : q["neighbours"]) {
    EXPECT_NE(n["doc_id"], "doc0");
    EXPECT_FALSE(n["text"].get<std::string>().empty());
    EXPECT_TRUE(n.contains("continuation") && n.contains("distance") && n.contains("chunk_id"));
  }
  r = Run({"validate", dir_ / "idx", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
  json v = json::parse(r.out);
  EXPECT_TRUE(v["valid"].get<bool>());
  EXPECT_DOUBLE_EQ(v["recall_at_10"].get<double>(), 1.0);  // Flat is exact
  // A flipped byte in the index file is caught by validate.
  {
    std::fstream f(dir_ / "idx/chunks.faiss", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(100);
    f.put('\x7f');
  }
  r = Run({"validate", dir_ / "idx", "--json"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_FALSE(json::parse(r.out)["valid"].get<bool>());
  // Building again into the same place needs --overwrite.
  r = Run({"build", "--corpus", corpus, "--model", model, "--out", dir_ / "idx", "--quiet"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("--overwrite"), std::string::npos) << r.err;
}

TEST_F(RagCliTest, TrainsWithGpt2Vocabulary) {
  const char* gpt2 = std::getenv("RAG_GPT2_DIR");
  const std::string dir = gpt2 != nullptr ? gpt2 : "data/gpt2";
  ASSERT_TRUE(fs::exists(fs::path(dir) / "encoder.json")) << "run scripts/prepare_corpus.sh (missing " << dir << ")";
  WriteCorpus(dir_ / "corpus.jsonl", 6);
  Result r = Run({"train", "--corpus", dir_ / "corpus.jsonl", "--out", dir_ / "g", "--preset", "tiny", "--steps", "2",
                  "--gpt2-vocab", dir, "--quiet"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  json config = json::parse(Slurp(dir_ / "g/config.json"));
  EXPECT_EQ(config["vocab_size"].get<int>(), 50257);
  r = Run({"score", "--model", dir_ / "g", "--text", "Hello world. The capital of France is Paris.", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["tokens"].get<int>(), 10);  // GPT-2's own tokenization of this sentence
}

TEST_F(RagCliTest, SigintCheckpointsAndResumeEndsIdenticalToAnUninterruptedRun) {
  WriteCorpus(dir_ / "corpus.jsonl", 12);
  const std::vector<std::string> common = {"--corpus", dir_ / "corpus.jsonl", "--preset", "tiny", "--steps", "400",
                                           "--vocab-size", "300", "--checkpoint-every", "10", "--threads", "1",
                                           "--quiet"};
  auto args = [&](const std::string& out, std::vector<std::string> extra) {
    std::vector<std::string> a = {"train", "--out", dir_ / out};
    a.insert(a.end(), common.begin(), common.end());
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  pid_t pid = Start(args("interrupted", {}));
  const fs::path ckpt = fs::path(dir_ / "interrupted") / "checkpoint.pt";
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (!fs::exists(ckpt) && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_TRUE(fs::exists(ckpt));
  kill(pid, SIGINT);
  Result r = Wait(pid);
  if (r.exit_code == 0) GTEST_SKIP() << "training finished before the signal arrived";
  EXPECT_EQ(r.exit_code, 130) << r.err;
  EXPECT_NE(r.err.find("--resume"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(fs::path(dir_ / "interrupted") / "model_info.json"));

  // Without --resume the run refuses to clobber the checkpoint.
  r = Run(args("interrupted", {}));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("--resume"), std::string::npos) << r.err;

  r = Run(args("interrupted", {"--resume"}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = Run(args("straight", {}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto hash = [&](const std::string& name) {
    return json::parse(Slurp(dir_ / (name + "/model_info.json")))["content_hash"].get<std::string>();
  };
  EXPECT_EQ(hash("interrupted"), hash("straight"));
}

}  // namespace

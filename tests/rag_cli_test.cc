// End-to-end tests of the `rag` binary: what a user types, what they see.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
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

  // `rag tokenize` gives the ids score used, from the tokenizer alone (a
  // directory holding nothing but tokenizer.json works), and --decode
  // reads its --json ids back to the text.
  std::vector<int> scored;
  for (const auto& t : s["token_logprobs"]) scored.push_back(t["token"].get<int>());
  const fs::path tok_only = dir_ / "tokenizer-only";
  fs::create_directories(tok_only);
  fs::copy_file(fs::path(model) / "tokenizer.json", tok_only / "tokenizer.json");
  for (const std::string& dir : {model, tok_only.string()}) {
    Result tok = Run({"tokenize", "--model", dir, "--text", "The cat sees the red house.", "--json"});
    ASSERT_EQ(tok.exit_code, 0) << tok.err;
    const json t = json::parse(tok.out);
    EXPECT_EQ(t["ids"].get<std::vector<int>>(), scored) << dir;
    Result back = Run({"tokenize", "--model", dir, "--decode", "--text", t["ids"].dump(), "--json"});
    ASSERT_EQ(back.exit_code, 0) << back.err;
    EXPECT_EQ(json::parse(back.out)["text"], "The cat sees the red house.") << dir;
  }

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
  EXPECT_NE(r.err.find("mode must be lm, knnlm or retro"), std::string::npos) << r.err;

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
  // Exact counts from the index's suffix array: the start of doc0 occurs
  // there (and maybe elsewhere); a made-up phrase nowhere.
  const std::string start = rag::testing::MakeCorpus(12, 21)[0].text.substr(0, 24);
  r = Run({"count", "--index", dir_ / "idx", "--text", start, "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  json c = json::parse(r.out);
  EXPECT_GE(c["count"].get<int64_t>(), 1);
  EXPECT_EQ(c["documents"][0], "doc0");
  EXPECT_EQ(c["indexed_documents"], 12);
  r = Run({"count", "--index", dir_ / "idx", "--text", "zebra quartz violin", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["count"], 0);
  EXPECT_EQ(json::parse(r.out)["count_after_a_space"], 0);
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
  const std::vector<std::string> common = {
      "--corpus", dir_ / "corpus.jsonl", "--preset", "tiny",      "--steps", "150",    "--vocab-size",
      "300",      "--checkpoint-every",  "10",       "--threads", "1",       "--quiet"};
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
  // A run that finished before the signal tested nothing: a failure, not a skip.
  ASSERT_NE(r.exit_code, 0) << "training finished its 150 steps before the SIGINT sent after the first checkpoint";
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

// SIGKILL cannot be caught: the builder gets no chance to checkpoint or
// clean up. The kill must leave no manifest anywhere (nothing that looks
// like a finished index), and the same command must then resume from the
// last whole batch and end identical to a build that was never interrupted.
TEST_F(RagCliTest, BuildKilledWithSigkillResumesToIdenticalIndex) {
  const std::string model = TrainTiny("m");
  const std::string corpus = dir_ / "big.jsonl";
  // ~28 chunks of 16 tokens a document: some 5600 chunks, 700 batches of
  // 8, under a second of embedding on one idle core; the kill comes after
  // the second batch.
  WriteCorpus(corpus, 200);
  constexpr int64_t kBatch = 8;
  auto build = [&](const std::string& out) {
    return std::vector<std::string>{"build", "--corpus", corpus, "--model", model, "--out", dir_ / out,
                                    "--chunk-tokens", "16", "--batch-size", std::to_string(kBatch),
                                    "--threads", "1", "--quiet"};
  };
  Result r = Run(build("a"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json a = json::parse(Slurp(dir_ / "a/manifest.json"));
  const int64_t chunks = a["chunking"]["chunks"].get<int64_t>();
  const int64_t row_bytes = a["model"]["dim"].get<int64_t>() * static_cast<int64_t>(sizeof(float));
  const uintmax_t batch_bytes = static_cast<uintmax_t>(kBatch * row_bytes);
  const uintmax_t total_bytes = static_cast<uintmax_t>(chunks * row_bytes);
  ASSERT_GE(chunks, 50 * kBatch) << "corpus too small to interrupt the embedding reliably";

  // Kill B once its embeddings hold more than one batch, while it is still running.
  const fs::path partial = dir_ / "b.partial";
  const fs::path embeddings = partial / "embeddings.f32";
  pid_t pid = Start(build("b"));
  bool killed = false;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline) {
    std::error_code ec;
    const uintmax_t size = fs::file_size(embeddings, ec);
    if (!ec && size > batch_bytes && size < total_bytes) {
      ASSERT_EQ(kill(pid, SIGKILL), 0);
      killed = true;
      break;
    }
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      FAIL() << "the build ended (status " << status << ") before it could be killed mid-embedding; "
             << "make the corpus bigger";
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (!killed) kill(pid, SIGKILL);
  r = Wait(pid);
  ASSERT_TRUE(killed) << "embeddings never grew past one batch within 60 s: " << r.err;
  EXPECT_EQ(r.exit_code, 128 + SIGKILL) << r.err;
  const uintmax_t killed_size = fs::file_size(embeddings);
  EXPECT_GT(killed_size, batch_bytes);
  EXPECT_LT(killed_size, total_bytes) << "killed after the embedding had finished";
  EXPECT_FALSE(fs::exists(dir_ / "b")) << "a killed build must not leave anything at the index path";
  EXPECT_FALSE(fs::exists(partial / "manifest.json")) << "a killed build must not look finished";

  r = Run(build("b"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("resuming embedding at chunk"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(partial));
  const json b = json::parse(Slurp(dir_ / "b/manifest.json"));
  EXPECT_EQ(b["checksums"], a["checksums"]);
  EXPECT_TRUE(b["checksums"].contains("embeddings.f32") && b["checksums"].contains("chunks.faiss"))
      << b["checksums"].dump();
  EXPECT_EQ(b["corpus"]["documents"], a["corpus"]["documents"]);
  EXPECT_EQ(b["corpus"]["tokens"], a["corpus"]["tokens"]);
  EXPECT_EQ(b["chunking"]["chunks"], a["chunking"]["chunks"]);
  EXPECT_EQ(b["faiss"]["vectors"], a["faiss"]["vectors"]);
  r = Run({"validate", dir_ / "b"});
  EXPECT_EQ(r.exit_code, 0) << r.err << r.out;
}

}  // namespace

TEST_F(RagCliTest, ServerFormsOfTheCommandsPrintWhatInProcessFormsPrint) {
  const std::string model = TrainTiny("m");
  const std::string corpus = dir_ / "corpus.jsonl";
  const std::string index = dir_ / "idx";
  Result r = Run({"build", "--corpus", corpus, "--model", model, "--out", index, "--chunk-tokens", "16", "--quiet",
                  "--datastore"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string port_file = dir_ / "port";
  pid_t server = Start({"serve", "--model", model, "--index", index, "--listen", "127.0.0.1:0", "--port-file",
                        port_file, "--log-level", "debug"},
                       "serve_");
  for (int i = 0; i < 600 && !fs::exists(port_file); ++i) usleep(100 * 1000);
  ASSERT_TRUE(fs::exists(port_file)) << Slurp(dir_ / "serve_stderr");
  const std::string addr = "127.0.0.1:" + Slurp(port_file).substr(0, Slurp(port_file).find('\n'));

  const std::vector<std::vector<std::string>> commands = {
      {"query", "--text", "The cat sees the red house", "-k", "4", "--exclude-doc", "doc1", "--json"},
      {"query", "--text", "The cat sees the red house", "-k", "2"},
      {"score", "--text", "The dog runs to the house.", "--json"},
      {"generate", "--prompt", "The cat", "--max-tokens", "10", "--temperature", "0.8", "--seed", "5", "--json"},
      {"generate", "--prompt", "The cat", "--max-tokens", "10", "--temperature", "0"},
      {"next-token", "--text", "The cat", "--top-n", "5", "--json"},
      {"eval", "perplexity", "--corpus", corpus, "--split", "validation", "--quiet", "--json"},
      {"eval", "perplexity", "--corpus", corpus, "--mode", "knnlm", "--sweep", "lambda=0,0.5", "--k", "8",
       "--exclude-own-doc", "--quiet", "--json"},
      {"score", "--text", "The dog runs to the house.", "--mode", "knnlm", "--lambda", "0.5", "--json"},
  };
  for (const auto& cmd : commands) {
    std::vector<std::string> remote = cmd, local = cmd;
    remote.insert(remote.end(), {"--server", addr});
    local.insert(local.end(), {"--model", model});
    local.insert(local.end(), {"--index", index});
    Result a = Run(remote);
    Result b = Run(local);
    ASSERT_EQ(a.exit_code, 0) << cmd[0] << ": " << a.err;
    ASSERT_EQ(b.exit_code, 0) << cmd[0] << ": " << b.err;
    EXPECT_FALSE(a.out.empty());
    EXPECT_EQ(a.out, b.out) << cmd[0];
    if (std::find(cmd.begin(), cmd.end(), "--sweep") != cmd.end()) {
      json j = json::parse(a.out);
      ASSERT_EQ(j["sweep"].size(), 2u);
      EXPECT_DOUBLE_EQ(j["sweep"][0]["perplexity"].get<double>(), j["lm_perplexity"].get<double>());  // lambda 0
    }
  }

  // Errors come back as clear messages, and the server lives on.
  r = Run({"query", "--server", addr, "--text", "x", "--nprobe", "-5"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("nprobe must be"), std::string::npos) << r.err;
  r = Run({"score", "--server", addr, "--text", "caf\xe9"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("UTF-8"), std::string::npos) << r.err;

  // A live add is searchable at once and still there after a restart.
  const std::string extra = dir_ / "extra.jsonl";
  std::ofstream(extra) << json{{"id", "added"}, {"text", "Zq owl vex"}}.dump()
                       << "\n";
  r = Run({"add", "--server", addr, "--corpus", extra, "--json", "--quiet"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["documents_added"], 1);
  r = Run({"query", "--server", addr, "--text", "Zq owl vex", "-k", "1",
           "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["neighbours"][0]["doc_id"], "added");
  r = Run({"stats", "--server", addr});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["documents"], 13);

  // SIGTERM: a clean exit, the index saved, one log line per request.
  ASSERT_EQ(kill(server, SIGTERM), 0);
  Result s = Wait(server, "serve_");
  EXPECT_EQ(s.exit_code, 0) << s.err;
  EXPECT_NE(s.err.find("serve: Search"), std::string::npos) << s.err;
  EXPECT_NE(s.err.find("INVALID_ARGUMENT"), std::string::npos) << s.err;
  r = Run({"validate", index, "--json"});
  EXPECT_EQ(r.exit_code, 0) << r.out;
  r = Run({"query", "--model", model, "--index", index, "--text", "Zq owl vex",
           "-k", "1", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["neighbours"][0]["doc_id"], "added");
}

TEST_F(RagCliTest, TrainRetroThenEvaluateAndGenerateWithRetrievalOnOffRandom) {
  const std::string model = TrainTiny("lm");
  const std::string corpus = dir_ / "corpus.jsonl";
  const std::string index = dir_ / "idx";
  Result r = Run({"build", "--corpus", corpus, "--model", model, "--out", index, "--chunk-tokens", "16",
                  "--continuation-tokens", "16", "--index-factory", "Flat", "--quiet"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string config = dir_ / "retro.json";
  std::ofstream(config) << R"({"chunk_size": 16, "neighbour_tokens": 32, "encoder_layers": 1})";
  const std::vector<std::string> train = {"train", "--arch", "retro", "--index", index, "--init", model,
                                          "--out", dir_ / "retro", "--config", config, "--steps", "12",
                                          "--eval-every", "6", "--json"};
  r = Run(train);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  json t = json::parse(r.out);
  EXPECT_EQ(t["steps"], 12);
  EXPECT_EQ(t["retrofit"], true);
  EXPECT_GT(t["train_chunks"].get<int>(), 10);
  EXPECT_TRUE(fs::exists(fs::path(dir_ / "retro") / "retro_neighbours.bin"));
  EXPECT_TRUE(fs::exists(fs::path(dir_ / "retro") / "base" / "model.pt"));
  // A second run refuses to overwrite; --overwrite reuses the neighbour cache.
  r = Run(train);
  EXPECT_NE(r.exit_code, 0);
  std::vector<std::string> again = train;
  again.push_back("--overwrite");
  r = Run(again);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("neighbours from the cache"), std::string::npos) << r.err;
  // Lexical neighbours are another table, not the cached dense one.
  {
    std::vector<std::string> lexical = again;
    *(std::find(lexical.begin(), lexical.end(), "--out") + 1) = dir_ / "retro-bm25";
    lexical.insert(lexical.end(), {"--neighbour-search", "bm25"});
    r = Run(lexical);
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.err.find("neighbours from the cache"), std::string::npos) << r.err;
    std::ifstream info(fs::path(dir_ / "retro-bm25") / "model_info.json");
    EXPECT_EQ(json::parse(info)["neighbour_search"], "bm25");
    lexical.back() = "tfidf";
    r = Run(lexical);
    EXPECT_NE(r.exit_code, 0);
    EXPECT_NE(r.err.find("neighbour-search"), std::string::npos) << r.err;
  }
  // New models use RETRO's relative positions in the CCA, neighbours re-cut
  // on their query, in training and serving, and start with half the CCA
  // heads reading the aligned token (the saved config says so).
  {
    std::ifstream in(fs::path(dir_ / "retro") / "config.json");
    const json saved = json::parse(in);
    EXPECT_EQ(saved["cca_positions"], "rotary");
    EXPECT_EQ(saved["align_neighbours"], 16);
    EXPECT_EQ(saved["cca_aligned_bias"], 6.0);
    // Prompts are padded with end-of-text to end a chunk; the decoder reads
    // past that padding (RetroConfig::padding_id).
    EXPECT_GE(saved["padding_id"].get<int>(), 256);
  }
  // The tiny preset adds prompt windows (neighbours found by BM25 with a
  // document's first tokens), some held out.
  EXPECT_GT(t["train_prompt_windows"].get<int>(), 0);
  EXPECT_TRUE(t["prompt_loss"].is_number());

  // --exclude-documents leaves documents out of training (and out of the
  // prompts' neighbours); --prompt-windows 0 turns the prompts off.
  {
    std::ifstream in(corpus);
    std::string first;
    std::getline(in, first);
    std::ofstream(dir_ / "exclude.jsonl") << first << "\n";
  }
  std::vector<std::string> excluded = again;
  excluded.insert(excluded.end(), {"--exclude-documents", dir_ / "exclude.jsonl", "--prompt-windows", "0"});
  r = Run(excluded);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  json e = json::parse(r.out);
  EXPECT_EQ(e["train_documents"].get<int>() + e["validation_documents"].get<int>(),
            t["train_documents"].get<int>() + t["validation_documents"].get<int>() - 1);
  EXPECT_EQ(e["train_prompt_windows"], 0);
  excluded.back() = "-1";
  r = Run(excluded);
  EXPECT_NE(r.exit_code, 0);
  excluded.back() = "8";
  excluded.insert(excluded.end(), {"--prompt-own-document", "1.5"});
  r = Run(excluded);
  EXPECT_NE(r.exit_code, 0);
  r = Run({"train", "--corpus", corpus, "--out", dir_ / "lm2", "--exclude-documents", dir_ / "exclude.jsonl"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("apply to --arch retro only"), std::string::npos) << r.err;

  std::map<std::string, double> ppl;
  for (const std::string retrieval : {"on", "off", "random"}) {
    r = Run({"eval", "perplexity", "--model", dir_ / "retro", "--index", index, "--corpus", corpus, "--mode",
             "retro", "--retrieval", retrieval, "--baseline", "none", "--exclude-own-doc", "--json", "--quiet"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    json p = json::parse(r.out);
    EXPECT_EQ(p["retrieval"], retrieval);
    EXPECT_EQ(p["leakage_filter"], 32);
    ppl[retrieval] = p["perplexity"].get<double>();
    // A real average over real tokens: exp of the mean NLL, below a uniform
    // guess over the vocabulary (the retrofit was trained on this corpus).
    EXPECT_GT(p["tokens"].get<int64_t>(), 0);
    EXPECT_NEAR(ppl[retrieval], std::exp(p["nll"].get<double>()), 1e-9 * ppl[retrieval]);
    EXPECT_LT(ppl[retrieval], p["model"]["vocab_size"].get<double>()) << retrieval;
  }
  // The neighbours reach the prediction: retrieval on, off and random each
  // give a different perplexity.
  EXPECT_NE(ppl["on"], ppl["off"]);
  EXPECT_NE(ppl["on"], ppl["random"]);
  EXPECT_NE(ppl["off"], ppl["random"]);
  // A prompt laid out to end a chunk, as probes are scored; a prompt longer
  // than the text is refused.
  {
    std::ifstream in(corpus);
    std::string line;
    std::getline(in, line);
    const std::string text = json::parse(line)["text"].get<std::string>().substr(0, 60);
    for (const std::string retrieval : {"on", "off"}) {
      r = Run({"score", "--model", dir_ / "retro", "--index", index, "--mode", "retro", "--retrieval", retrieval,
               "--text", text, "--prompt-bytes", "20", "--json"});
      ASSERT_EQ(r.exit_code, 0) << r.err;
      ppl["prompt_" + retrieval] = json::parse(r.out)["nll"].get<double>();
    }
    EXPECT_NE(ppl["prompt_on"], ppl["prompt_off"]);  // the prompt's neighbours reach what follows it
    r = Run({"score", "--model", dir_ / "retro", "--index", index, "--mode", "retro", "--text", text, "--prompt-bytes",
             "61"});
    EXPECT_NE(r.exit_code, 0);
    EXPECT_NE(r.err.find("prompt_bytes"), std::string::npos) << r.err;
  }
  // The retrofitted model (decoder frozen) without neighbours is its base LM.
  r = Run({"eval", "perplexity", "--model", model, "--corpus", corpus, "--baseline", "none", "--json", "--quiet"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NEAR(ppl["off"], json::parse(r.out)["perplexity"].get<double>(), 1e-3 * ppl["off"]);
  // So is its generation without neighbours, though the prompt is padded in
  // front to end a chunk.
  r = Run(
      {"generate", "--model", model, "--prompt", "The cat sees", "--temperature", "0", "--max-tokens", "24", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string lm_text = json::parse(r.out)["text"].get<std::string>();
  r = Run({"generate", "--model", dir_ / "retro", "--index", index, "--mode", "retro", "--retrieval", "off", "--prompt",
           "The cat sees", "--temperature", "0", "--max-tokens", "24", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(json::parse(r.out)["text"].get<std::string>(), lm_text);

  r = Run({"generate", "--model", dir_ / "retro", "--index", index, "--mode", "retro", "--prompt",
           "The cat sees the red house and the dog", "--temperature", "0", "--max-tokens", "40", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  json g = json::parse(r.out);
  EXPECT_GE(g["retrievals"].size(), 2u);
  r = Run({"generate", "--model", dir_ / "retro", "--index", index, "--mode", "retro", "--prompt", "The cat",
           "--max-tokens", "40", "--show-neighbours"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("[retrieved with chunk"), std::string::npos) << r.out;

  // RETRO needs the LM the index was built with.
  const std::string other = TrainTiny("other", {"--seed", "99"});
  r = Run({"train", "--arch", "retro", "--index", index, "--init", other, "--out", dir_ / "retro2", "--steps", "2"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.err.find("built with model"), std::string::npos) << r.err;
}

// Knowledge update without retraining, in retro mode: a tiny RETRO
// retrofitted on "The capital of X is Y." documents (invented names the LM
// cannot guess; every training prompt retrieves its own document, so it
// learns to copy from an aligned neighbour) is served; facts about new
// invented places, added through the live server, flip their probes to
// right in retro mode while lm stays where it was.
TEST_F(RagCliTest, FactsAddedToALiveServerFlipTheirProbesInRetroOnly) {
  std::mt19937 rng(7);
  auto pick = [&](const std::vector<std::string>& from) {
    return from[std::uniform_int_distribution<size_t>(0, from.size() - 1)(rng)];
  };
  const std::vector<std::string> onsets = {"b", "d", "f", "g", "k", "l",  "m",  "n",  "p",
                                           "r", "s", "t", "v", "z", "qu", "th", "br", "gl"};
  const std::vector<std::string> vowels = {"a", "e", "i", "o", "u", "ai", "ou"};
  auto name = [&](int syllables) {
    std::string s;
    for (int i = 0; i < syllables; ++i) {
      s += pick(onsets);  // two statements: the order of a + b's operands is unspecified
      s += pick(vowels);
    }
    s[0] = static_cast<char>(std::toupper(static_cast<unsigned char>(s[0])));
    return s;
  };
  const std::vector<std::string> filler = {"It is a quiet place.", "Many people live there.",
                                           "The river runs through it.", "It is known for its markets.",
                                           "Its winters are cold."};
  auto fact = [&](const std::string& id, const std::string& place, const std::string& capital) {
    const std::string first = pick(filler), second = pick(filler);
    return json{{"id", id}, {"text", "The capital of " + place + " is " + capital + ". " + first + " " + second}}
               .dump() +
           "\n";
  };
  const std::string corpus = dir_ / "facts.jsonl";
  {
    std::ofstream out(corpus);
    for (int i = 0; i < 400; ++i) out << fact("f" + std::to_string(i), name(2), name(3));
  }
  std::vector<std::pair<std::string, std::string>> added;
  for (int i = 0; i < 10; ++i) added.emplace_back(name(2), name(3));
  const std::string facts = dir_ / "added.jsonl", probes = dir_ / "probes.jsonl";
  {
    std::ofstream out(facts), probe_out(probes);
    json candidates = json::array();
    for (const auto& [place, capital] : added) candidates.push_back(capital);
    for (size_t i = 0; i < added.size(); ++i) {
      out << fact("new" + std::to_string(i), added[i].first, added[i].second);
      probe_out << json{{"sub_label", added[i].first},
                        {"obj_label", added[i].second},
                        {"evidence_doc_id", "new" + std::to_string(i)},
                        {"predicate_id", "capital"},
                        {"template", "The capital of [X] is [Y]."},
                        {"candidates", candidates}}
                       .dump()
                << "\n";
    }
  }

  const std::string lm = dir_ / "lm", index = dir_ / "idx", retro = dir_ / "retro";
  Result r = Run({"train", "--corpus", corpus, "--out", lm, "--preset", "tiny", "--steps", "300", "--vocab-size", "400",
                  "--quiet"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = Run({"build", "--corpus", corpus, "--model", lm, "--out", index, "--chunk-tokens", "16", "--continuation-tokens",
           "16", "--index-factory", "Flat", "--quiet"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const std::string config = dir_ / "retro.json";
  std::ofstream(config) << R"({"chunk_size": 16, "neighbour_tokens": 32, "encoder_layers": 1})";
  // clang-format off
  r = Run({"train", "--arch", "retro", "--index", index, "--init", lm, "--out", retro, "--config", config,
           "--steps", "200", "--lr", "3e-3", "--batch-size", "4", "--prompt-windows", "16",
           "--prompt-own-document", "1", "--quiet"});
  // clang-format on
  ASSERT_EQ(r.exit_code, 0) << r.err;

  const std::string port_file = dir_ / "port";
  pid_t server = Start(
      {"serve", "--model", retro, "--index", index, "--listen", "127.0.0.1:0", "--port-file", port_file}, "serve_");
  for (int i = 0; i < 600 && !fs::exists(port_file); ++i) usleep(100 * 1000);
  ASSERT_TRUE(fs::exists(port_file)) << Slurp(dir_ / "serve_stderr");
  const std::string addr = "127.0.0.1:" + Slurp(port_file).substr(0, Slurp(port_file).find('\n'));
  const std::string report = dir_ / "report";
  auto p_at_1 = [&](const std::string& mode, const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args = {"eval", "probes", "--server", addr, "--probes", probes, "--mode", mode,
                                     "--search-method", "bm25", "--json", "--quiet"};
    args.insert(args.end(), extra.begin(), extra.end());
    Result e = Run(args);
    EXPECT_EQ(e.exit_code, 0) << e.err;
    return e.exit_code == 0 ? json::parse(e.out)["p_at_1"].get<double>() : -1.0;
  };
  const double lm_before = p_at_1("lm"), retro_before = p_at_1("retro");
  r = Run({"add", "--server", addr, "--corpus", facts, "--quiet"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const double lm_after = p_at_1("lm", {"--report", report, "--report-name", "lm"});
  const double retro_after = p_at_1("retro", {"--report", report, "--report-name", "retro"});
  // Each probe's own evidence document left out of retrieval: what the
  // model knows without it (here nothing: the facts are new).
  const double retro_without_evidence =
      p_at_1("retro", {"--exclude-evidence", "--report", report, "--report-name", "retro-no-evidence"});
  ASSERT_EQ(kill(server, SIGTERM), 0);
  Wait(server, "serve_");

  // 10 probes, 10 candidates each. Seeds 7, 8, 9, 10 gave retro 0.3, 0.1,
  // 0.1, 0.1 before the add and 1.0, 0.8, 1.0, 0.9 after; lm 0.1.
  EXPECT_LE(retro_before, 0.5);
  EXPECT_GE(retro_after, 0.7) << "retro before the add " << retro_before;
  EXPECT_GE(retro_after - retro_before, 0.4);
  EXPECT_EQ(lm_after, lm_before);  // the LM reads no index
  EXPECT_LT(lm_after, retro_after);
  EXPECT_LE(retro_without_evidence, retro_before + 0.2) << "retro after the add " << retro_after;
  EXPECT_LE(retro_without_evidence, retro_after - 0.4);

  // --report: each run's JSON, the P@1 plot and a summary naming every run.
  for (const char* run : {"lm", "retro", "retro-no-evidence"}) {
    const fs::path result = fs::path(report) / "probes" / (std::string(run) + ".json");
    ASSERT_TRUE(fs::exists(result)) << result;
    EXPECT_TRUE(json::parse(Slurp(result)).contains("p_at_1")) << result;
  }
  EXPECT_GT(fs::file_size(fs::path(report) / "probes_p_at_1.png"), 1000u);
  const std::string summary = Slurp(fs::path(report) / "summary.md");
  for (const char* run : {"lm", "retro", "retro-no-evidence"}) EXPECT_NE(summary.find(run), std::string::npos) << summary;
}

// Memorization (Carlini et al. 2023) and extraction (Carlini et al. 2021)
// from the command line: a tiny model trained until it memorises its
// training documents (random words: nothing to generalise) completes their
// prefixes and not the held-out documents', and its samples hold long
// verbatim runs of the corpus that a corpus it never saw does not hold.
TEST_F(RagCliTest, EvalMemorizationAndExtractionFindWhatTheModelMemorised) {
  const std::vector<std::string> words = {
      "river",  "stone",   "bridge", "lantern", "harvest", "meadow", "copper", "violin", "orchard", "glacier",
      "thunder", "candle", "harbour", "falcon", "pepper",  "marble", "saddle", "compass", "willow", "ember",
      "quartz", "tide",    "ledger", "prism",   "cobalt",  "fern",   "summit", "anvil",   "basket", "whistle"};
  auto write_corpus = [&](const std::string& path, unsigned seed) {
    std::mt19937 rng(seed);
    std::ofstream out(path);
    for (int i = 0; i < 16; ++i) {
      std::string text = "Record " + std::to_string(i) + ":";
      for (int w = 0; w < 40; ++w) text += " " + words[rng() % words.size()];
      out << json{{"id", "m" + std::to_string(i)}, {"text", text + "."}}.dump() << "\n";
    }
  };
  const std::string corpus = dir_ / "mem.jsonl", unseen = dir_ / "unseen.jsonl", model = dir_ / "mem-model";
  write_corpus(corpus, 3);
  write_corpus(unseen, 4);
  Result r = Run({"--threads", "1", "train", "--corpus", corpus, "--out", model, "--preset", "tiny", "--steps", "400",
                  "--vocab-size", "300", "--validation-fraction", "0.25", "--quiet"});
  ASSERT_EQ(r.exit_code, 0) << r.err;

  const std::string report = dir_ / "mem-report";
  std::map<std::string, json> mem;
  for (const std::string split : {"train", "validation"}) {
    r = Run({"--threads", "1", "eval", "memorization", "--model", model, "--corpus", corpus, "--split", split,
             "--prefix-lengths", "16", "--suffix-tokens", "16", "--samples", "30", "--json", "--quiet", "--report",
             report, "--report-name", split});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    mem[split] = json::parse(r.out)["by_prefix"]["16"];
    EXPECT_EQ(mem[split]["samples"], 30) << split;
  }
  // Python's random with seed 3 (the same corpus shape) gave train exact 0.80,
  // token match 0.82; validation 0.00, 0.13.
  EXPECT_GE(mem["train"]["exact"].get<double>(), 0.5) << mem["train"];
  EXPECT_LE(mem["validation"]["exact"].get<double>(), 0.05) << mem["validation"];
  EXPECT_GE(mem["train"]["token_match"].get<double>(), mem["validation"]["token_match"].get<double>() + 0.3);
  for (const char* split : {"train", "validation"}) {
    EXPECT_TRUE(fs::exists(fs::path(report) / "memorization" / (std::string(split) + ".json"))) << split;
  }
  EXPECT_GT(fs::file_size(fs::path(report) / "memorization_exact.png"), 1000u);

  auto extraction = [&](const std::string& against) {
    Result e = Run({"--threads", "1", "eval", "extraction", "--model", model, "--corpus", against, "--samples", "20",
                    "--tokens", "48", "--match-tokens", "20", "--top", "10", "--json", "--quiet"});
    EXPECT_EQ(e.exit_code, 0) << e.err;
    return e.exit_code == 0 ? json::parse(e.out) : json();
  };
  const json seen = extraction(corpus), other = extraction(unseen);
  // The same corpus shape drawn by Python: 13 of 20 samples held a 20-token
  // run of the training corpus (the longest 48 tokens, the whole sample), the
  // perplexity ranking's top 10 all did; against an unseen corpus of the
  // same words, none (the longest run 17 tokens).
  EXPECT_GE(seen["extracted"].get<int>(), 8) << seen.dump();
  EXPECT_GE(seen["longest_match"].get<int>(), 32) << seen.dump();
  EXPECT_GE(seen["rankings"]["perplexity"]["precision"].get<double>(), 0.7) << seen.dump();
  EXPECT_LE(other["extracted"].get<int>(), 1) << other.dump();
  EXPECT_LT(other["longest_match"].get<int>(), seen["longest_match"].get<int>()) << other.dump();
}

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

#include "tests/rag_cli_fixture.h"

namespace rag::cli_test {
namespace {

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
  EXPECT_NE(r.err.find("mode must be lm, knnlm, retro, infgram or ralm"), std::string::npos) << r.err;

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
                        port_file, "--log-requests"},
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
    if (cmd[0] == "eval") {
      // The same figures; how long scoring took is the one thing that differs.
      json ja = json::parse(a.out), jb = json::parse(b.out);
      for (json* j : {&ja, &jb}) {
        EXPECT_GT((*j)["tokens_per_second"].get<double>(), 0) << cmd[0];
        j->erase("seconds");
        j->erase("tokens_per_second");
      }
      EXPECT_EQ(ja, jb) << cmd[0];
    } else {
      EXPECT_EQ(a.out, b.out) << cmd[0];
    }
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
  // --log-requests: one JSON line per rpc, with the stages of those that work.
  int searches = 0, knn_scores = 0, invalid = 0, lines = 0;
  std::istringstream err(s.err);
  for (std::string line; std::getline(err, line);) {
    if (line.empty() || line[0] != '{') continue;
    const json j = json::parse(line);
    ++lines;
    ASSERT_TRUE(j.contains("rpc") && j.contains("status") && j.contains("ms") && j.contains("peer")) << line;
    if (j["status"] == "INVALID_ARGUMENT") {
      ++invalid;
      EXPECT_FALSE(j["error"].get<std::string>().empty()) << line;
      continue;
    }
    if (j["status"] != "OK" || !j.contains("response")) continue;
    const json& t = j["response"]["timings"];
    if (j["rpc"] == "Search") {
      ++searches;
      EXPECT_GT(t["search_us"].get<int64_t>(), 0) << line;
      EXPECT_GT(t["embed_us"].get<int64_t>(), 0) << line;
    }
    if (j["rpc"] == "Score" && j["request"]["mode"] == "knnlm") {
      ++knn_scores;
      EXPECT_GT(t["forward_us"].get<int64_t>(), 0) << line;
      EXPECT_GT(t["search_us"].get<int64_t>(), 0) << line;
      EXPECT_GT(j["response"]["tokens"].get<int64_t>(), 0) << line;
    }
  }
  EXPECT_GE(searches, 3) << s.err;
  EXPECT_GE(knn_scores, 2) << s.err;
  EXPECT_GE(invalid, 1) << s.err;
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

}  // namespace rag::cli_test

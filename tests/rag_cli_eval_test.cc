// End-to-end tests of the `rag eval` commands a researcher runs on a model:
// knowledge probes on a live server (with --exclude-evidence and --report),
// memorization and extraction.
#include <signal.h>
#include <unistd.h>

#include <cctype>
#include <map>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "tests/rag_cli_fixture.h"

namespace rag::cli_test {
namespace {

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

}  // namespace
}  // namespace rag::cli_test

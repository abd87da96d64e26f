// Tokenizer speed gate: trains a 4096-token BPE on the corpus and measures
// single-threaded encode throughput over all of its text, ours and (when
// its files are there) GPT-2's.
//
//   bench_tokenizer [--corpus data/brown/brown.jsonl] [--gpt2-dir data/gpt2] [--rounds 5]
//       [--out bench/results/tokenizer.json]
//
// Each round trains a fresh tokenizer (so its first encode pass starts with
// an empty piece cache, as a fresh process does) and loads GPT-2's again;
// which of the two encodes first flips every round. Medians over the
// rounds; every round's figures go to --out as JSON.
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench/bench_report.h"
#include "common/file_util.h"
#include "lm/tokenizer.h"

namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

struct Pass {
  double mb_per_s = 0;
  double bytes_per_token = 0;
};

// Encodes every document once and checks the round trip (a fast tokenizer
// that loses bytes is no use); false when a document does not come back.
bool TimeEncode(const rag::lm::Tokenizer& tokenizer, const std::vector<std::string>& texts, Pass* pass) {
  size_t bytes = 0;
  size_t tokens = 0;
  std::vector<std::vector<rag::lm::TokenId>> encoded;
  encoded.reserve(texts.size());
  auto start = Clock::now();
  for (const std::string& text : texts) {
    encoded.push_back(tokenizer.Encode(text));
    bytes += text.size();
    tokens += encoded.back().size();
  }
  const double seconds = SecondsSince(start);
  pass->mb_per_s = static_cast<double>(bytes) / 1e6 / seconds;
  pass->bytes_per_token = static_cast<double>(bytes) / static_cast<double>(tokens);
  for (size_t i = 0; i < texts.size(); ++i) {
    auto decoded = tokenizer.Decode(encoded[i]);
    if (!decoded.ok() || *decoded != texts[i]) {
      std::fprintf(stderr, "round trip FAILED on document %zu\n", i);
      return false;
    }
  }
  return true;
}

bool ReadTexts(const std::string& path, std::vector<std::string>* texts) {
  auto corpus = rag::ReadFile(path);
  if (!corpus.ok()) {
    std::fprintf(stderr, "%s\n", corpus.status().ToString().c_str());
    return false;
  }
  size_t line_start = 0;
  int line_number = 0;
  while (line_start < corpus->size()) {
    size_t line_end = corpus->find('\n', line_start);
    if (line_end == std::string::npos) line_end = corpus->size();
    std::string line = corpus->substr(line_start, line_end - line_start);
    line_start = line_end + 1;
    ++line_number;
    if (line.empty()) continue;
    auto doc = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (doc.is_discarded() || !doc.is_object() || !doc.contains("text") || !doc["text"].is_string()) {
      std::fprintf(stderr, "%s:%d: expected a JSON object with a string 'text'\n", path.c_str(), line_number);
      return false;
    }
    texts->push_back(doc["text"].get<std::string>());
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  std::string corpus_path = "data/brown/brown.jsonl";
  std::string gpt2_dir = "data/gpt2";
  int64_t rounds = 5;
  std::string out_path;
  CLI::App app{"bench_tokenizer: BPE training time and single-threaded encode throughput"};
  app.add_option("--corpus", corpus_path, "JSONL corpus, one {\"text\": ...} per line")->capture_default_str();
  app.add_option("--gpt2-dir", gpt2_dir, "directory with GPT-2's encoder.json and vocab.bpe (skipped if absent)")
      ->capture_default_str();
  app.add_option("--rounds", rounds, "rounds (medians over them)")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--out", out_path, "JSON file for each round's figures");
  CLI11_PARSE(app, argc, argv);

  std::vector<std::string> texts;
  if (!ReadTexts(corpus_path, &texts)) return 1;
  size_t total_bytes = 0;
  for (const auto& t : texts) total_bytes += t.size();
  std::printf("corpus: %s, %zu documents, %.2f MB of text\n", corpus_path.c_str(), texts.size(),
              static_cast<double>(total_bytes) / 1e6);
  const std::string encoder = gpt2_dir + "/encoder.json";
  const std::string bpe = gpt2_dir + "/vocab.bpe";
  const bool with_gpt2 = std::filesystem::exists(encoder) && std::filesystem::exists(bpe);

  rag::lm::TokenizerTrainOptions options;
  options.vocab_size = 4096;
  std::vector<double> train_s, cold, warm, gpt2_load_s, gpt2_cold;
  Pass ours_pass, gpt2_pass;
  std::string hash;
  for (int64_t r = 0; r < rounds; ++r) {
    auto run_ours = [&]() -> bool {
      auto start = Clock::now();
      auto tokenizer = rag::lm::Tokenizer::Train(texts, options);
      if (!tokenizer.ok()) {
        std::fprintf(stderr, "training failed: %s\n", tokenizer.status().ToString().c_str());
        return false;
      }
      train_s.push_back(SecondsSince(start));
      hash = tokenizer->Hash();
      // The first pass starts with an empty piece cache; the second shows the steady state.
      if (!TimeEncode(*tokenizer, texts, &ours_pass)) return false;
      cold.push_back(ours_pass.mb_per_s);
      Pass again;
      if (!TimeEncode(*tokenizer, texts, &again)) return false;
      warm.push_back(again.mb_per_s);
      return true;
    };
    auto run_gpt2 = [&]() -> bool {
      if (!with_gpt2) return true;
      auto start = Clock::now();
      auto gpt2 = rag::lm::Tokenizer::LoadGpt2(encoder, bpe);
      if (!gpt2.ok()) {
        std::fprintf(stderr, "%s\n", gpt2.status().ToString().c_str());
        return false;
      }
      gpt2_load_s.push_back(SecondsSince(start));
      if (!TimeEncode(*gpt2, texts, &gpt2_pass)) return false;
      gpt2_cold.push_back(gpt2_pass.mb_per_s);
      return true;
    };
    const bool ok = r % 2 == 0 ? run_ours() && run_gpt2() : run_gpt2() && run_ours();
    if (!ok) return 1;
    std::printf("round %lld: train %.3f s, encode cold %.2f MB/s, warm %.2f MB/s", static_cast<long long>(r),
                train_s.back(), cold.back(), warm.back());
    if (with_gpt2) std::printf(", gpt2 cold %.2f MB/s", gpt2_cold.back());
    std::printf("\n");
  }

  using rag::bench::Median;
  std::printf("median of %lld rounds:\n", static_cast<long long>(rounds));
  std::printf("train: %.3f s for vocab %d, hash %s (target < 60 s)\n", Median(train_s), options.vocab_size,
              hash.c_str());
  std::printf("encode (ours, cold cache): %.2f MB/s (%.3f bytes/token)\n", Median(cold), ours_pass.bytes_per_token);
  std::printf("encode (ours, warm cache): %.2f MB/s\n", Median(warm));
  if (with_gpt2) {
    std::printf("encode (gpt2, cold cache): %.2f MB/s (%.3f bytes/token), load %.3f s\n", Median(gpt2_cold),
                gpt2_pass.bytes_per_token, Median(gpt2_load_s));
  }
  const bool pass = Median(cold) >= 5.0 && Median(train_s) < 60.0;
  std::printf("encode: %.1f MB/s (target >= 5) %s\n", Median(cold), pass ? "PASS" : "FAIL");

  if (!out_path.empty()) {
    nlohmann::json report = {
        {"bench", "bench_tokenizer"},
        {"machine", rag::bench::MachineJson()},
        {"rounds", rounds},
        {"inputs", {{"corpus", corpus_path}, {"documents", texts.size()}, {"bytes", total_bytes},
                    {"vocab_size", options.vocab_size}, {"gpt2_dir", with_gpt2 ? gpt2_dir : ""}}},
        {"ours", {{"hash", hash}, {"train_s", rag::bench::RoundsJson(train_s)},
                  {"encode_cold_mb_per_s", rag::bench::RoundsJson(cold)},
                  {"encode_warm_mb_per_s", rag::bench::RoundsJson(warm)},
                  {"bytes_per_token", ours_pass.bytes_per_token}}},
        {"gpt2", nullptr},
        {"pass", pass}};
    if (with_gpt2) {
      report["gpt2"] = {{"load_s", rag::bench::RoundsJson(gpt2_load_s)},
                        {"encode_cold_mb_per_s", rag::bench::RoundsJson(gpt2_cold)},
                        {"bytes_per_token", gpt2_pass.bytes_per_token}};
    }
    if (!rag::bench::WriteJson(out_path, report)) {
      std::fprintf(stderr, "cannot write %s\n", out_path.c_str());
      return 1;
    }
  }
  return pass ? 0 : 2;
}

// Tokenizer speed gate: trains a 4096-token BPE on the corpus and measures
// single-threaded encode throughput over all of its text.
//
//   bench_tokenizer [corpus.jsonl] [gpt2_dir]
//
// corpus.jsonl: one {"id", "genre", "text"} object per line
// (default data/brown/brown.jsonl). gpt2_dir (default data/gpt2): when it
// holds encoder.json and vocab.bpe, GPT-2's tokenizer is timed as well.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/file_util.h"
#include "lm/tokenizer.h"

namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Encodes every document once; prints throughput and checks the round trip
// (a fast tokenizer that loses bytes is no use).
bool TimeEncode(const rag::lm::Tokenizer& tokenizer, const std::vector<std::string>& texts, const char* label,
                double* mb_per_s) {
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
  double seconds = SecondsSince(start);
  *mb_per_s = static_cast<double>(bytes) / 1e6 / seconds;
  std::printf("%-28s %8.2f MB/s  (%zu bytes, %zu tokens, %.3f bytes/token, %.3f s)\n", label, *mb_per_s, bytes,
              tokens, static_cast<double>(bytes) / static_cast<double>(tokens), seconds);
  for (size_t i = 0; i < texts.size(); ++i) {
    auto decoded = tokenizer.Decode(encoded[i]);
    if (!decoded.ok() || *decoded != texts[i]) {
      std::fprintf(stderr, "round trip FAILED on document %zu\n", i);
      return false;
    }
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string corpus_path = argc > 1 ? argv[1] : "data/brown/brown.jsonl";
  const std::string gpt2_dir = argc > 2 ? argv[2] : "data/gpt2";

  auto corpus = rag::ReadFile(corpus_path);
  if (!corpus.ok()) {
    std::fprintf(stderr, "%s\n", corpus.status().ToString().c_str());
    return 1;
  }
  std::vector<std::string> texts;
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
      std::fprintf(stderr, "%s:%d: expected a JSON object with a string 'text'\n", corpus_path.c_str(), line_number);
      return 1;
    }
    texts.push_back(doc["text"].get<std::string>());
  }
  size_t total_bytes = 0;
  for (const auto& t : texts) total_bytes += t.size();
  std::printf("corpus: %s, %zu documents, %.2f MB of text\n", corpus_path.c_str(), texts.size(),
              static_cast<double>(total_bytes) / 1e6);

  rag::lm::TokenizerTrainOptions options;
  options.vocab_size = 4096;
  options.show_progress = true;
  auto start = Clock::now();
  auto tokenizer = rag::lm::Tokenizer::Train(texts, options);
  double train_seconds = SecondsSince(start);
  if (!tokenizer.ok()) {
    std::fprintf(stderr, "training failed: %s\n", tokenizer.status().ToString().c_str());
    return 1;
  }
  std::printf("train: %.2f s for vocab %d (%d merges), hash %s (target < 20 s)\n", train_seconds,
              tokenizer->vocab_size(), tokenizer->num_merges(), tokenizer->Hash().c_str());

  // First pass starts with an empty piece cache (what a fresh process
  // sees); the second shows the steady state.
  double cold = 0, warm = 0;
  if (!TimeEncode(*tokenizer, texts, "encode (ours, cold cache):", &cold)) return 1;
  if (!TimeEncode(*tokenizer, texts, "encode (ours, warm cache):", &warm)) return 1;

  const std::string encoder = gpt2_dir + "/encoder.json";
  const std::string bpe = gpt2_dir + "/vocab.bpe";
  if (std::filesystem::exists(encoder) && std::filesystem::exists(bpe)) {
    start = Clock::now();
    auto gpt2 = rag::lm::Tokenizer::LoadGpt2(encoder, bpe);
    if (!gpt2.ok()) {
      std::fprintf(stderr, "%s\n", gpt2.status().ToString().c_str());
      return 1;
    }
    std::printf("gpt2 load: %.3f s\n", SecondsSince(start));
    double gpt2_cold = 0;
    if (!TimeEncode(*gpt2, texts, "encode (gpt2, cold cache):", &gpt2_cold)) return 1;
  }

  std::printf("encode: %.1f MB/s (target >= 5)\n", cold);
  return cold >= 5.0 && train_seconds < 60.0 ? 0 : 2;
}

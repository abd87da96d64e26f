// A loaded GPT-2 checkpoint against the same-shaped native model, measured in
// one run (issue 21 target: "the forward of a loaded GPT-2 runs within 10% of
// the same-shaped native model's forward, and memory stays at one copy of the
// weights").
//
// Arms. Both are our own lm::TransformerLM:
//   hf      lm::hf::LoadHfCheckpoint(--hf-dir): learned positions, gelu_tanh
//           (gelu_new), output tied to wte, weights read from safetensors;
//   native  a TransformerConfig of the same shape (vocab, context, d_model,
//           n_layers, n_heads, d_ff) with our defaults otherwise (rotary
//           positions, erf gelu, tied output), randomly initialised.
//
// Measurements.
//   memory   RssAnon growth across LoadHfCheckpoint over the parameter bytes
//            (numel * 4): ~1.0 is one copy of the weights. The safetensors
//            mapping is released after loading (it would show as RssFile,
//            page cache anyway). ConfigureRuntime keeps freed blocks in the
//            malloc heap, so growth is also shown after malloc_trim(0): the
//            first figure includes the loader's freed temporaries, the second
//            only live memory. The native model's growth is measured the same way.
//   forward  for each --tokens length T, ForwardHidden + Logits over all T
//            positions of [--batch, T] random ids (the scoring path) under
//            torch::NoGradGuard; one warm-up call per arm first; each round
//            runs every T with both arms alternated (hf, native, hf, native,
//            ...), the order flipped every other round. Per arm the median
//            and min seconds and tokens/s; ratio = native_s / hf_s (medians),
//            >= 0.909 means the loaded model is within 10%.
//   decode   a --decode-prompt token prompt, then --decode-tokens tokens one
//            at a time through a KVCache, logits of the last position only
//            (as lm/generator.cc does); same alternation; the ratio is on the
//            decode steps, the prompt's time is reported alongside.
// stdout gets a readable table; --out gets every raw per-round timing, the
// machine, the shapes and the memory figures as JSON. Exit status 0 when all
// targets are met, 1 when one is missed or on an error.
//
// How to run (a GPT-2 small-shaped checkpoint, 124M parameters, random
// weights: the speed and memory of a real one without downloading it; the
// GPT-2 vocabulary in data/gpt2 comes from scripts/prepare_corpus.sh):
//
//   /usr/bin/python3 tests/hf/make_hf_checkpoint.py --arch gpt2 --layers 12 --width 768 --heads 12
//       --ffn 3072 --context 1024 --tokenizer none --out /tmp/gpt2-small --gpt2-vocab data/gpt2   (one line)
//   build/bench/bench_hf_forward --hf-dir /tmp/gpt2-small [--batch 1] [--tokens 256,1024] [--rounds 5]
//       [--decode-prompt 256] [--decode-tokens 64 (0: skip)] [--threads N (default: LibTorch's own)]
//       [--out results.json]
//
// Run it on an otherwise idle machine; the ratio, not the absolute speed, is
// the figure docs/results.md reports.
#include <malloc.h>
#include <torch/torch.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "bench/proc_status.h"
#include "lm/hf/pretrained.h"
#include "lm/model_config.h"
#include "lm/runtime.h"
#include "lm/transformer_lm.h"

namespace {

using json = nlohmann::json;

constexpr double kTargetRatio = 1.0 / 1.1;   // native_s / hf_s: the loaded model at most 10% slower
constexpr double kTargetMemoryRatio = 1.10;  // live RssAnon growth / parameter bytes

double Seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// "256,1024" -> {256, 1024}; false on an empty list or a non-positive or
// non-numeric entry.
bool ParsePositiveList(const std::string& csv, std::vector<int64_t>* out) {
  size_t start = 0;
  while (start <= csv.size()) {
    const size_t comma = std::min(csv.find(',', start), csv.size());
    int64_t v = 0;
    if (!absl::SimpleAtoi(csv.substr(start, comma - start), &v) || v <= 0) return false;
    out->push_back(v);
    start = comma + 1;
  }
  return !out->empty();
}

int Fail(const std::string& what) {
  std::fprintf(stderr, "bench_hf_forward: %s\n", what.c_str());
  return 1;
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double Min(const std::vector<double>& v) { return v.empty() ? 0 : *std::min_element(v.begin(), v.end()); }

// Parameter bytes, each storage counted once (a tied output adds nothing).
double ParameterBytes(const torch::nn::Module& m, int64_t* numel) {
  std::set<const void*> seen;
  double bytes = 0;
  *numel = 0;
  for (const auto& p : m.parameters()) {
    if (!seen.insert(p.data_ptr()).second) continue;
    *numel += p.numel();
    bytes += static_cast<double>(p.numel()) * static_cast<double>(p.element_size());
  }
  return bytes;
}

double BufferBytes(const torch::nn::Module& m) {
  double bytes = 0;
  for (const auto& b : m.buffers()) bytes += static_cast<double>(b.numel()) * static_cast<double>(b.element_size());
  return bytes;
}

// RssAnon around building one arm's model.
struct MemoryFigures {
  double anon_before = 0, anon_after = 0, anon_after_trim = 0;
  double file_before = 0, file_after = 0;
  double parameter_bytes = 0, buffer_bytes = 0;
  int64_t parameters = 0;
  double Growth() const { return anon_after - anon_before; }
  double GrowthTrimmed() const { return anon_after_trim - anon_before; }
  double Ratio() const { return parameter_bytes > 0 ? Growth() / parameter_bytes : 0; }
  double RatioTrimmed() const { return parameter_bytes > 0 ? GrowthTrimmed() / parameter_bytes : 0; }
  json ToJson() const {
    return {{"rss_anon_before", anon_before},         {"rss_anon_after", anon_after},
            {"rss_anon_after_trim", anon_after_trim}, {"rss_file_before", file_before},
            {"rss_file_after", file_after},           {"parameters", parameters},
            {"parameter_bytes", parameter_bytes},     {"buffer_bytes", buffer_bytes},
            {"growth_over_parameter_bytes", Ratio()}, {"growth_after_trim_over_parameter_bytes", RatioTrimmed()}};
  }
};

template <typename Build>
MemoryFigures MeasureMemory(Build&& build) {
  MemoryFigures m;
  malloc_trim(0);
  m.anon_before = rag::bench::ProcStatusBytes("RssAnon:");
  m.file_before = rag::bench::ProcStatusBytes("RssFile:");
  build();
  m.anon_after = rag::bench::ProcStatusBytes("RssAnon:");
  m.file_after = rag::bench::ProcStatusBytes("RssFile:");
  malloc_trim(0);
  m.anon_after_trim = rag::bench::ProcStatusBytes("RssAnon:");
  return m;
}

// One workload (a forward length or the decode) timed on both arms.
struct Timings {
  std::string label;
  int64_t tokens_per_call = 0;                   // tokens the timed part processes (B * T, or B * decode tokens)
  std::vector<double> hf, native;                // seconds per round, timed part
  std::vector<double> hf_prompt, native_prompt;  // decode only: the prompt's seconds per round
  std::vector<bool> hf_first;                    // per round: which arm ran first
  double Ratio() const { return Median(hf) > 0 ? Median(native) / Median(hf) : 0; }
  double RatioMin() const { return Min(hf) > 0 ? Min(native) / Min(hf) : 0; }
  json ArmJson(const std::vector<double>& s, const std::vector<double>& prompt) const {
    json j = {{"seconds", s},
              {"median_s", Median(s)},
              {"min_s", Min(s)},
              {"tokens_per_s_median", Median(s) > 0 ? static_cast<double>(tokens_per_call) / Median(s) : 0},
              {"tokens_per_s_best", Min(s) > 0 ? static_cast<double>(tokens_per_call) / Min(s) : 0}};
    if (!prompt.empty()) {
      j["prompt_seconds"] = prompt;
      j["prompt_median_s"] = Median(prompt);
    }
    return j;
  }
  json ToJson() const {
    return {{"label", label},
            {"tokens_per_call", tokens_per_call},
            {"hf_first", hf_first},
            {"hf", ArmJson(hf, hf_prompt)},
            {"native", ArmJson(native, native_prompt)},
            {"ratio_native_over_hf_median", Ratio()},
            {"ratio_native_over_hf_min", RatioMin()},
            {"meets_target", Ratio() >= kTargetRatio}};
  }
};

// ForwardHidden + Logits over every position: [B, T] -> [B, T, V].
double TimeForward(rag::lm::TransformerLM& model, const torch::Tensor& ids) {
  torch::NoGradGuard no_grad;
  const auto t0 = std::chrono::steady_clock::now();
  torch::Tensor logits = model->Logits(model->ForwardHidden(ids));
  const double s = Seconds(t0);
  TORCH_CHECK(logits.size(2) == model->config().vocab_size, "logits: expected V ", model->config().vocab_size, ", got ",
              logits.sizes());
  return s;
}

// Prompt [B, P] through a fresh KVCache, then `steps` ids [B, steps] fed one
// column at a time, logits of the newest position only. Returns the decode
// steps' seconds; *prompt_s gets the prompt's.
double TimeDecode(rag::lm::TransformerLM& model, const torch::Tensor& prompt, const torch::Tensor& steps,
                  double* prompt_s) {
  torch::NoGradGuard no_grad;
  rag::lm::KVCache cache;
  auto t0 = std::chrono::steady_clock::now();
  torch::Tensor hidden = model->ForwardHidden(prompt, &cache);  // [B, P, D]
  torch::Tensor logits = model->Logits(hidden.narrow(1, hidden.size(1) - 1, 1));
  *prompt_s = Seconds(t0);
  t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < steps.size(1); ++i) {
    hidden = model->ForwardHidden(steps.narrow(1, i, 1), &cache);  // [B, 1, D]
    logits = model->Logits(hidden);                                // [B, 1, V]
  }
  const double s = Seconds(t0);
  TORCH_CHECK(cache.length() == prompt.size(1) + steps.size(1), "cache: expected ", prompt.size(1) + steps.size(1),
              " tokens, got ", cache.length());
  return s;
}

std::string CpuModel() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      return colon == std::string::npos ? line : line.substr(std::min(line.size(), colon + 2));
    }
  }
  return "";
}

std::string TorchVersion() {
#if defined(TORCH_VERSION_MAJOR) && defined(TORCH_VERSION_MINOR) && defined(TORCH_VERSION_PATCH)
  return std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
         std::to_string(TORCH_VERSION_PATCH);
#else
  return "unknown";
#endif
}

json ConfigJson(const rag::lm::TransformerConfig& c) {
  return {{"vocab_size", c.vocab_size},
          {"context", c.context},
          {"d_model", c.d_model},
          {"n_layers", c.n_layers},
          {"n_heads", c.n_heads},
          {"d_ff", c.d_ff},
          {"positions", c.positions},
          {"activation", c.activation},
          {"tie_embeddings", c.tie_embeddings},
          {"parallel_residual", c.parallel_residual}};
}

double MiB(double bytes) { return bytes / (1024.0 * 1024.0); }

}  // namespace

int main(int argc, char** argv) {
  rag::lm::RestartWithPassiveOpenMP(argv);  // as `rag` runs
  std::string hf_dir, tokens_csv = "256,1024", out_path;
  int64_t batch = 1, rounds = 5, decode_prompt = 256, decode_tokens = 64;
  int threads = 0;
  CLI::App app{"bench_hf_forward: a loaded GPT-2 checkpoint against the same-shaped native model (speed, memory)"};
  app.add_option("--hf-dir", hf_dir, "Hugging Face GPT-2-layout model directory")->required();
  app.add_option("--batch", batch, "sequences per forward")->capture_default_str();
  app.add_option("--tokens", tokens_csv, "comma-separated forward lengths T")->capture_default_str();
  app.add_option("--rounds", rounds, "alternated rounds (median and min over them)")->capture_default_str();
  app.add_option("--decode-prompt", decode_prompt, "prompt tokens before the cached decode")->capture_default_str();
  app.add_option("--decode-tokens", decode_tokens, "tokens decoded one at a time (0: skip the decode)")
      ->capture_default_str();
  app.add_option("--threads", threads, "LibTorch intra-op threads (default: LibTorch's own choice)");
  app.add_option("--out", out_path, "JSON file for the raw timings, machine, shapes and memory figures");
  CLI11_PARSE(app, argc, argv);

  std::vector<int64_t> lengths;
  if (!ParsePositiveList(tokens_csv, &lengths))
    return Fail("--tokens: expected positive integers like 256,1024, got '" + tokens_csv + "'");
  if (batch <= 0) return Fail("--batch: expected > 0, got " + std::to_string(batch));
  if (rounds <= 0) return Fail("--rounds: expected > 0, got " + std::to_string(rounds));
  if (decode_tokens < 0 || (decode_tokens > 0 && decode_prompt <= 0)) {
    return Fail("--decode-tokens must be >= 0 and --decode-prompt > 0 when decoding");
  }
  // The product's malloc settings (freed blocks stay in the heap); LibTorch's
  // thread count only when --threads is given.
  rag::lm::ConfigureRuntime(threads > 0 ? threads : torch::get_num_threads());
  threads = torch::get_num_threads();
  torch::manual_seed(1);
  (void)torch::ones({8}).sum().item<float>();  // LibTorch's lazy start-up, outside the memory figures

  // Memory: the loaded checkpoint first, on a quiet heap.
  rag::lm::hf::HfCheckpoint ck;
  absl::Status load_status;
  MemoryFigures hf_mem = MeasureMemory([&] {
    auto loaded = rag::lm::hf::LoadHfCheckpoint(hf_dir);
    if (!loaded.ok()) {
      load_status = loaded.status();
      return;
    }
    ck = std::move(*loaded);
  });
  if (!load_status.ok()) return Fail(load_status.ToString());
  if (ck.model_type != "gpt2") return Fail("'" + hf_dir + "': model_type is '" + ck.model_type + "', expected gpt2");
  rag::lm::TransformerLM hf = ck.module;
  hf_mem.parameter_bytes = ParameterBytes(*hf, &hf_mem.parameters);
  hf_mem.buffer_bytes = BufferBytes(*hf);

  rag::lm::TransformerConfig native_config;  // our defaults: rotary positions, erf gelu, tied output
  native_config.vocab_size = ck.config.vocab_size;
  native_config.context = ck.config.context;
  native_config.d_model = ck.config.d_model;
  native_config.n_layers = ck.config.n_layers;
  native_config.n_heads = ck.config.n_heads;
  native_config.d_ff = ck.config.d_ff;
  native_config.layer_norm_eps = ck.config.layer_norm_eps;
  if (auto s = native_config.Validate(); !s.ok()) return Fail("native config: " + s.ToString());
  rag::lm::TransformerLM native{nullptr};
  MemoryFigures native_mem = MeasureMemory([&] {
    torch::NoGradGuard no_grad;
    native = rag::lm::TransformerLM(native_config);
  });
  native->eval();
  native_mem.parameter_bytes = ParameterBytes(*native, &native_mem.parameters);
  native_mem.buffer_bytes = BufferBytes(*native);

  const int64_t context = ck.config.context, vocab = ck.config.vocab_size;
  for (int64_t t : lengths) {
    if (t > context)
      return Fail("--tokens " + std::to_string(t) + " exceeds the model's context " + std::to_string(context));
  }
  if (decode_tokens > 0 && decode_prompt + decode_tokens > context) {
    return Fail("--decode-prompt + --decode-tokens = " + std::to_string(decode_prompt + decode_tokens) +
                " exceeds the model's context " + std::to_string(context));
  }

  std::printf("bench_hf_forward: %s (%s, stored %s): V %lld, context %lld, D %lld, %lld layers, %lld heads, F %lld\n",
              hf_dir.c_str(), ck.model_type.c_str(), ck.stored_dtype.c_str(), static_cast<long long>(vocab),
              static_cast<long long>(context), static_cast<long long>(ck.config.d_model),
              static_cast<long long>(ck.config.n_layers), static_cast<long long>(ck.config.n_heads),
              static_cast<long long>(ck.config.d_ff));
  std::printf(
      "hf: %lld params (%s positions, %s); native: %lld params (%s positions, %s); batch %lld, %d threads, %u cores, "
      "LibTorch %s\n\n",
      static_cast<long long>(hf_mem.parameters), ck.config.positions.c_str(), ck.config.activation.c_str(),
      static_cast<long long>(native_mem.parameters), native_config.positions.c_str(), native_config.activation.c_str(),
      static_cast<long long>(batch), threads, std::thread::hardware_concurrency(), TorchVersion().c_str());

  // Same ids for both arms, drawn once.
  std::vector<torch::Tensor> forward_ids;
  std::vector<Timings> rows;
  for (int64_t t : lengths) {
    forward_ids.push_back(torch::randint(0, vocab, {batch, t}, torch::kLong));
    Timings row;
    row.label = "forward T " + std::to_string(t);
    row.tokens_per_call = batch * t;
    rows.push_back(row);
  }
  torch::Tensor prompt, steps;
  Timings decode;
  if (decode_tokens > 0) {
    prompt = torch::randint(0, vocab, {batch, decode_prompt}, torch::kLong);
    steps = torch::randint(0, vocab, {batch, decode_tokens}, torch::kLong);
    decode.label = "decode " + std::to_string(decode_tokens) + " after " + std::to_string(decode_prompt);
    decode.tokens_per_call = batch * decode_tokens;
  }

  try {
    // Warm-up: one call per arm and workload (allocator pools, thread pools).
    for (auto* arm : {&hf, &native}) {
      for (const auto& ids : forward_ids) TimeForward(*arm, ids);
      double ignored = 0;
      if (decode_tokens > 0) TimeDecode(*arm, prompt, steps, &ignored);
    }
    for (int64_t r = 0; r < rounds; ++r) {
      const bool hf_first = r % 2 == 0;  // flipped every other round: neither arm always runs on a warmer cache
      for (size_t i = 0; i < rows.size(); ++i) {
        rows[i].hf_first.push_back(hf_first);
        for (int k = 0; k < 2; ++k) {
          const bool run_hf = (k == 0) == hf_first;
          (run_hf ? rows[i].hf : rows[i].native).push_back(TimeForward(run_hf ? hf : native, forward_ids[i]));
        }
      }
      if (decode_tokens > 0) {
        decode.hf_first.push_back(hf_first);
        for (int k = 0; k < 2; ++k) {
          const bool run_hf = (k == 0) == hf_first;
          double prompt_s = 0;
          const double s = TimeDecode(run_hf ? hf : native, prompt, steps, &prompt_s);
          (run_hf ? decode.hf : decode.native).push_back(s);
          (run_hf ? decode.hf_prompt : decode.native_prompt).push_back(prompt_s);
        }
      }
    }
  } catch (const c10::Error& e) {
    return Fail(std::string("forward failed: ") + e.what_without_backtrace());
  } catch (const std::exception& e) {
    return Fail(std::string("forward failed: ") + e.what());
  }
  if (decode_tokens > 0) rows.push_back(decode);

  bool pass = true;
  std::printf("%-26s %10s %10s %12s %10s %10s %12s %9s %9s\n", "workload", "hf med s", "hf min s", "hf tok/s",
              "nat med s", "nat min s", "nat tok/s", "ratio", "ratio min");
  for (const auto& row : rows) {
    const double hf_med = Median(row.hf), nat_med = Median(row.native);
    std::printf("%-26s %10.4f %10.4f %12.1f %10.4f %10.4f %12.1f %9.3f %9.3f %s\n", row.label.c_str(), hf_med,
                Min(row.hf), static_cast<double>(row.tokens_per_call) / hf_med, nat_med, Min(row.native),
                static_cast<double>(row.tokens_per_call) / nat_med, row.Ratio(), row.RatioMin(),
                row.Ratio() >= kTargetRatio ? "PASS" : "FAIL");
    pass = pass && row.Ratio() >= kTargetRatio;
  }
  if (decode_tokens > 0) {
    std::printf("(decode prompt of %lld tokens, median: hf %.4f s, native %.4f s)\n",
                static_cast<long long>(decode_prompt), Median(decode.hf_prompt), Median(decode.native_prompt));
  }
  std::printf("ratio = native s / hf s over %lld rounds (medians); target >= %.3f (hf within 10%%)\n\n",
              static_cast<long long>(rounds), kTargetRatio);

  const bool memory_ok = hf_mem.RatioTrimmed() <= kTargetMemoryRatio;
  std::printf("memory: %-8s %10s %14s %12s %14s %12s %12s\n", "arm", "params MiB", "RssAnon +MiB", "/ params",
              "after trim MiB", "/ params", "RssFile +MiB");
  auto print_memory = [](const char* name, const MemoryFigures& m) {
    std::printf("        %-8s %10.1f %14.1f %12.3f %14.1f %12.3f %12.1f\n", name, MiB(m.parameter_bytes),
                MiB(m.Growth()), m.Ratio(), MiB(m.GrowthTrimmed()), m.RatioTrimmed(),
                MiB(m.file_after - m.file_before));
  };
  print_memory("hf", hf_mem);
  print_memory("native", native_mem);
  std::printf("loaded model's live RssAnon growth / parameter bytes: %.3f (one copy of the weights: <= %.2f): %s\n",
              hf_mem.RatioTrimmed(), kTargetMemoryRatio, memory_ok ? "PASS" : "FAIL");
  pass = pass && memory_ok;

  if (!out_path.empty()) {
    json rows_json = json::array();
    for (const auto& row : rows) rows_json.push_back(row.ToJson());
    json out = {{"bench", "bench_hf_forward"},
                {"hf_dir", hf_dir},
                {"machine",
                 {{"threads", threads},
                  {"hardware_concurrency", std::thread::hardware_concurrency()},
                  {"nproc_online", ::sysconf(_SC_NPROCESSORS_ONLN)},
                  {"cpu", CpuModel()},
                  {"torch_version", TorchVersion()}}},
                {"shapes",
                 {{"batch", batch},
                  {"tokens", lengths},
                  {"decode_prompt", decode_prompt},
                  {"decode_tokens", decode_tokens},
                  {"hf", ConfigJson(ck.config)},
                  {"native", ConfigJson(native_config)}}},
                {"hf_checkpoint",
                 {{"model_type", ck.model_type}, {"stored_dtype", ck.stored_dtype}, {"weight_files", ck.weight_files}}},
                {"rounds", rounds},
                {"target_ratio", kTargetRatio},
                {"target_memory_ratio", kTargetMemoryRatio},
                {"timings", rows_json},
                {"memory", {{"hf", hf_mem.ToJson()}, {"native", native_mem.ToJson()}, {"meets_target", memory_ok}}},
                {"pass", pass}};
    std::ofstream f(out_path);
    f << out.dump(2) << "\n";
    f.close();
    if (!f) return Fail("cannot write '" + out_path + "'");
    std::printf("raw timings written to %s\n", out_path.c_str());
  }
  return pass ? 0 : 1;
}

// Trainer throughput against a bare LibTorch loop doing the same work per
// step: zero_grad, forward, cross-entropy, backward and an AdamW step with
// the trainer's hyper-parameters, on the same model and batch shape (issue
// 24 target: ratio >= 0.95). What the trainer adds on top is its own: batch
// sampling, the learning-rate schedule, gradient clipping, the bookkeeping.
// --rounds rounds, the two sides' order flipped every round, the ratio taken
// within each round; median over rounds; JSON with each round to --out.
//
//   build/bench/bench_trainer [--preset small] [--batch 16] [--seq 128] [--steps 8] [--rounds 5] [--threads N]
//       [--out bench/results/trainer.json]
#include <torch/torch.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_report.h"
#include "lm/runtime.h"
#include "lm/trainer.h"

namespace {

double Seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  rag::lm::RestartWithPassiveOpenMP(argv);  // as `rag` runs
  std::string preset = "small";
  int64_t batch = 16, seq = 128, steps = 8, rounds = 5, vocab = 4096;
  std::string out_path;
  int threads = 0;
  CLI::App app{"bench_trainer: Trainer::Step against a bare LibTorch forward+backward of the same model and batch"};
  app.add_option("--preset", preset, "model preset")->capture_default_str();
  app.add_option("--batch", batch, "sequences per batch")->capture_default_str();
  app.add_option("--seq", seq, "tokens per sequence")->capture_default_str();
  app.add_option("--steps", steps, "steps per side in each round")->capture_default_str();
  app.add_option("--rounds", rounds, "alternated rounds (median over them)")->capture_default_str();
  app.add_option("--out", out_path, "JSON file for each round's figures");
  app.add_option("--threads", threads, "LibTorch intra-op threads (0: lm::DefaultThreads(), by BLAS build)")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  rag::lm::ConfigureRuntime(threads);
  auto config = rag::lm::TransformerConfig::Preset(preset);
  if (!config.ok()) { std::fprintf(stderr, "%s\n", config.status().ToString().c_str()); return 2; }
  config->vocab_size = vocab;

  rag::lm::TrainingData data;
  std::mt19937 rng(1);
  for (int i = 0; i < 400000; ++i) data.train.push_back(static_cast<int32_t>(rng() % vocab));
  rag::lm::TrainerOptions opts;
  opts.steps = 1000000;
  opts.batch_size = batch;
  opts.seq_len = seq;
  opts.checkpoint_every = 0;
  opts.eval_every = 0;
  opts.show_progress = false;
  auto trainer = rag::lm::Trainer::Create(*config, opts, data, "/tmp/bench_trainer_unused.pt", false);
  if (!trainer.ok()) { std::fprintf(stderr, "%s\n", trainer.status().ToString().c_str()); return 1; }

  // Bare reference: the same architecture and batch shape, the same
  // optimizer step; a fixed batch (sampling one is the trainer's work).
  torch::manual_seed(1);
  rag::lm::TransformerLM bare(*config);
  bare->train();
  torch::optim::AdamW optimizer(bare->parameters(), torch::optim::AdamWOptions(opts.lr)
                                                        .betas({opts.beta1, opts.beta2})
                                                        .weight_decay(opts.weight_decay));
  auto fixed = (*trainer)->BatchForStep(0);
  auto inputs = fixed.narrow(1, 0, seq), targets = fixed.narrow(1, 1, seq);
  auto bare_step = [&] {
    optimizer.zero_grad();
    auto logits = bare->forward(inputs);
    auto loss = torch::nn::functional::cross_entropy(logits.view({-1, logits.size(-1)}), targets.reshape({-1}));
    loss.backward();
    optimizer.step();
  };
  bare_step();
  (*trainer)->Step();  // warm-up both

  std::vector<double> bare_s, trainer_s, ratio;
  for (int64_t r = 0; r < rounds; ++r) {
    for (int side = 0; side < 2; ++side) {
      const bool bare_side = (side + r) % 2 == 0;
      const auto t0 = std::chrono::steady_clock::now();
      for (int64_t i = 0; i < steps; ++i) {
        if (bare_side) {
          bare_step();
        } else {
          (*trainer)->Step();
        }
      }
      (bare_side ? bare_s : trainer_s).push_back(Seconds(t0));
    }
    ratio.push_back(bare_s.back() / trainer_s.back());
  }
  const double tokens = static_cast<double>(steps * batch * seq);
  const double med = rag::bench::Median(ratio);
  std::printf("model: preset %s, %lld params, batch %lld x %lld tokens, %d threads, %lld rounds of %lld steps\n",
              preset.c_str(), static_cast<long long>(bare->NumParameters()), static_cast<long long>(batch),
              static_cast<long long>(seq), threads, static_cast<long long>(rounds), static_cast<long long>(steps));
  std::printf("bare zero_grad+forward+backward+AdamW step: %.0f tokens/s (median)\n",
              tokens / rag::bench::Median(bare_s));
  std::printf("trainer step (batching, AdamW, clipping, LR schedule): %.0f tokens/s (median)\n",
              tokens / rag::bench::Median(trainer_s));
  const bool pass = med >= 0.95;
  std::printf("ratio trainer/bare: %.3f (rounds %.3f .. %.3f; target >= 0.95) %s\n", med,
              *std::min_element(ratio.begin(), ratio.end()), *std::max_element(ratio.begin(), ratio.end()),
              pass ? "PASS" : "FAIL");
  nlohmann::json report = {
      {"bench", "bench_trainer"},
      {"machine", rag::bench::MachineJson()},
      {"threads", threads},
      {"rounds", rounds},
      {"inputs", {{"preset", preset}, {"parameters", bare->NumParameters()}, {"batch", batch}, {"seq", seq},
                  {"steps_per_round", steps}}},
      {"bare_s", rag::bench::RoundsJson(bare_s)},
      {"trainer_s", rag::bench::RoundsJson(trainer_s)},
      {"ratio_trainer_over_bare", rag::bench::RoundsJson(ratio)},
      {"tokens_per_round", tokens},
      {"pass", pass}};
  if (!out_path.empty() && !rag::bench::WriteJson(out_path, report)) {
    std::fprintf(stderr, "cannot write %s\n", out_path.c_str());
    return 1;
  }
  return pass ? 0 : 1;
}

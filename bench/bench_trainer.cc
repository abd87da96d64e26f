// Trainer throughput against a bare LibTorch forward+backward of the same
// model and batch, measured in one run (issue 2 target: ratio >= 0.90).
//
//   build/bench/bench_trainer [--preset small] [--batch 16] [--seq 128] [--steps 8] [--rounds 3] [--threads N]
#include <torch/torch.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <thread>

#include "lm/runtime.h"
#include "lm/trainer.h"

namespace {

double Seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  std::string preset = "small";
  int64_t batch = 16, seq = 128, steps = 8, rounds = 3, vocab = 4096;
  int threads = rag::lm::kDefaultThreads;
  CLI::App app{"bench_trainer: Trainer::Step against a bare LibTorch forward+backward of the same model and batch"};
  app.add_option("--preset", preset, "model preset")->capture_default_str();
  app.add_option("--batch", batch, "sequences per batch")->capture_default_str();
  app.add_option("--seq", seq, "tokens per sequence")->capture_default_str();
  app.add_option("--steps", steps, "steps per side in each round")->capture_default_str();
  app.add_option("--rounds", rounds, "interleaved rounds")->capture_default_str();
  app.add_option("--threads", threads, "LibTorch intra-op threads")->capture_default_str();
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

  // Bare reference: the same architecture, a fixed batch, forward + loss + backward only.
  torch::manual_seed(1);
  rag::lm::TransformerLM bare(*config);
  bare->train();
  auto fixed = (*trainer)->BatchForStep(0);
  auto inputs = fixed.narrow(1, 0, seq), targets = fixed.narrow(1, 1, seq);
  auto bare_step = [&] {
    for (auto& p : bare->parameters()) p.mutable_grad() = torch::Tensor();
    auto logits = bare->forward(inputs);
    auto loss = torch::nn::functional::cross_entropy(logits.view({-1, logits.size(-1)}), targets.reshape({-1}));
    loss.backward();
  };
  bare_step();
  (*trainer)->Step();  // warm-up both

  double bare_s = 0, trainer_s = 0;
  for (int64_t r = 0; r < rounds; ++r) {  // interleaved rounds: drift hits both sides alike
    auto t0 = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < steps; ++i) bare_step();
    bare_s += Seconds(t0);
    t0 = std::chrono::steady_clock::now();
    for (int64_t i = 0; i < steps; ++i) (*trainer)->Step();
    trainer_s += Seconds(t0);
  }
  const double tokens = static_cast<double>(rounds * steps * batch * seq);
  const double bare_tps = tokens / bare_s, trainer_tps = tokens / trainer_s;
  std::printf("model: preset %s, %lld params, batch %lld x %lld tokens, %d threads\n", preset.c_str(),
              static_cast<long long>(bare->NumParameters()), static_cast<long long>(batch),
              static_cast<long long>(seq), threads);
  std::printf("bare forward+backward: %.0f tokens/s\n", bare_tps);
  std::printf("trainer step (batching, AdamW, clipping, LR schedule): %.0f tokens/s\n", trainer_tps);
  std::printf("ratio trainer/bare: %.3f (target >= 0.90) %s\n", trainer_tps / bare_tps,
              trainer_tps / bare_tps >= 0.90 ? "PASS" : "FAIL");
  return 0;
}

#include "lm/generator.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

#include "common/status.h"

namespace rag::lm {
namespace {

// splitmix64: a tiny, fully specified RNG, so a seed gives the same sample on
// every platform and standard library.
uint64_t NextRandom(uint64_t* state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

double Uniform(uint64_t* state) { return static_cast<double>(NextRandom(state) >> 11) * 0x1.0p-53; }

}  // namespace

absl::Status ValidateSamplingOptions(const SamplingOptions& options) {
  if (options.max_tokens < 0) return absl::InvalidArgumentError("max_tokens must be >= 0");
  if (!(options.top_p > 0 && options.top_p <= 1)) return absl::InvalidArgumentError("top_p must be in (0, 1]");
  if (options.top_k < 0) return absl::InvalidArgumentError("top_k must be >= 0");
  if (!std::isfinite(options.temperature) || options.temperature < 0) {
    return absl::InvalidArgumentError("temperature must be >= 0");
  }
  if (!std::isfinite(options.repetition_penalty) || options.repetition_penalty <= 0) {
    return absl::InvalidArgumentError("repetition_penalty must be > 0 (1 = off)");
  }
  if (options.no_repeat_ngram_size < 0) return absl::InvalidArgumentError("no_repeat_ngram_size must be >= 0 (0 = off)");
  return absl::OkStatus();
}

torch::Tensor ApplyRepetitionRules(const torch::Tensor& logits, const std::vector<TokenId>& history,
                                   const SamplingOptions& options) {
  const int64_t n = options.no_repeat_ngram_size;
  const bool penalty = options.repetition_penalty != 1.0 && !history.empty();
  const bool ngrams = n > 0 && static_cast<int64_t>(history.size()) + 1 >= n;
  if (!penalty && !ngrams) return logits;
  auto l = logits.to(torch::kFloat32).contiguous().clone();
  float* s = l.data_ptr<float>();
  const int64_t v = l.numel();
  if (penalty) {
    // Each distinct token once, however often it occurs.
    std::vector<TokenId> seen(history);
    std::sort(seen.begin(), seen.end());
    seen.erase(std::unique(seen.begin(), seen.end()), seen.end());
    const float r = static_cast<float>(options.repetition_penalty);
    for (TokenId t : seen) {
      if (t < 0 || t >= v) continue;
      s[t] = s[t] < 0 ? s[t] * r : s[t] / r;
    }
  }
  if (ngrams) {
    // Every n-gram of the history whose first n - 1 tokens are the last
    // n - 1 of the history bans its n-th token.
    const int64_t len = static_cast<int64_t>(history.size());
    const TokenId* tail = history.data() + (len - (n - 1));
    for (int64_t i = 0; i + n <= len; ++i) {
      if (!std::equal(tail, tail + (n - 1), history.data() + i)) continue;
      const TokenId banned = history[static_cast<size_t>(i + n - 1)];
      if (banned >= 0 && banned < v) s[banned] = -std::numeric_limits<float>::infinity();
    }
  }
  return l;
}

TokenId SampleToken(const torch::Tensor& logits, const SamplingOptions& options, uint64_t* rng_state,
                    const std::vector<TokenId>& history) {
  auto l = ApplyRepetitionRules(logits.to(torch::kFloat32), history, options);
  if (options.num_tokens > 0 && options.num_tokens < l.size(-1)) l = l.narrow(-1, 0, options.num_tokens);
  l = l.contiguous();
  if (options.temperature <= 0) return static_cast<TokenId>(l.argmax().item<int64_t>());
  auto probs = torch::softmax(l / options.temperature, -1);
  auto sorted = probs.sort(/*dim=*/-1, /*descending=*/true);
  auto p = std::get<0>(sorted).contiguous();
  auto idx = std::get<1>(sorted).contiguous();
  const float* pp = p.data_ptr<float>();
  const int64_t* ip = idx.data_ptr<int64_t>();
  int64_t keep = p.numel();
  if (options.top_k > 0) keep = std::min(keep, options.top_k);
  if (options.top_p < 1.0) {
    double mass = 0;
    for (int64_t i = 0; i < keep; ++i) {
      mass += pp[i];
      if (mass >= options.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  double total = 0;
  for (int64_t i = 0; i < keep; ++i) total += pp[i];
  double r = Uniform(rng_state) * total;
  for (int64_t i = 0; i < keep; ++i) {
    r -= pp[i];
    if (r <= 0) return static_cast<TokenId>(ip[i]);
  }
  return static_cast<TokenId>(ip[keep - 1]);
}

absl::StatusOr<std::vector<TokenId>> Generate(TransformerLM& model, const std::vector<TokenId>& prompt,
                                              TokenId eot, const SamplingOptions& options,
                                              const TokenCallback& on_token, const LogitsHook& logits_hook) {
  RAG_RETURN_IF_ERROR(ValidateSamplingOptions(options));
  const int64_t context = model->config().context;
  const int64_t vocab = model->config().vocab_size;
  for (TokenId t : prompt) {
    if (t < 0 || t >= vocab) return absl::InvalidArgumentError("prompt token id " + std::to_string(t) + " out of range");
  }
  torch::NoGradGuard no_grad;
  std::vector<int64_t> seq;  // everything so far, eot first
  seq.push_back(eot);
  seq.insert(seq.end(), prompt.begin(), prompt.end());
  std::vector<TokenId> generated;
  std::vector<TokenId> history(prompt);  // what the repetition rules look back on
  uint64_t rng = options.seed;

  KVCache cache;
  // Runs the model on seq[from..] (continuing the cache when used) and
  // returns next-token logits [V].
  auto logits_after = [&](int64_t from) {
    auto x = torch::tensor(std::vector<int64_t>(seq.begin() + from, seq.end()), torch::kLong).unsqueeze(0);
    auto hidden = model->ForwardHidden(x, options.use_cache ? &cache : nullptr);  // [1, T, D]
    auto last = hidden.narrow(1, hidden.size(1) - 1, 1);                          // [1, 1, D]
    auto logits = model->Logits(last).view({-1});                                 // [V]
    return logits_hook ? logits_hook(last.view({-1}), logits) : logits;
  };
  // Window start used when the sequence no longer fits the context: half a
  // context is dropped at once so the cache is rebuilt rarely.
  auto window_start = [&](int64_t keep) { return static_cast<int64_t>(seq.size()) - keep; };

  torch::Tensor logits;
  int64_t start = std::max<int64_t>(0, window_start(context));
  logits = logits_after(start);
  for (int64_t step = 0; step < options.max_tokens; ++step) {
    TokenId next = SampleToken(logits, options, &rng, history);
    generated.push_back(next);
    history.push_back(next);
    seq.push_back(next);
    if (on_token && !on_token(next)) break;
    if (options.stop_at_eot && next == eot) break;
    if (step + 1 == options.max_tokens) break;
    if (!options.use_cache) {
      logits = logits_after(std::max<int64_t>(0, window_start(context)));
    } else if (cache.length() + 1 > context) {
      cache.Clear();
      logits = logits_after(window_start(context / 2));
    } else {
      logits = logits_after(static_cast<int64_t>(seq.size()) - 1);
    }
  }
  return generated;
}

}  // namespace rag::lm

#include "lm/scorer.h"

#include <algorithm>

namespace rag::lm {
namespace {

struct Window {
  int64_t start;        // first input position in the bos-prefixed sequence
  int64_t length;       // inputs in the window
  int64_t first_new;    // offset inside the window of the first target to keep
};

}  // namespace

namespace {

// The sliding-window pass behind ScoreTokens and ScoreTokensWithHidden; the
// hidden states are collected only when `hidden_out` is set.
std::vector<float> ScoreWindows(TransformerLM& model, const std::vector<TokenId>& tokens, TokenId bos,
                                const ScoreOptions& options, torch::Tensor* hidden_out, bool logprobs = true,
                                std::vector<float>* entropy_out = nullptr) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  std::vector<float> out;
  if (n == 0) return out;
  std::vector<torch::Tensor> hidden_rows;
  out.reserve(tokens.size());
  const int64_t context = model->config().context;
  const int64_t stride = std::clamp<int64_t>(options.stride > 0 ? options.stride : context / 2, 1, context);

  // seq = [bos, tokens...]; input seq[j] predicts seq[j + 1].
  std::vector<int64_t> seq;
  seq.reserve(tokens.size() + 1);
  seq.push_back(bos);
  for (TokenId t : tokens) seq.push_back(t);

  std::vector<Window> windows;
  int64_t scored = 0;  // targets seq[1..scored] are done
  int64_t start = 0;
  while (scored < n) {
    int64_t end = std::min(start + context, n);  // inputs seq[start, end), targets seq[start+1, end]
    windows.push_back({start, end - start, scored - start});
    scored = end;
    start = end - (context - stride);
  }

  torch::NoGradGuard no_grad;
  auto seq_tensor = torch::tensor(seq, torch::kLong);
  size_t i = 0;
  while (i < windows.size()) {
    if (options.should_stop && options.should_stop()) break;
    // Batch consecutive windows of equal length (all but possibly the last).
    size_t j = i + 1;
    while (j < windows.size() && j - i < static_cast<size_t>(std::max<int64_t>(1, options.batch_windows)) &&
           windows[j].length == windows[i].length) {
      ++j;
    }
    const int64_t len = windows[i].length;
    std::vector<torch::Tensor> inputs, targets;
    for (size_t w = i; w < j; ++w) {
      inputs.push_back(seq_tensor.narrow(0, windows[w].start, len));
      targets.push_back(seq_tensor.narrow(0, windows[w].start + 1, len));
    }
    auto x = torch::stack(inputs);                        // [B, T]
    auto y = torch::stack(targets);                       // [B, T]
    auto hidden = model->ForwardHidden(x);  // [B, T, D]
    torch::Tensor picked, entropy;
    if (logprobs) {
      auto logp = torch::log_softmax(model->Logits(hidden), -1);                // [B, T, V]
      picked = logp.gather(-1, y.unsqueeze(-1)).squeeze(-1).contiguous();   // [B, T]
      if (entropy_out != nullptr) entropy = torch::special::entr(logp.exp()).sum(-1).contiguous();  // [B, T]
    }
    for (size_t w = i; w < j; ++w) {
      if (logprobs) {
        auto acc = picked.accessor<float, 2>();
        for (int64_t k = windows[w].first_new; k < len; ++k) out.push_back(acc[w - i][k]);
        if (entropy_out != nullptr) {
          auto ent = entropy.accessor<float, 2>();
          for (int64_t k = windows[w].first_new; k < len; ++k) entropy_out->push_back(ent[w - i][k]);
        }
      }
      if (hidden_out != nullptr) {
        hidden_rows.push_back(hidden[w - i].narrow(0, windows[w].first_new, len - windows[w].first_new));
      }
    }
    i = j;
  }
  if (hidden_out != nullptr) {
    *hidden_out = hidden_rows.empty() ? torch::zeros({0, model->config().d_model})
                                      : torch::cat(hidden_rows, 0).contiguous();
  }
  return out;
}

}  // namespace

std::vector<float> ScoreTokens(TransformerLM& model, const std::vector<TokenId>& tokens, TokenId bos,
                               const ScoreOptions& options) {
  return ScoreWindows(model, tokens, bos, options, nullptr);
}

torch::Tensor HiddenStates(TransformerLM& model, const std::vector<TokenId>& tokens, TokenId bos,
                           const ScoreOptions& options) {
  torch::Tensor hidden;
  ScoreWindows(model, tokens, bos, options, &hidden, /*logprobs=*/false);
  return hidden;
}

ScoredTokens ScoreTokensWithHidden(TransformerLM& model, const std::vector<TokenId>& tokens, TokenId bos,
                                   const ScoreOptions& options) {
  ScoredTokens r;
  r.logprobs = ScoreWindows(model, tokens, bos, options, &r.hidden, /*logprobs=*/true,
                            options.entropy ? &r.entropy : nullptr);
  return r;
}

torch::Tensor NextTokenLogProbs(TransformerLM& model, const std::vector<TokenId>& tokens, TokenId bos,
                                torch::Tensor* hidden_out) {
  const int64_t context = model->config().context;
  std::vector<int64_t> seq;
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n + 1 <= context) seq.push_back(bos);
  for (int64_t i = std::max<int64_t>(0, n - (context - static_cast<int64_t>(seq.size()))); i < n; ++i) {
    seq.push_back(tokens[i]);
  }
  torch::NoGradGuard no_grad;
  auto x = torch::tensor(seq, torch::kLong).unsqueeze(0);           // [1, T]
  auto hidden = model->ForwardHidden(x).select(1, x.size(1) - 1);  // [1, D]
  if (hidden_out != nullptr) *hidden_out = hidden.view({-1}).contiguous();
  return torch::log_softmax(model->Logits(hidden.unsqueeze(1)), -1).view({-1});  // [V]
}

}  // namespace rag::lm

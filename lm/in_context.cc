#include "lm/in_context.h"

#include <algorithm>

namespace rag::lm {

int64_t InContextWindowStart(int64_t block_end, int64_t passage_tokens, int64_t context) {
  return std::max<int64_t>(0, block_end - (context - passage_tokens));
}

namespace {

// [bos, tokens...]: input seq[j] predicts tokens[j].
std::vector<int64_t> WithBos(const std::vector<TokenId>& tokens, TokenId bos) {
  std::vector<int64_t> seq;
  seq.reserve(tokens.size() + 1);
  seq.push_back(bos);
  seq.insert(seq.end(), tokens.begin(), tokens.end());
  return seq;
}

// One block's forward input and the positions in it that predict its tokens.
struct Window {
  std::vector<int64_t> input;
  int64_t first_target = 0;  // input position predicting tokens[begin]
  int64_t begin = 0;
  int64_t end = 0;  // within the text
};

// The passage tokens a block of `block_tokens` leaves room for: its first
// ones when it is too long.
int64_t PassageFits(const std::vector<TokenId>& passage, int64_t block_tokens, int64_t context) {
  return std::max<int64_t>(0, std::min<int64_t>(static_cast<int64_t>(passage.size()), context - block_tokens));
}

Window MakeWindow(const std::vector<int64_t>& seq, const InContextBlock& block, int64_t context) {
  const int64_t n = static_cast<int64_t>(seq.size()) - 1;
  const int64_t p = PassageFits(block.passage, block.end - block.begin, context);
  const int64_t start = InContextWindowStart(block.end, p, context);
  Window w;
  w.begin = block.begin;
  w.end = std::min(block.end, n);
  w.input.assign(block.passage.begin(), block.passage.begin() + p);
  w.input.insert(w.input.end(), seq.begin() + start, seq.begin() + w.end);
  w.first_target = p + (block.begin - start);
  return w;
}

}  // namespace

std::vector<float> ScoreInContext(TransformerLM& model, const std::vector<TokenId>& tokens, TokenId bos,
                                  const std::vector<InContextBlock>& blocks, const InContextOptions& options) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  std::vector<float> out;
  out.reserve(tokens.size());
  if (n == 0) return out;
  const int64_t context = model->config().context;
  const std::vector<int64_t> seq = WithBos(tokens, bos);
  torch::NoGradGuard no_grad;
  const size_t batch = static_cast<size_t>(std::max<int64_t>(1, options.batch_windows));
  for (size_t i = 0; i < blocks.size() && blocks[i].begin < n; i += batch) {
    if (options.should_stop && options.should_stop()) break;
    std::vector<Window> windows;
    int64_t longest = 0;
    for (size_t b = i; b < std::min(blocks.size(), i + batch) && blocks[b].begin < n; ++b) {
      windows.push_back(MakeWindow(seq, blocks[b], context));
      longest = std::max<int64_t>(longest, static_cast<int64_t>(windows.back().input.size()));
    }
    // Right padding: a causal model's earlier positions never see it.
    auto x = torch::full({static_cast<int64_t>(windows.size()), longest}, static_cast<int64_t>(bos), torch::kLong);
    std::vector<torch::Tensor> rows;
    std::vector<int64_t> targets;
    for (size_t w = 0; w < windows.size(); ++w) {
      const Window& win = windows[w];
      x[static_cast<int64_t>(w)].narrow(0, 0, static_cast<int64_t>(win.input.size())).copy_(torch::tensor(win.input));
      for (int64_t t = win.begin; t < win.end; ++t) targets.push_back(tokens[static_cast<size_t>(t)]);
    }
    auto hidden = model->ForwardHidden(x);  // [B, T, D]
    // The output layer only where a token is predicted (most of a window is
    // conditioning).
    for (size_t w = 0; w < windows.size(); ++w) {
      rows.push_back(hidden[static_cast<int64_t>(w)].narrow(0, windows[w].first_target, windows[w].end - windows[w].begin));
    }
    auto logp = torch::log_softmax(model->Logits(torch::cat(rows, 0).unsqueeze(0)).squeeze(0), -1);  // [R, V]
    auto picked = logp.gather(-1, torch::tensor(targets, torch::kLong).unsqueeze(-1)).squeeze(-1).contiguous();
    const float* pp = picked.data_ptr<float>();
    out.insert(out.end(), pp, pp + picked.numel());
  }
  return out;
}

torch::Tensor InContextNextTokenLogits(TransformerLM& model, const std::vector<TokenId>& tokens,
                                         const InContextBlock& block, TokenId bos) {
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t context = model->config().context;
  const int64_t p = PassageFits(block.passage, block.end - block.begin, context);
  const int64_t start = InContextWindowStart(block.end, p, context);
  std::vector<int64_t> input(block.passage.begin(), block.passage.begin() + p);
  const std::vector<int64_t> seq = WithBos(tokens, bos);
  input.insert(input.end(), seq.begin() + std::min(start, n), seq.end());
  torch::NoGradGuard no_grad;
  auto x = torch::tensor(input, torch::kLong).unsqueeze(0);     // [1, T]
  auto last = model->ForwardHidden(x).narrow(1, x.size(1) - 1, 1);  // [1, 1, D]
  return model->Logits(last).view({-1});                            // [V]
}

}  // namespace rag::lm

// In-Context RALM's layout (Ram et al. 2023, "In-Context Retrieval-Augmented
// Language Models"): a retrieved passage is put in front of the model's own
// context, with no change to the model. The text is cut into blocks of s
// tokens (the retrieval stride); every token of a block is predicted with
// the same passage before it, then as much of the text before the token as
// fits the context. Works for any TransformerLM (ours, GPT-2, Pythia).
// Thread-safe for concurrent calls on a model in eval mode.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "lm/tokenizer.h"
#include "lm/transformer_lm.h"

namespace rag::lm {

// One block of the text: tokens [begin, end) are predicted after `passage`.
struct InContextBlock {
  int64_t begin = 0;
  int64_t end = 0;
  std::vector<TokenId> passage;  // empty: the plain LM's context
};

// The first position of [bos, tokens...] that a block ending at `block_end`
// keeps after a passage of `passage_tokens`: the block's window is
//   passage ++ [bos, tokens...][start .. block_end - 1]
// and is at most `context` long. It depends on the block only (not on where
// the text stops), so the distribution of a token is the same whether the
// whole text is scored or the text up to the token is continued.
int64_t InContextWindowStart(int64_t block_end, int64_t passage_tokens, int64_t context);

struct InContextOptions {
  // Windows per forward pass (windows of a batch are right-padded to the
  // longest, which causal attention ignores). Default: 8
  int64_t batch_windows = 8;
  // As ScoreOptions::should_stop: asked before each forward pass; true
  // stops there with the tokens scored so far.
  std::function<bool()> should_stop;
};

// log p(tokens[i] | passage of i's block, bos, tokens before i within the
// window) for every i, in nats. `blocks` must cover [0, tokens.size()) in
// order, the last may end past it. A passage longer than the context leaves
// room for beside its block is cut to its first tokens; a block is at most
// the context long.
std::vector<float> ScoreInContext(TransformerLM& model, const std::vector<TokenId>& tokens, TokenId bos,
                                  const std::vector<InContextBlock>& blocks, const InContextOptions& options = {});

// The logits [V] of the token after `tokens`, which sits in `block`
// (block.begin <= tokens.size() < block.end): their log-softmax is the
// distribution ScoreInContext gives that position.
torch::Tensor InContextNextTokenLogits(TransformerLM& model, const std::vector<TokenId>& tokens,
                                         const InContextBlock& block, TokenId bos);

}  // namespace rag::lm

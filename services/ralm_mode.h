// RalmMode: In-Context RALM ("ralm"; Ram et al. 2023): every `stride` tokens,
// the last `query_tokens` tokens of the text retrieve one chunk (BM25 or
// dense), and the chunk with its continuation is put in front of the LM's
// context for the next `stride` tokens (lm/in_context.h). The model is
// unchanged, so any served LM runs it, a pretrained one included. Needs an
// index (held here or behind a sharded front). Thread-safe.
//
// Where blocks start: a text scored with a prompt of P tokens has blocks at
// 0, s, 2s, ... up to P (no retrieval for the first, which has no query),
// then at P, P + s, ...: the tokens after the prompt are predicted with a
// passage the whole prompt retrieved. NextToken and Generate treat their
// text as such a prompt, so NextToken(the first t tokens) is Score's
// distribution at t with a prompt of t tokens, and greedy generation
// follows NextToken.
#pragma once

#include <vector>

#include "lm/in_context.h"
#include "services/mode_strategy.h"

namespace rag::services {

class RalmMode : public ModeStrategy {
 public:
  // served.searcher must be set.
  explicit RalmMode(ServedModels served) : served_(served) {}

  absl::StatusOr<std::vector<float>> Score(const ScoreParams& p, const std::vector<lm::TokenId>& ids,
                                           v1::ScoreResponse* response) const override;
  absl::StatusOr<torch::Tensor> NextToken(const NextTokenParams& p, const std::vector<lm::TokenId>& ids) const override;
  absl::StatusOr<std::vector<lm::TokenId>> Generate(const GenerateParams& p, const std::vector<lm::TokenId>& prompt,
                                                    const lm::TokenCallback& emit,
                                                    v1::GenerateResponse* done) const override;

 private:
  // Gives each of *blocks (begin and end set) the passage that the last
  // p.query_tokens tokens of `ids` before its begin retrieve (none for a
  // block at 0). `found`, when set, gets each block's neighbour (an empty
  // doc_id where none was retrieved).
  absl::Status Retrieve(const std::vector<lm::TokenId>& ids, const RalmParams& p,
                        std::vector<lm::InContextBlock>* blocks,
                        std::vector<retriever::Neighbour>* found = nullptr) const;

  ServedModels served_;
};

}  // namespace rag::services

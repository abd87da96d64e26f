// ModeStrategy: how one mode (lm, kNN-LM, RETRO, ∞-gram, In-Context RALM) answers the scoring rpcs
// from validated parameters (services/request_parsing.h). The Engine owns
// one per mode it can serve and dispatches on ScoreParams::mode etc.
// Implementations are stateless over the served model, index and
// datastore: thread-safe, as those are.
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/utf8.h"
#include "lm/generator.h"
#include "lm/language_model.h"
#include "lm/retro_model.h"
#include "lm/tokenizer.h"
#include "proto/rag.pb.h"
#include "retriever/datastore.h"
#include "retriever/retriever.h"
#include "retriever/searcher.h"
#include "services/request_parsing.h"

namespace rag::services {

class CorpusCounts;

// What the Engine serves, shared by the strategies (not owned; the Engine
// keeps them alive while its strategies exist).
struct ServedModels {
  lm::LanguageModel* model = nullptr;         // the LM (a RETRO model's base LM)
  lm::RetroModel* retro = nullptr;            // null unless a RETRO model is served
  // The index held by this process; null without one, and on a sharded
  // front (whose index is `searcher`).
  retriever::Retriever* retriever = nullptr;
  const retriever::ChunkSearcher* searcher = nullptr;  // null without an index
  const retriever::KeySearcher* keys = nullptr;        // null without a kNN-LM datastore
  const CorpusCounts* counts = nullptr;                // the index's suffix array; null without `retriever`
};

class ModeStrategy {
 public:
  virtual ~ModeStrategy() = default;

  // log p of every token of `ids` (p.text encoded), in nats, in order. Sets
  // the mode's own fields of *response (components, retrievals); the
  // Engine fills the rest.
  virtual absl::StatusOr<std::vector<float>> Score(const ScoreParams& p, const std::vector<lm::TokenId>& ids,
                                                   v1::ScoreResponse* response) const = 0;
  // The log-distribution [V] of the token after `ids` (p.text encoded).
  virtual absl::StatusOr<torch::Tensor> NextToken(const NextTokenParams& p,
                                                  const std::vector<lm::TokenId>& ids) const = 0;
  // The tokens generated after `prompt` with p.sampling, each passed to
  // `emit` (false stops). May add the mode's results (retrievals) to *done.
  virtual absl::StatusOr<std::vector<lm::TokenId>> Generate(const GenerateParams& p,
                                                            const std::vector<lm::TokenId>& prompt,
                                                            const lm::TokenCallback& emit,
                                                            v1::GenerateResponse* done) const = 0;
};

// What a request stopped by rag::Cancelled() returns (the client sees its
// own CANCELLED or DEADLINE_EXCEEDED; this is for logs and in-process use).
inline absl::Status CallCancelled() {
  return absl::CancelledError("the call was cancelled or its deadline passed; work stopped");
}

// How many of `ids` (`text` encoded) are the prompt of its first
// `prompt_bytes` bytes (ScoreRequest.prompt_bytes): those the text shares
// with the prompt encoded alone, since a token that merges across the
// boundary belongs to what follows. 0 when prompt_bytes is 0.
inline int64_t PromptTokens(const lm::Tokenizer& tok, const std::string& text, int prompt_bytes,
                            const std::vector<lm::TokenId>& ids) {
  if (prompt_bytes <= 0) return 0;
  const std::vector<lm::TokenId> alone = tok.Encode(text.substr(0, static_cast<size_t>(prompt_bytes)));
  int64_t prompt = 0;
  while (prompt < static_cast<int64_t>(std::min(alone.size(), ids.size())) && alone[prompt] == ids[prompt]) ++prompt;
  return prompt;
}

// The text of token ids, invalid UTF-8 replaced by U+FFFD.
inline std::string DecodeToValidUtf8(const lm::Tokenizer& tok, const std::vector<int32_t>& ids) {
  std::string bytes;
  for (int32_t id : ids) bytes += tok.TokenBytes(id);
  return ToValidUtf8(bytes);
}

}  // namespace rag::services

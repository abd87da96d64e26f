#include "services/ralm_mode.h"

#include <algorithm>
#include <utility>

#include "common/cancellation.h"
#include "common/stage_timer.h"
#include "common/status.h"

namespace rag::services {
namespace {

// Queries per index search: bounds a long text's search memory.
constexpr size_t kSearchBatch = 64;

}  // namespace

absl::Status RalmMode::Retrieve(const std::vector<lm::TokenId>& ids, const RalmParams& p,
                               std::vector<lm::InContextBlock>* blocks,
                               std::vector<retriever::Neighbour>* found) const {
  std::vector<size_t> asked;  // the blocks with a query, in query order
  std::vector<std::vector<retriever::Token>> queries;
  for (size_t i = 0; i < blocks->size(); ++i) {
    const int64_t b = (*blocks)[i].begin;
    if (b == 0) continue;
    queries.emplace_back(ids.begin() + std::max<int64_t>(0, b - p.query_tokens), ids.begin() + b);
    asked.push_back(i);
  }
  if (found != nullptr) found->assign(blocks->size(), retriever::Neighbour{});
  retriever::SearchOptions o;
  o.k = 1;
  o.method = p.search_method;
  if (!p.exclude_doc_id.empty()) o.exclude_doc_ids = {p.exclude_doc_id};
  for (size_t q = 0; q < queries.size(); q += kSearchBatch) {
    if (rag::Cancelled()) return CallCancelled();
    const size_t end = std::min(queries.size(), q + kSearchBatch);
    const std::vector<std::vector<retriever::Token>> batch(queries.begin() + static_cast<int64_t>(q),
                                                           queries.begin() + static_cast<int64_t>(end));
    RAG_ASSIGN_OR_RETURN(auto lists, served_.searcher->Search(batch, o));
    for (size_t i = q; i < end; ++i) {
      std::vector<retriever::Neighbour>& list = lists[i - q];
      if (list.empty()) continue;  // an index with no eligible chunk
      std::vector<lm::TokenId>& passage = (*blocks)[asked[i]].passage;
      passage.resize(static_cast<size_t>(p.passage_tokens));
      passage.resize(static_cast<size_t>(retriever::CopyNeighbourTokens(list[0], p.passage_tokens, passage.data())));
      if (found != nullptr) (*found)[asked[i]] = std::move(list[0]);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> RalmMode::Score(const ScoreParams& p, const std::vector<lm::TokenId>& ids,
                                                   v1::ScoreResponse* response) const {
  const int64_t n = static_cast<int64_t>(ids.size());
  const int64_t s = p.ralm.stride;
  const int64_t prompt = PromptTokens(served_.model->tokenizer(), p.text, p.prompt_bytes, ids);
  std::vector<lm::InContextBlock> blocks;
  for (int64_t b = 0; b < prompt; b += s) blocks.push_back({b, std::min(b + s, prompt), {}});
  for (int64_t b = prompt; b < n; b += s) blocks.push_back({b, b + s, {}});
  {
    const StageTimer timer(Stage::kFusion);  // laying out; the searches time themselves
    RAG_RETURN_IF_ERROR(Retrieve(ids, p.ralm, &blocks));
  }
  int64_t retrieved = 0;
  for (const auto& b : blocks) retrieved += b.passage.empty() ? 0 : 1;
  response->set_retrievals(retrieved);
  lm::InContextOptions o;
  o.should_stop = rag::Cancelled;
  std::vector<float> logprobs;
  {
    const StageTimer timer(Stage::kForward);
    logprobs = lm::ScoreInContext(served_.model->module(), ids, served_.model->tokenizer().eot_id(), blocks, o);
  }
  if (rag::Cancelled()) return CallCancelled();
  return logprobs;
}

absl::StatusOr<torch::Tensor> RalmMode::NextToken(const NextTokenParams& p, const std::vector<lm::TokenId>& ids) const {
  // The text is a prompt: the next token starts a block.
  const int64_t n = static_cast<int64_t>(ids.size());
  std::vector<lm::InContextBlock> blocks = {{n, n + p.ralm.stride, {}}};
  {
    const StageTimer timer(Stage::kFusion);
    RAG_RETURN_IF_ERROR(Retrieve(ids, p.ralm, &blocks));
  }
  const StageTimer timer(Stage::kForward);
  return torch::log_softmax(
      lm::InContextNextTokenLogits(served_.model->module(), ids, blocks[0], served_.model->tokenizer().eot_id()), -1);
}

absl::StatusOr<std::vector<lm::TokenId>> RalmMode::Generate(const GenerateParams& p,
                                                            const std::vector<lm::TokenId>& prompt,
                                                            const lm::TokenCallback& emit,
                                                            v1::GenerateResponse* done) const {
  RAG_RETURN_IF_ERROR(lm::ValidateSamplingOptions(p.sampling));
  const auto& tok = served_.model->tokenizer();
  const int64_t s = p.ralm.stride;
  const int64_t prompt_tokens = static_cast<int64_t>(prompt.size());
  std::vector<lm::TokenId> text(prompt);  // prompt, then what was generated
  std::vector<lm::TokenId> generated;
  uint64_t rng = p.sampling.seed;
  lm::InContextBlock block;
  block.begin = -1;
  // Every step is a full forward pass over passage + context: the passage
  // changes every s tokens, so a KV cache would live for s - 1 steps only.
  for (int64_t step = 0; step < p.sampling.max_tokens; ++step) {
    if (rag::Cancelled()) return CallCancelled();
    const int64_t begin = prompt_tokens + (static_cast<int64_t>(text.size()) - prompt_tokens) / s * s;
    if (begin != block.begin) {
      std::vector<retriever::Neighbour> found;
      std::vector<lm::InContextBlock> blocks = {{begin, begin + s, {}}};
      {
        const StageTimer timer(Stage::kFusion);
        RAG_RETURN_IF_ERROR(Retrieve(text, p.ralm, &blocks, &found));
      }
      block = std::move(blocks[0]);
      if (!block.passage.empty()) {
        // Reported as RETRO's are: the block the passage conditions (0: the
        // first generated), the query and the neighbour put in front.
        v1::ChunkRetrieval* rv = done->add_retrievals();
        rv->set_chunk((begin - prompt_tokens) / s);
        const int64_t from = std::max<int64_t>(0, begin - p.ralm.query_tokens);
        rv->set_query(DecodeToValidUtf8(tok, std::vector<int32_t>(text.begin() + from, text.begin() + begin)));
        // The neighbour cut to what was put in front: its text and
        // continuation hold the passage's tokens.
        v1::Neighbour* nb = rv->add_neighbours();
        const retriever::Neighbour& f = found[0];
        const size_t used = block.passage.size();
        const std::vector<int32_t> chunk(f.tokens.begin(), f.tokens.begin() + std::min(used, f.tokens.size()));
        const std::vector<int32_t> continuation(
            f.continuation.begin(), f.continuation.begin() + std::min(used - chunk.size(), f.continuation.size()));
        nb->set_chunk_id(f.chunk_id);
        nb->set_doc_id(f.doc_id);
        nb->set_offset(f.offset);
        nb->set_text(DecodeToValidUtf8(tok, chunk));
        nb->set_continuation(DecodeToValidUtf8(tok, continuation));
        nb->set_distance(f.distance);
        nb->mutable_token_ids()->Add(chunk.begin(), chunk.end());
        nb->mutable_continuation_ids()->Add(continuation.begin(), continuation.end());
      }
    }
    torch::Tensor logits;
    {
      const StageTimer timer(Stage::kForward);
      logits = lm::InContextNextTokenLogits(served_.model->module(), text, block, tok.eot_id());
    }
    const lm::TokenId next = lm::SampleToken(logits, p.sampling, &rng, text);
    generated.push_back(next);
    text.push_back(next);
    if (emit && !emit(next)) break;
    if (p.sampling.stop_at_eot && next == tok.eot_id()) break;
  }
  return generated;
}

}  // namespace rag::services

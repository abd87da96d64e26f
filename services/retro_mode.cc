#include "services/retro_mode.h"

#include <xxhash.h>

#include <algorithm>
#include <random>
#include <utility>

#include "common/cancellation.h"
#include "common/stage_timer.h"
#include "common/status.h"
#include "retriever/leakage.h"
#include "retriever/neighbour_set.h"

namespace rag::services {
namespace {

// `text` with end-of-text in front so that its first `prompt_tokens` end a
// RETRO chunk of m tokens, as prompt windows are trained: what follows the
// prompt then attends to the neighbours retrieved with it. *padding: how
// many were put in front.
std::vector<lm::TokenId> PromptEndingAChunk(const std::vector<lm::TokenId>& text, int64_t prompt_tokens, int64_t m,
                                            lm::TokenId eot, int64_t* padding) {
  *padding = (m - prompt_tokens % m) % m;
  std::vector<lm::TokenId> laid_out(static_cast<size_t>(*padding), eot);
  laid_out.insert(laid_out.end(), text.begin(), text.end());
  return laid_out;
}

}  // namespace

absl::StatusOr<std::vector<lm::NeighbourSet>> RetroMode::RetroSets(const std::vector<lm::TokenId>& ids,
                                                                   const RetroParams& p, int64_t* filtered,
                                                                   int64_t padding) const {
  // Assembling the sets (filter, alignment, padding); the searches and
  // reads inside time themselves.
  const StageTimer timer(Stage::kFusion);
  const auto& c = served_.retro->config();
  const retriever::ChunkSearcher& index = *served_.searcher;
  const int64_t m = c.chunk_size;
  const int64_t n = static_cast<int64_t>(ids.size());
  const int64_t chunks = (n + m - 1) / m;
  std::vector<lm::NeighbourSet> sets(static_cast<size_t>(chunks));
  if (chunks == 0) return sets;
  retriever::NeighbourSetOptions o;
  o.k = static_cast<int>(c.neighbours);
  o.tokens = c.neighbour_tokens;
  o.pad = served_.model->tokenizer().eot_id();
  o.align = c.align_neighbours;
  o.chunk = m;
  o.leakage_filter = p.leakage_filter;
  o.method = p.search_method;
  if (!p.exclude_doc_id.empty()) o.exclude_doc_ids = {p.exclude_doc_id};
  o.batch = 64;  // bounds a long text's search memory
  auto to_lm = [&](retriever::NeighbourSet&& set) {
    *filtered += set.filtered;
    return lm::NeighbourSet{std::move(set.tokens), std::move(set.present)};
  };
  sets.back() = to_lm(retriever::EmptyNeighbourSet(o));  // the last chunk's set is never attended
  auto chunk = [&](int64_t j) {
    return std::vector<lm::TokenId>(ids.begin() + j * m, ids.begin() + std::min(n, (j + 1) * m));
  };
  const int64_t queries = chunks - 1;
  if (p.retrieval == Retrieval::kRandom) {
    // Seeded by the text, so the control is reproducible; as many draws as
    // the filter's over-fetch, filter on or off.
    if (served_.retriever == nullptr) {
      // A front's chunk numbers are per shard: a uniform draw needs the
      // shards' sizes and a second round trip; not served (yet).
      return absl::FailedPreconditionError("retrieval \"random\" needs the index in this server, not behind a "
                                           "sharded front");
    }
    const retriever::Retriever& local = *served_.retriever;
    std::mt19937_64 rng(XXH3_64bits(ids.data(), ids.size() * sizeof(lm::TokenId)));
    const int64_t total = local.num_vectors();
    for (int64_t j = 0; j < queries; ++j) {
      std::vector<retriever::ChunkId> drawn;
      for (int64_t i = 0; i < retriever::kLeakageOverFetch * o.k && total > 0; ++i) {
        drawn.push_back(static_cast<int64_t>(rng() % total));
      }
      absl::StatusOr<std::vector<retriever::ChunkRecord>> records;
      {
        const StageTimer reading(Stage::kDatastore);
        records = local.chunk_store().GetChunks(drawn);
      }
      RAG_RETURN_IF_ERROR(records.status());
      std::vector<retriever::Neighbour> list;
      for (auto& rec : *records) {
        list.push_back({rec.id, rec.doc_id, rec.offset, std::move(rec.tokens), std::move(rec.continuation), 0.0f});
      }
      sets[j] = to_lm(retriever::NeighbourSetFromCandidates(list, chunk(j), chunk(j + 1), o));
    }
    return sets;
  }
  retriever::NeighbourQueries q;
  for (int64_t j = 0; j < queries; ++j) {
    q.tokens.push_back(chunk(j));
    q.targets.push_back(chunk(j + 1));
  }
  // A padded prompt searches with its own tokens only.
  if (queries > 0 && padding > 0) {
    q.tokens[0].erase(q.tokens[0].begin(), q.tokens[0].begin() + std::min<int64_t>(padding, q.tokens[0].size()));
  }
  RAG_ASSIGN_OR_RETURN(std::vector<retriever::NeighbourSet> built, retriever::BuildNeighbourSets(index, q, o));
  for (int64_t j = 0; j < queries; ++j) sets[j] = to_lm(std::move(built[static_cast<size_t>(j)]));
  return sets;
}

std::vector<float> RetroMode::ChunkOverlaps(const std::vector<lm::TokenId>& ids,
                                            const std::vector<lm::NeighbourSet>& sets) const {
  const auto& c = served_.retro->config();
  const int64_t m = c.chunk_size, r = c.neighbour_tokens;
  const lm::TokenId eot = served_.model->tokenizer().eot_id();
  const int64_t n = static_cast<int64_t>(ids.size());
  std::vector<float> overlaps = {-1.0f};  // the first chunk attends to no neighbour
  for (int64_t j = 1; j * m < n && j <= static_cast<int64_t>(sets.size()); ++j) {
    const lm::TokenId* chunk = ids.data() + j * m;
    const int64_t len = std::min(m, n - j * m);
    const lm::NeighbourSet& set = sets[static_cast<size_t>(j - 1)];
    int64_t longest = 0;
    for (size_t k = 0; k < set.present.size(); ++k) {
      if (!set.present[k]) continue;
      // The neighbour's own tokens: its end-of-text padding is no overlap.
      const lm::TokenId* nb = set.tokens.data() + static_cast<int64_t>(k) * r;
      int64_t from = 0, to = r;
      while (from < to && nb[from] == eot) ++from;
      while (to > from && nb[to - 1] == eot) --to;
      longest = std::max(longest, retriever::LongestCommonRun(chunk, len, nb + from, to - from));
    }
    overlaps.push_back(static_cast<float>(longest) / static_cast<float>(len));
  }
  return overlaps;
}

absl::StatusOr<std::vector<float>> RetroMode::Score(const ScoreParams& p, const std::vector<lm::TokenId>& ids,
                                                    v1::ScoreResponse* response) const {
  const auto& tok = served_.model->tokenizer();
  const int64_t m = served_.retro->config().chunk_size;
  const int64_t prompt = PromptTokens(tok, p.text, p.prompt_bytes, ids);
  int64_t padding = 0;
  const std::vector<lm::TokenId> laid_out = PromptEndingAChunk(ids, prompt, m, tok.eot_id(), &padding);
  std::vector<lm::NeighbourSet> sets;
  int64_t filtered = 0;
  if (p.retro.retrieval != Retrieval::kOff) {
    RAG_ASSIGN_OR_RETURN(sets, RetroSets(laid_out, p.retro, &filtered, padding));
  }
  lm::RetroScoreOptions ro;
  ro.should_stop = rag::Cancelled;
  ro.stride_chunks = p.stride / m;
  absl::StatusOr<std::vector<float>> scored;
  {
    const StageTimer timer(Stage::kForward);
    scored = lm::ScoreRetroTokens(served_.retro->module(), laid_out, tok.eot_id(), sets, ro);
  }
  RAG_ASSIGN_OR_RETURN(std::vector<float> logprobs, std::move(scored));
  logprobs.erase(logprobs.begin(), logprobs.begin() + padding);
  if (!sets.empty() && padding == 0) {
    for (float overlap : ChunkOverlaps(laid_out, sets)) response->add_chunk_overlaps(overlap);
  }
  response->set_retrievals(sets.empty() ? 0 : static_cast<int64_t>(sets.size()) - 1);
  response->set_neighbours_filtered(filtered);
  return logprobs;
}

absl::StatusOr<torch::Tensor> RetroMode::NextToken(const NextTokenParams& p,
                                                   const std::vector<lm::TokenId>& ids) const {
  const lm::TokenId eot = served_.model->tokenizer().eot_id();
  std::vector<lm::NeighbourSet> sets;
  int64_t filtered = 0;
  // Sets of the complete chunks only: the next token sits after them.
  std::vector<lm::TokenId> complete(ids.begin(),
                                    ids.end() - static_cast<int64_t>(ids.size()) % served_.retro->config().chunk_size);
  complete.push_back(eot);  // a last (partial) chunk whose set is never used
  if (p.retro.retrieval != Retrieval::kOff && complete.size() > 1) {
    RAG_ASSIGN_OR_RETURN(sets, RetroSets(complete, p.retro, &filtered));
  }
  const StageTimer timer(Stage::kForward);
  return lm::RetroNextTokenLogProbs(served_.retro->module(), ids, eot, sets);
}

absl::StatusOr<std::vector<lm::TokenId>> RetroMode::Generate(const GenerateParams& p,
                                                             const std::vector<lm::TokenId>& prompt,
                                                             const lm::TokenCallback& emit,
                                                             v1::GenerateResponse* done) const {
  const auto& tok = served_.model->tokenizer();
  const auto& c = served_.retro->config();
  // The first generated token already attends to the prompt's neighbours.
  int64_t padding = 0;
  const std::vector<lm::TokenId> laid_out =
      PromptEndingAChunk(prompt, static_cast<int64_t>(prompt.size()), c.chunk_size, tok.eot_id(), &padding);
  lm::RetrieveFn retrieve;
  if (p.retro.retrieval != Retrieval::kOff) {
    // Neighbours of each completed chunk: retrieved (or drawn at random)
    // once, and reported in the final message.
    retrieve = [&](const std::vector<lm::TokenId>& chunk) -> absl::StatusOr<lm::NeighbourSet> {
      std::vector<lm::TokenId> query = chunk;
      query.push_back(tok.eot_id());
      // The padding is no part of the first chunk's query.
      const bool first = padding > 0 && std::equal(chunk.begin(), chunk.end(), laid_out.begin());
      int64_t filtered = 0;
      RAG_ASSIGN_OR_RETURN(auto sets, RetroSets(query, p.retro, &filtered, first ? padding : 0));
      return sets[0];
    };
  }
  auto on_retrieve = [&](int64_t chunk, const lm::NeighbourSet& set) {
    v1::ChunkRetrieval* rv = done->add_retrievals();
    rv->set_chunk(chunk);
    const int64_t r_tokens = c.neighbour_tokens;
    for (size_t j = 0; j < set.present.size(); ++j) {
      if (!set.present[j]) continue;
      v1::Neighbour* nb = rv->add_neighbours();
      std::vector<int32_t> t(set.tokens.begin() + static_cast<int64_t>(j) * r_tokens,
                             set.tokens.begin() + static_cast<int64_t>(j + 1) * r_tokens);
      // A neighbour is padded to R tokens with end-of-text (at the end near
      // its document's end, at the start when aligned on the query): the
      // client sees the neighbour's own tokens only.
      while (!t.empty() && t.back() == tok.eot_id()) t.pop_back();
      t.erase(t.begin(), std::find_if(t.begin(), t.end(), [&](int32_t id) { return id != tok.eot_id(); }));
      nb->set_text(DecodeToValidUtf8(tok, t));
      nb->mutable_token_ids()->Add(t.begin(), t.end());
    }
  };
  const StageTimer timer(Stage::kForward);  // retrieval inside times itself
  return lm::GenerateRetro(served_.retro->module(), laid_out, tok.eot_id(), p.sampling, retrieve, emit, on_retrieve);
}

}  // namespace rag::services

// RETRO's neighbour sets, assembled one way for serving, the precomputed
// training table and the training prompt windows: search each query chunk
// (fetching spares when the leakage filter may drop some), drop leaking
// candidates, lay each kept one out as R tokens (re-cut on its query, or as
// stored) and pad to K x R with a presence mask. Plain token ids, no
// LibTorch. Thread-safe: stateless functions over a const ChunkSearcher
// (retriever/searcher.h: the local Retriever or a sharded front).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "retriever/chunk_store.h"
#include "retriever/retriever.h"
#include "retriever/searcher.h"

namespace rag::retriever {

// The over-fetch rule: with the leakage filter on, a query searches
// kLeakageOverFetch * K candidates (plus NeighbourSetOptions::
// extra_candidates), so that K usually survive the filter; with it off,
// exactly K. CandidatesToFetch applies it.
inline constexpr int kLeakageOverFetch = 4;

struct NeighbourSetOptions {
  int k = 2;             // K: neighbours per set. Default: 2 (RETRO's)
  int64_t tokens = 128;  // R: tokens per neighbour. Default: 128
  Token pad = 0;         // fills missing neighbours and the tail of short ones. Default: 0
  // AlignNeighbourTokens's min_match: each neighbour is re-cut on its query
  // when it holds the query's last `align` tokens or more, with `chunk`
  // tokens before the match's end; 0 = the stored layout, chunk then
  // continuation (CopyNeighbourTokens). Default: 0
  int64_t align = 0;
  int64_t chunk = 64;  // M, for the alignment. Default: 64
  // RETRO's leakage filter: a candidate sharing a run of this many tokens
  // with its query's target (the chunk its set helps predict) is dropped,
  // and the next one takes its place; 0 = off. Default: 0
  int64_t leakage_filter = 0;
  // Candidates fetched beyond kLeakageOverFetch * K when the filter is on.
  // The training table searches a chunk's own document, where the query
  // chunk itself (the nearest) always leaks, and fetches 2; serving 0.
  // Default: 0
  int extra_candidates = 0;
  // Documents never in a set: the query's own under RETRO's training rule,
  // the scored document in serving, the facts withheld from training.
  // Default: none
  std::vector<std::string> exclude_doc_ids;
  std::string method = "dense";         // SearchOptions::method. Default: "dense"
  int nprobe = SearchOptions{}.nprobe;  // SearchOptions::nprobe. Default: SearchOptions's
  // Queries per search call; 0 = all in one. Serving bounds a long text's
  // memory with it. Callers keep their batching: an embedding batch of other
  // queries may round a query's vector differently. Default: 0
  int64_t batch = 0;
};

// One query's neighbours, ready for RetroLM's [K, R] input.
struct NeighbourSet {
  std::vector<Token> tokens;       // [K, R] flattened: neighbour j at [j*R, (j+1)*R); `pad` where missing
  std::vector<uint8_t> present;    // [K]: 1 = neighbour j exists
  std::vector<ChunkId> chunk_ids;  // [K]: neighbour j's chunk; -1 where missing
  int64_t filtered = 0;            // candidates the leakage filter dropped
};

// The queries of one BuildNeighbourSets call.
struct NeighbourQueries {
  // The query chunks' tokens: what is searched (bm25, or dense without
  // `embeddings`) and what aligned neighbours are re-cut on. May be empty
  // when `embeddings` are given, the search is dense and align is 0.
  std::vector<std::vector<Token>> tokens;
  // [rows, dim] float32 row-major: the queries already embedded in the
  // index's space (e.g. rows of embeddings.f32), searched without embedding
  // them again when the method is dense. nullptr = embed `tokens`.
  const float* embeddings = nullptr;
  int64_t rows = 0;
  // Per query, the chunk its set helps predict, for the leakage filter; an
  // empty one (nothing follows) drops nothing. Empty list: no targets.
  std::vector<std::vector<Token>> targets;
};

// Candidates searched per query under `options` (the over-fetch rule).
int CandidatesToFetch(const NeighbourSetOptions& options);

// A set of K missing neighbours: all `pad`, none present.
NeighbourSet EmptyNeighbourSet(const NeighbourSetOptions& options);

// The set of one query from `candidates` (nearest first; e.g. chunks drawn
// at random rather than searched): candidates of exclude_doc_ids are
// skipped, then (filter on) those sharing a run with `target`, counted in
// `filtered`; the first K others are laid out on `query`. `options` must
// hold k >= 1 and tokens >= 1 (BuildNeighbourSets checks them).
NeighbourSet NeighbourSetFromCandidates(const std::vector<Neighbour>& candidates, const std::vector<Token>& query,
                                        const std::vector<Token>& target, const NeighbourSetOptions& options);

// The set of every query, in order: CandidatesToFetch(options) candidates
// searched with exclude_doc_ids excluded, then as NeighbourSetFromCandidates.
// InvalidArgument for k < 1, tokens < 1, a negative filter, spares or batch,
// or queries whose tokens, rows and targets disagree; the search's errors.
absl::StatusOr<std::vector<NeighbourSet>> BuildNeighbourSets(const ChunkSearcher& retriever,
                                                             const NeighbourQueries& queries,
                                                             const NeighbourSetOptions& options);

}  // namespace rag::retriever

#include "retriever/neighbour_set.h"

#include <algorithm>
#include <utility>

#include "common/status.h"

namespace rag::retriever {
namespace {

// The set of one query from `candidates`. `check_exclusion`: skip those of
// exclude_doc_ids (a search has already left them out).
NeighbourSet Assemble(const std::vector<Neighbour>& candidates, const std::vector<Token>& query,
                      const std::vector<Token>& target, const NeighbourSetOptions& o, bool check_exclusion) {
  NeighbourSet set = EmptyNeighbourSet(o);
  const std::vector<std::string>& excluded = o.exclude_doc_ids;
  int kept = 0;
  for (const Neighbour& nb : candidates) {
    if (kept >= o.k) break;
    if (check_exclusion && std::find(excluded.begin(), excluded.end(), nb.doc_id) != excluded.end()) continue;
    // An empty target (nothing follows the query) cannot share a run.
    if (o.leakage_filter > 0 && !target.empty() && NeighbourLeaks(nb, target, o.leakage_filter)) {
      ++set.filtered;
      continue;
    }
    const size_t j = static_cast<size_t>(kept++);
    Token* out = set.tokens.data() + static_cast<int64_t>(j) * o.tokens;
    if (o.align > 0) {
      AlignNeighbourTokens(nb, query, o.align, o.chunk, o.tokens, o.pad, out);
    } else {
      CopyNeighbourTokens(nb, o.tokens, out);  // over `pad`, which stays after a short neighbour
    }
    set.present[j] = 1;
    set.chunk_ids[j] = nb.chunk_id;
  }
  return set;
}

absl::Status Validate(const NeighbourSetOptions& o) {
  if (o.k < 1) return absl::InvalidArgumentError("neighbour set: k must be >= 1, got " + std::to_string(o.k));
  if (o.tokens < 1) {
    return absl::InvalidArgumentError("neighbour set: tokens per neighbour must be >= 1, got " +
                                      std::to_string(o.tokens));
  }
  if (o.leakage_filter < 0) return absl::InvalidArgumentError("neighbour set: leakage_filter must be >= 0 (0 = off)");
  if (o.extra_candidates < 0) return absl::InvalidArgumentError("neighbour set: extra_candidates must be >= 0");
  if (o.batch < 0) return absl::InvalidArgumentError("neighbour set: batch must be >= 0 (0 = all at once)");
  return absl::OkStatus();
}

}  // namespace

int CandidatesToFetch(const NeighbourSetOptions& o) {
  return o.leakage_filter > 0 ? kLeakageOverFetch * o.k + o.extra_candidates : o.k;
}

NeighbourSet EmptyNeighbourSet(const NeighbourSetOptions& o) {
  NeighbourSet set;
  set.tokens.assign(static_cast<size_t>(o.k) * static_cast<size_t>(o.tokens), o.pad);
  set.present.assign(static_cast<size_t>(o.k), 0);
  set.chunk_ids.assign(static_cast<size_t>(o.k), -1);
  return set;
}

NeighbourSet NeighbourSetFromCandidates(const std::vector<Neighbour>& candidates, const std::vector<Token>& query,
                                        const std::vector<Token>& target, const NeighbourSetOptions& options) {
  return Assemble(candidates, query, target, options, /*check_exclusion=*/true);
}

absl::StatusOr<std::vector<NeighbourSet>> BuildNeighbourSets(const ChunkSearcher& retriever, const NeighbourQueries& q,
                                                             const NeighbourSetOptions& o) {
  RAG_RETURN_IF_ERROR(Validate(o));
  // Precomputed vectors serve a dense search only; bm25 reads the tokens.
  const bool by_vector = q.embeddings != nullptr && o.method != "bm25";
  const int64_t n = q.embeddings != nullptr ? q.rows : static_cast<int64_t>(q.tokens.size());
  if (n < 0) return absl::InvalidArgumentError("neighbour set: negative embedding rows");
  if (!q.tokens.empty() && static_cast<int64_t>(q.tokens.size()) != n) {
    return absl::InvalidArgumentError("neighbour set: " + std::to_string(q.tokens.size()) + " token queries for " +
                                      std::to_string(n) + " embedding rows");
  }
  if (q.tokens.empty() && n > 0 && (!by_vector || o.align > 0)) {
    return absl::InvalidArgumentError("neighbour set: the queries' tokens are needed to search with " + o.method +
                                      (o.align > 0 ? " and to align neighbours" : ""));
  }
  if (!q.targets.empty() && static_cast<int64_t>(q.targets.size()) != n) {
    return absl::InvalidArgumentError("neighbour set: " + std::to_string(q.targets.size()) + " targets for " +
                                      std::to_string(n) + " queries");
  }
  std::vector<NeighbourSet> sets;
  sets.reserve(static_cast<size_t>(n));
  if (n == 0) return sets;
  SearchOptions so;
  so.k = CandidatesToFetch(o);
  so.nprobe = o.nprobe;
  so.method = o.method;
  so.exclude_doc_ids = o.exclude_doc_ids;
  const int64_t batch = o.batch > 0 ? o.batch : n;
  const int64_t dim = by_vector && batch < n ? retriever.dim() : 0;
  const std::vector<Token> none;
  for (int64_t b = 0; b < n; b += batch) {
    const int64_t end = std::min(n, b + batch);
    absl::StatusOr<std::vector<std::vector<Neighbour>>> searched;
    if (by_vector) {
      searched = retriever.SearchEmbeddings(q.embeddings + b * dim, end - b, so);
    } else if (b == 0 && end == n) {
      searched = retriever.Search(q.tokens, so);
    } else {
      searched = retriever.Search(std::vector<std::vector<Token>>(q.tokens.begin() + b, q.tokens.begin() + end), so);
    }
    RAG_ASSIGN_OR_RETURN(std::vector<std::vector<Neighbour>> found, std::move(searched));
    for (int64_t i = b; i < end; ++i) {
      const std::vector<Token>& query = q.tokens.empty() ? none : q.tokens[static_cast<size_t>(i)];
      const std::vector<Token>& target = q.targets.empty() ? none : q.targets[static_cast<size_t>(i)];
      sets.push_back(Assemble(found[static_cast<size_t>(i - b)], query, target, o, /*check_exclusion=*/false));
    }
  }
  return sets;
}

}  // namespace rag::retriever

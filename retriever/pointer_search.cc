#include "retriever/pointer_search.h"

#include <algorithm>
#include <utility>

#include "common/status.h"

namespace rag::retriever {

absl::Status SearchFollowingPointers(const KeySearcher& keys, const float* queries, const int32_t* tokens, int64_t n,
                                     const PointerSearchOptions& options,
                                     std::vector<std::vector<DatastoreNeighbour>>* out, int64_t* searched) {
  if (n < 0) return absl::InvalidArgumentError("pointer search: negative number of queries");
  if (n > 0 && (queries == nullptr || tokens == nullptr)) {
    return absl::InvalidArgumentError("pointer search: null queries or tokens");
  }
  if (options.min_pointers < 0 || options.lanes < 1 || options.min_run < 1) {
    return absl::InvalidArgumentError("pointer search: min_pointers must be >= 0, lanes and min_run >= 1");
  }
  out->assign(static_cast<size_t>(n), {});
  *searched = 0;
  if (n == 0) return absl::OkStatus();
  const size_t d = static_cast<size_t>(keys.dim());
  std::vector<DatastoreNeighbour> followed;
  // A searcher that cannot follow pointers says so now, whether or not the
  // text would have reached one.
  if (options.min_pointers > 0) RAG_RETURN_IF_ERROR(keys.Successors(queries, {}, 0, &followed));
  const int64_t lanes = std::clamp<int64_t>(n / options.min_run, 1, options.lanes);
  const int64_t run = (n + lanes - 1) / lanes;  // positions per lane; the last lanes may hold fewer
  std::vector<float> batch;
  std::vector<int64_t> batch_pos;
  std::vector<std::vector<DatastoreNeighbour>> found;
  for (int64_t t = 0; t < run; ++t) {
    batch.clear();
    batch_pos.clear();
    for (int64_t lane = 0; lane < lanes; ++lane) {
      const int64_t i = lane * run + t;
      if (i >= n) break;
      const float* query = queries + static_cast<size_t>(i) * d;
      if (t > 0 && options.min_pointers > 0) {
        const std::vector<DatastoreNeighbour>& prev = (*out)[static_cast<size_t>(i - 1)];
        const int32_t token = tokens[i - 1];
        // An upper bound first (a pointer may lead past its document's
        // end), so the distances are only computed when they may be used.
        const auto leading = std::count_if(prev.begin(), prev.end(),
                                           [token](const DatastoreNeighbour& nb) { return nb.value == token; });
        if (leading >= options.min_pointers) {
          RAG_RETURN_IF_ERROR(keys.Successors(query, prev, token, &followed));
          if (static_cast<int64_t>(followed.size()) >= options.min_pointers) {
            (*out)[static_cast<size_t>(i)] = std::move(followed);  // Successors clears it before reuse
            continue;
          }
        }
      }
      batch_pos.push_back(i);
      batch.insert(batch.end(), query, query + d);
    }
    if (batch_pos.empty()) continue;
    RAG_RETURN_IF_ERROR(keys.Search(batch.data(), static_cast<int64_t>(batch_pos.size()), options.search, &found));
    for (size_t j = 0; j < batch_pos.size(); ++j) (*out)[static_cast<size_t>(batch_pos[j])] = std::move(found[j]);
    *searched += static_cast<int64_t>(batch_pos.size());
  }
  return absl::OkStatus();
}

}  // namespace rag::retriever

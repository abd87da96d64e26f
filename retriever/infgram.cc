#include "retriever/infgram.h"

#include <algorithm>

namespace rag::retriever {

TokenCounts::Followers Infgram::Continuations(const int32_t* context, int64_t n) const {
  TokenCounts::Followers f = corpus_->FollowersOf(context, n);
  if (excluded_ != nullptr && f.total > 0) f.total -= excluded_->ContinuationCount(context, n);
  return f;
}

std::vector<std::pair<int32_t, int64_t>> Infgram::NextCounts(const int32_t* context, int64_t n) const {
  std::vector<std::pair<int32_t, int64_t>> counts = corpus_->NextTokenCounts(context, n);
  if (excluded_ == nullptr) return counts;
  // Both lists ascend by token; the excluded document's occurrences are a
  // subset of the corpus's.
  const auto minus = excluded_->NextTokenCounts(context, n);
  auto it = minus.begin();
  std::vector<std::pair<int32_t, int64_t>> out;
  for (const auto& [token, count] : counts) {
    while (it != minus.end() && it->first < token) ++it;
    const int64_t left = count - (it != minus.end() && it->first == token ? it->second : 0);
    if (left > 0) out.emplace_back(token, left);
  }
  return out;
}

int64_t Infgram::LongestSuffix(const int32_t* ids, int64_t end) const {
  // A suffix with continuations has only suffixes with continuations: the
  // lengths that have them are [0, longest], found by bisection.
  int64_t lo = 0, hi = std::min(end, kMaxSuffix);
  while (lo < hi) {
    const int64_t mid = hi - (hi - lo) / 2;
    if (Continuations(ids + end - mid, mid).total > 0) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

std::vector<InfgramPoint> Infgram::Score(const std::vector<int32_t>& ids) const {
  std::vector<InfgramPoint> out(ids.size());
  int64_t n = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    const int64_t end = static_cast<int64_t>(i);
    // A suffix of ids[0, i + 1) with continuations, less its last token, is
    // one of ids[0, i) followed by ids[i]: the longest can grow by one.
    // The look-up that ends the walk also gives the total and sparsity.
    n = std::min({i == 0 ? 0 : n + 1, end, kMaxSuffix});
    TokenCounts::Followers f = Continuations(ids.data() + end - n, n);
    while (n > 0 && f.total == 0) {
      --n;
      f = Continuations(ids.data() + end - n, n);
    }
    InfgramPoint& p = out[i];
    p.suffix_tokens = n;
    const int32_t* suffix = ids.data() + end - n;
    if (excluded_ == nullptr) {
      p.total = f.total;
      // suffix + ids[i] is ids[end - n, end + 1).
      p.count = corpus_->CountSpan(suffix, n + 1);
      p.sparse = f.one_token;
    } else {
      const auto counts = NextCounts(suffix, n);
      for (const auto& [token, c] : counts) {
        p.total += c;
        if (token == ids[i]) p.count = c;
      }
      p.sparse = counts.size() == 1;
    }
  }
  return out;
}

InfgramDistribution Infgram::Next(const std::vector<int32_t>& context) const {
  InfgramDistribution d;
  const int64_t end = static_cast<int64_t>(context.size());
  d.suffix_tokens = LongestSuffix(context.data(), end);
  d.counts = NextCounts(context.data() + end - d.suffix_tokens, d.suffix_tokens);
  for (const auto& tc : d.counts) d.total += tc.second;
  return d;
}

}  // namespace rag::retriever

#include "retriever/token_counts.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <string_view>
#include <vector>

#include "common/binary_file.h"
#include "common/file_util.h"
#include "common/status.h"
#include "retriever/chunk_store.h"

namespace rag::retriever {
namespace {

constexpr Magic kCountsMagic = {'R', 'A', 'G', 'S', 'A', '0', '0', '1'};
constexpr uint32_t kVersion = 1;
constexpr size_t kHeaderBytes = 8 + 4 + 4 + 8 + 8 + 8;

// -1, 0, 1 as the suffix at `pos` (at most `len` tokens, it ends there) is
// below, a prefix-match of, or above `q` on q's first `n` tokens.
int CompareSuffix(const int32_t* tokens, int64_t pos, int64_t len, const int32_t* q, int64_t n) {
  const int64_t m = std::min(len, n);
  for (int64_t i = 0; i < m; ++i) {
    if (tokens[pos + i] != q[i]) return tokens[pos + i] < q[i] ? -1 : 1;
  }
  return len < n ? -1 : 0;
}

}  // namespace

absl::StatusOr<TokenCounts> TokenCounts::Build(std::vector<std::vector<int32_t>> documents) {
  TokenCounts c;
  int64_t total = 0;
  for (const auto& d : documents) total += static_cast<int64_t>(d.size());
  if (total > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError("too many tokens for a suffix array: " + std::to_string(total));
  }
  c.starts_.reserve(documents.size() + 1);
  c.tokens_.reserve(static_cast<size_t>(total));
  c.starts_.push_back(0);
  for (auto& d : documents) {
    for (int32_t t : d) {
      if (t < 0) return absl::InvalidArgumentError("negative token id " + std::to_string(t));
    }
    c.tokens_.insert(c.tokens_.end(), d.begin(), d.end());
    c.starts_.push_back(static_cast<int64_t>(c.tokens_.size()));
    std::vector<int32_t>().swap(d);
  }
  c.ends_.resize(c.tokens_.size());
  for (size_t d = 0; d + 1 < c.starts_.size(); ++d) {
    for (int64_t p = c.starts_[d]; p < c.starts_[d + 1]; ++p) c.ends_[static_cast<size_t>(p)] = static_cast<int32_t>(c.starts_[d + 1]);
  }
  c.suffixes_.resize(c.tokens_.size());
  for (size_t i = 0; i < c.suffixes_.size(); ++i) c.suffixes_[i] = static_cast<int32_t>(i);
  const int32_t* t = c.tokens_.data();
  const int32_t* ends = c.ends_.data();
  // Sorted on the first kMaxMatch tokens, ties (longer repeats) by position:
  // a total order, so the array is a pure function of the corpus.
  std::sort(c.suffixes_.begin(), c.suffixes_.end(), [&](int32_t a, int32_t b) {
    const int64_t la = std::min<int64_t>(ends[a] - a, kMaxMatch), lb = std::min<int64_t>(ends[b] - b, kMaxMatch);
    const int64_t m = std::min(la, lb);
    for (int64_t i = 0; i < m; ++i) {
      if (t[a + i] != t[b + i]) return t[a + i] < t[b + i];
    }
    if (la != lb) return la < lb;
    return a < b;
  });
  return c;
}

absl::Status TokenCounts::CheckQuery(const std::vector<int32_t>& query) const {
  if (query.empty()) return absl::InvalidArgumentError("the token sequence to count is empty");
  if (static_cast<int64_t>(query.size()) > kMaxMatch) {
    return absl::InvalidArgumentError("the token sequence to count has " + std::to_string(query.size()) +
                                      " tokens; the limit is " + std::to_string(kMaxMatch));
  }
  return absl::OkStatus();
}

std::pair<int64_t, int64_t> TokenCounts::Range(const int32_t* query, int64_t n) const {
  const int32_t* t = tokens_.data();
  auto cmp = [&](int32_t pos) { return CompareSuffix(t, pos, ends_[static_cast<size_t>(pos)] - pos, query, n); };
  const auto first = std::partition_point(suffixes_.begin(), suffixes_.end(), [&](int32_t pos) { return cmp(pos) < 0; });
  const auto last = std::partition_point(first, suffixes_.end(), [&](int32_t pos) { return cmp(pos) == 0; });
  return {first - suffixes_.begin(), last - suffixes_.begin()};
}

std::pair<int64_t, int64_t> TokenCounts::ContinuationRange(const int32_t* context, int64_t n) const {
  const auto [first, last] = Range(context, n);
  // Within the range the suffixes that are exactly the context (they end
  // their document) sort first: shorter before longer (Build's order).
  const auto begin = suffixes_.begin();
  const auto cont = std::partition_point(begin + first, begin + last, [&](int32_t pos) {
    return ends_[static_cast<size_t>(pos)] - pos <= n;
  });
  return {cont - begin, last};
}

int64_t TokenCounts::CountSpan(const int32_t* tokens, int64_t n) const {
  const auto [first, last] = Range(tokens, n);
  return last - first;
}

TokenCounts::Followers TokenCounts::FollowersOf(const int32_t* context, int64_t n) const {
  const auto [first, last] = ContinuationRange(context, n);
  Followers f;
  f.total = last - first;
  // The range is sorted by the next token: one token iff its ends agree.
  f.one_token = first < last && tokens_[static_cast<size_t>(suffixes_[static_cast<size_t>(first)] + n)] ==
                                    tokens_[static_cast<size_t>(suffixes_[static_cast<size_t>(last - 1)] + n)];
  return f;
}

std::vector<std::pair<int32_t, int64_t>> TokenCounts::NextTokenCounts(const int32_t* context, int64_t n) const {
  std::vector<std::pair<int32_t, int64_t>> out;
  const auto [first, last] = ContinuationRange(context, n);
  // The range is sorted by the token after the context (n < kMaxMatch, so
  // Build compared it): each next token is one run, found by binary search.
  const auto begin = suffixes_.begin();
  auto next = [&](int32_t pos) { return tokens_[static_cast<size_t>(pos + n)]; };
  for (auto it = begin + first, end = begin + last; it != end;) {
    const int32_t token = next(*it);
    const auto run_end = std::partition_point(it, end, [&](int32_t pos) { return next(pos) <= token; });
    out.emplace_back(token, run_end - it);
    it = run_end;
  }
  return out;
}

absl::StatusOr<int64_t> TokenCounts::Count(const std::vector<int32_t>& query) const {
  RAG_RETURN_IF_ERROR(CheckQuery(query));
  return CountSpan(query.data(), static_cast<int64_t>(query.size()));
}

absl::StatusOr<std::vector<int64_t>> TokenCounts::Documents(const std::vector<int32_t>& query, int64_t limit) const {
  RAG_RETURN_IF_ERROR(CheckQuery(query));
  const auto [first, last] = Range(query.data(), static_cast<int64_t>(query.size()));
  std::vector<int64_t> docs;
  for (int64_t i = first; i < last; ++i) {
    const int64_t pos = suffixes_[static_cast<size_t>(i)];
    docs.push_back(std::upper_bound(starts_.begin(), starts_.end(), pos) - starts_.begin() - 1);
  }
  std::sort(docs.begin(), docs.end());
  docs.erase(std::unique(docs.begin(), docs.end()), docs.end());
  if (static_cast<int64_t>(docs.size()) > limit) docs.resize(static_cast<size_t>(std::max<int64_t>(0, limit)));
  return docs;
}

absl::Status TokenCounts::Save(const std::string& path) const {
  // Written from the arrays in place: a copy of the payload was the peak of
  // `rag build` on Brown (docs/results.md, issue 24).
  const std::vector<std::string_view> payload = {
      {reinterpret_cast<const char*>(starts_.data()), starts_.size() * sizeof(int64_t)},
      {reinterpret_cast<const char*>(tokens_.data()), tokens_.size() * sizeof(int32_t)},
      {reinterpret_cast<const char*>(suffixes_.data()), suffixes_.size() * sizeof(int32_t)}};
  RAG_ASSIGN_OR_RETURN(StreamingChecksum checksum, StreamingChecksum::Create());
  for (std::string_view part : payload) checksum.Update(part.data(), part.size());
  std::string header(kHeaderBytes, '\0');
  PutMagic(header.data(), kCountsMagic);
  PutU32(header.data() + 8, kVersion);
  PutU32(header.data() + 12, static_cast<uint32_t>(kMaxMatch));
  PutI64(header.data() + 16, documents());
  PutI64(header.data() + 24, tokens());
  PutU64(header.data() + 32, checksum.Digest());
  std::vector<std::string_view> parts = {header};
  parts.insert(parts.end(), payload.begin(), payload.end());
  return WriteFileAtomicParts(path, parts);
}

absl::StatusOr<TokenCounts> TokenCounts::Load(const std::string& path) {
  RAG_ASSIGN_OR_RETURN(std::string data, ReadFile(path));
  const std::string what = "count index '" + path + "'";
  if (data.size() < kHeaderBytes || !HasMagic(data.data(), data.size(), kCountsMagic)) {
    return absl::DataLossError(what + ": not a count index (bad magic or truncated header)");
  }
  const uint32_t version = GetU32(data.data() + 8);
  const uint32_t max_match = GetU32(data.data() + 12);
  const int64_t docs = GetI64(data.data() + 16);
  const int64_t toks = GetI64(data.data() + 24);
  const uint64_t sum = GetU64(data.data() + 32);
  if (version != kVersion) {
    return absl::FailedPreconditionError(what + ": format version " + std::to_string(version) + ", this build reads " +
                                         std::to_string(kVersion));
  }
  if (max_match != kMaxMatch || docs < 0 || toks < 0 || toks > std::numeric_limits<int32_t>::max() ||
      docs > (int64_t{1} << 40)) {
    return absl::DataLossError(what + ": impossible header");
  }
  const size_t expected = kHeaderBytes + static_cast<size_t>(docs + 1) * 8 + static_cast<size_t>(toks) * 8;
  if (data.size() != expected) {
    return absl::DataLossError(what + ": " + std::to_string(data.size()) + " bytes, the header says " +
                               std::to_string(expected) + (data.size() < expected ? " (truncated)" : ""));
  }
  if (Checksum64(data.data() + kHeaderBytes, data.size() - kHeaderBytes) != sum) {
    return absl::DataLossError(what + ": checksum mismatch (corrupt file)");
  }
  TokenCounts c;
  const char* p = data.data() + kHeaderBytes;
  c.starts_.resize(static_cast<size_t>(docs + 1));
  std::memcpy(c.starts_.data(), p, c.starts_.size() * 8);
  p += c.starts_.size() * 8;
  c.tokens_.resize(static_cast<size_t>(toks));
  std::memcpy(c.tokens_.data(), p, c.tokens_.size() * 4);
  p += c.tokens_.size() * 4;
  c.suffixes_.resize(static_cast<size_t>(toks));
  std::memcpy(c.suffixes_.data(), p, c.suffixes_.size() * 4);
  // Structural checks a checksum-valid file from a buggy writer could fail.
  if (c.starts_.front() != 0 || c.starts_.back() != toks || !std::is_sorted(c.starts_.begin(), c.starts_.end())) {
    return absl::DataLossError(what + ": bad document starts");
  }
  for (int32_t s : c.suffixes_) {
    if (s < 0 || s >= toks) return absl::DataLossError(what + ": suffix position out of range");
  }
  c.ends_.resize(c.tokens_.size());
  for (size_t d = 0; d + 1 < c.starts_.size(); ++d) {
    for (int64_t q = c.starts_[d]; q < c.starts_[d + 1]; ++q) c.ends_[static_cast<size_t>(q)] = static_cast<int32_t>(c.starts_[d + 1]);
  }
  return c;
}

absl::StatusOr<std::vector<std::vector<int32_t>>> DocumentTokens(const ChunkStore& store) {
  std::vector<std::vector<int32_t>> docs(static_cast<size_t>(store.num_documents()));
  absl::Status status;
  RAG_RETURN_IF_ERROR(store.ForEachChunk(0, [&](const ChunkRecord& rec) {
    // Chunks tile their document in order.
    if (rec.doc_index < 0 || rec.doc_index >= static_cast<int64_t>(docs.size()) ||
        static_cast<int64_t>(docs[static_cast<size_t>(rec.doc_index)].size()) != rec.offset) {
      status = absl::DataLossError("chunk " + std::to_string(rec.id) + " does not continue its document");
      return false;
    }
    auto& d = docs[static_cast<size_t>(rec.doc_index)];
    d.insert(d.end(), rec.tokens.begin(), rec.tokens.end());
    return true;
  }));
  RAG_RETURN_IF_ERROR(status);
  return docs;
}

}  // namespace rag::retriever

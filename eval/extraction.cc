#include "eval/extraction.h"

#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "common/status.h"

namespace rag::eval {

absl::StatusOr<int64_t> LongestVerbatimRun(const std::vector<int32_t>& tokens, const retriever::TokenCounts& counts) {
  // Runs found from a start only grow to the right, so one pass with two
  // pointers: extend while the run occurs, else move the start.
  const int64_t n = static_cast<int64_t>(tokens.size());
  int64_t best = 0, start = 0, end = 0;  // tokens[start, end) occurs
  while (start < n) {
    if (end < start) end = start;
    while (end < n && end - start < retriever::TokenCounts::kMaxMatch) {
      std::vector<int32_t> run(tokens.begin() + start, tokens.begin() + end + 1);
      RAG_ASSIGN_OR_RETURN(int64_t c, counts.Count(run));
      if (c == 0) break;
      ++end;
    }
    best = std::max(best, end - start);
    if (end == n) break;
    ++start;
  }
  return best;
}

double ZlibBits(const std::string& text) {
  uLongf size = compressBound(static_cast<uLong>(text.size()));
  std::vector<Bytef> out(size);
  if (compress2(out.data(), &size, reinterpret_cast<const Bytef*>(text.data()), static_cast<uLong>(text.size()),
                Z_BEST_COMPRESSION) != Z_OK) {
    return 8.0 * static_cast<double>(text.size());
  }
  return 8.0 * static_cast<double>(size);
}

absl::StatusOr<ExtractionReport> EvaluateExtraction(const retriever::TokenCounts& counts, const Sampler& sample,
                                                    const Perplexity& perplexity, const ExtractionOptions& o,
                                                    const std::function<void(int64_t)>& on_sample) {
  if (o.samples < 1 || o.tokens < 1 || o.match_tokens < 1 || o.top < 1) {
    return absl::InvalidArgumentError("samples, tokens, match tokens and top must be >= 1");
  }
  ExtractionReport report;
  for (int64_t i = 0; i < o.samples; ++i) {
    ExtractionSample s;
    s.index = i;
    RAG_ASSIGN_OR_RETURN(auto drawn, sample(i, o.tokens));
    s.tokens = std::move(drawn.first);
    s.text = std::move(drawn.second);
    if (!s.text.empty()) {
      RAG_ASSIGN_OR_RETURN(s.perplexity, perplexity(s.text));
    } else {
      s.perplexity = std::numeric_limits<double>::infinity();
    }
    s.zlib_bits = ZlibBits(s.text);
    RAG_ASSIGN_OR_RETURN(s.longest_match, LongestVerbatimRun(s.tokens, counts));
    s.extracted = s.longest_match >= o.match_tokens;
    report.extracted += s.extracted;
    report.samples.push_back(std::move(s));
    if (on_sample) on_sample(i + 1);
  }
  // Carlini et al.: low perplexity, and low log-perplexity per bit of zlib
  // entropy, mark the samples most likely to be memorized.
  const auto& all = report.samples;
  auto rank = [&](const std::string& metric, const std::function<double(const ExtractionSample&)>& key) {
    std::vector<size_t> order(all.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return key(all[a]) < key(all[b]); });
    ExtractionRanking r;
    r.metric = metric;
    r.top = std::min<int64_t>(o.top, static_cast<int64_t>(order.size()));
    for (int64_t j = 0; j < r.top; ++j) r.extracted_in_top += all[order[static_cast<size_t>(j)]].extracted;
    report.rankings.push_back(r);
  };
  rank("perplexity", [](const ExtractionSample& s) { return s.perplexity; });
  rank("zlib_ratio", [](const ExtractionSample& s) { return std::log(s.perplexity) / std::max(1.0, s.zlib_bits); });
  return report;
}

}  // namespace rag::eval

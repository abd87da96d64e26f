#include "eval/overlap.h"

#include <algorithm>
#include <cmath>
#include <string>

namespace rag::eval {

const char* OverlapArmName(OverlapArm arm) {
  switch (arm) {
    case OverlapArm::kOn:
      return "on";
    case OverlapArm::kOff:
      return "off";
    case OverlapArm::kRandom:
      return "random";
  }
  return "on";
}

int OverlapBucketOf(double overlap) {
  return std::clamp(static_cast<int>(std::floor(overlap * kOverlapBuckets)), 0, kOverlapBuckets - 1);
}

double OverlapBucket::perplexity(OverlapArm arm) const {
  return tokens > 0 ? std::exp(nll_sum[static_cast<int>(arm)] / static_cast<double>(tokens)) : 0.0;
}

absl::Status OverlapTally::Add(const DocumentOverlapScores& scores, int64_t chunk_tokens) {
  const size_t n = scores.logprobs[0].size();
  for (const auto& arm : scores.logprobs) {
    if (arm.size() != n) {
      return absl::InvalidArgumentError("the arms scored different numbers of tokens (" + std::to_string(arm.size()) +
                                        " vs " + std::to_string(n) + ")");
    }
  }
  const int64_t chunks = (static_cast<int64_t>(n) + chunk_tokens - 1) / chunk_tokens;
  if (static_cast<int64_t>(scores.overlaps.size()) != chunks) {
    return absl::InvalidArgumentError(std::to_string(scores.overlaps.size()) + " chunk overlaps for " +
                                      std::to_string(chunks) + " chunks");
  }
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t from = c * chunk_tokens, to = std::min<int64_t>(static_cast<int64_t>(n), from + chunk_tokens);
    const float overlap = scores.overlaps[static_cast<size_t>(c)];
    if (overlap < 0) {
      unbucketed_tokens += to - from;
      continue;
    }
    for (OverlapBucket* b : {&buckets[static_cast<size_t>(OverlapBucketOf(overlap))], &all}) {
      b->chunks += 1;
      b->tokens += to - from;
      for (int a = 0; a < kNumOverlapArms; ++a) {
        for (int64_t i = from; i < to; ++i) b->nll_sum[a] -= scores.logprobs[a][static_cast<size_t>(i)];
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace rag::eval

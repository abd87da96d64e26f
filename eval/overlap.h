// RETRO's analysis by overlap (Borgeaud et al. 2022, section 4.4 and
// Figure 6): where do retrieval's gains come from? Every evaluated chunk C
// gets r(C) = the longest run of tokens C shares with one of the neighbours
// it attends to, over |C| (ScoreResponse.chunk_overlaps); chunks are
// bucketed by r(C) in eighths, and each bucket's perplexity is reported
// with retrieval on, off and with random chunks, so a model that uses its
// neighbours gains most where they hold the chunk. The buckets always come
// from the neighbours retrieval "on" attends to.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"

namespace rag::eval {

// The arms compared: RETRO with retrieval on, off, and with random chunks.
enum class OverlapArm { kOn, kOff, kRandom };
inline constexpr int kNumOverlapArms = 3;
// "on", "off", "random".
const char* OverlapArmName(OverlapArm arm);

// Buckets of r(C): [0, 1/8), [1/8, 2/8), ..., [7/8, 1].
inline constexpr int kOverlapBuckets = 8;
int OverlapBucketOf(double overlap);

// One document's scores: per-token log-probs of each arm (same tokens) and
// the per-chunk overlaps of the "on" arm (-1 for a chunk with no neighbours,
// which belongs to no bucket).
struct DocumentOverlapScores {
  std::array<std::vector<float>, kNumOverlapArms> logprobs;
  std::vector<float> overlaps;
};

struct OverlapBucket {
  int64_t chunks = 0;
  int64_t tokens = 0;
  std::array<double, kNumOverlapArms> nll_sum{};  // nats, by arm
  double perplexity(OverlapArm arm) const;
};

struct OverlapTally {
  std::array<OverlapBucket, kOverlapBuckets> buckets;
  OverlapBucket all;  // every bucketed chunk
  int64_t unbucketed_tokens = 0;  // tokens of chunks with no neighbours (a document's first)
  // Adds one document scored in chunks of `chunk_tokens`. InvalidArgument
  // when the arms' token counts differ or the overlaps do not cover them.
  absl::Status Add(const DocumentOverlapScores& scores, int64_t chunk_tokens);
};

}  // namespace rag::eval

// RetroMode: a RETRO model ("retro") whose chunks attend to neighbours
// retrieved from the served index with the chunk before them (or none, or
// random chunks: RetroParams::retrieval). Owns how the engine lays out
// RETRO neighbour sets (search with over-fetch, leakage filter, alignment,
// padding to K x R) and prompts (padding so a prompt ends a chunk).
// Needs a RETRO model; retrieval on or random also an index. Thread-safe.
#pragma once

#include <cstdint>
#include <vector>

#include "lm/retro_inference.h"
#include "services/mode_strategy.h"

namespace rag::services {

class RetroMode : public ModeStrategy {
 public:
  // served.retro must be set.
  explicit RetroMode(ServedModels served) : served_(served) {}

  absl::StatusOr<std::vector<float>> Score(const ScoreParams& p, const std::vector<lm::TokenId>& ids,
                                           v1::ScoreResponse* response) const override;
  absl::StatusOr<torch::Tensor> NextToken(const NextTokenParams& p, const std::vector<lm::TokenId>& ids) const override;
  absl::StatusOr<std::vector<lm::TokenId>> Generate(const GenerateParams& p, const std::vector<lm::TokenId>& prompt,
                                                    const lm::TokenCallback& emit,
                                                    v1::GenerateResponse* done) const override;

 private:
  // The neighbour set of every chunk of `ids` but the last (whose set no
  // token of `ids` attends to): retrieved with the chunk, minus neighbours
  // sharing a leakage_filter-token run with the chunk after it; or random
  // chunks; sets.size() == number of chunks. Adds the filtered count to
  // *filtered. The first `padding` ids are layout padding, left out of chunk
  // 0's query.
  absl::StatusOr<std::vector<lm::NeighbourSet>> RetroSets(const std::vector<lm::TokenId>& ids, const RetroParams& p,
                                                          int64_t* filtered, int64_t padding = 0) const;
  // ScoreResponse.chunk_overlaps of `ids` (laid out from a chunk boundary)
  // and the sets RetroSets gave it.
  std::vector<float> ChunkOverlaps(const std::vector<lm::TokenId>& ids, const std::vector<lm::NeighbourSet>& sets) const;

  ServedModels served_;
};

}  // namespace rag::services

// RETRO's leakage filter (Borgeaud et al. 2022, section 2.6 / appendix):
// a retrieved neighbour that shares a long run of tokens with the chunk it
// helps predict is the evaluation text itself (or a copy of it) rather than
// knowledge, so evaluations report perplexity with such neighbours dropped.
#pragma once

#include <cstdint>
#include <vector>

#include "lm/tokenizer.h"  // TokenId (no LibTorch)

namespace rag::retriever {

// The run length at which a neighbour counts as leaked when a request does
// not say (RetroOptions.leakage_filter unset): RETRO's evaluations drop
// neighbours sharing 32 or more tokens with the predicted chunk.
inline constexpr int kDefaultLeakageRun = 32;

// True when `a` and `b` share a run of at least `run` consecutive equal
// tokens (run >= 1). O(|a| + |b|) expected: hashes of every run-gram of `a`
// are looked up for every run-gram of `b`, and hits are verified.
bool SharesTokenRun(const std::vector<lm::TokenId>& a, const std::vector<lm::TokenId>& b, int64_t run);
bool SharesTokenRun(const lm::TokenId* a, int64_t na, const lm::TokenId* b, int64_t nb, int64_t run);

// The length of the longest run of consecutive tokens that `a` and `b` share
// (0 when they share no token): RETRO's overlap of a chunk with a neighbour
// (Borgeaud et al. 2022, section 4.4) is this over the chunk's length.
// O(|a| |b|) time, O(|b|) memory: for a chunk and its neighbours.
int64_t LongestCommonRun(const lm::TokenId* a, int64_t na, const lm::TokenId* b, int64_t nb);

}  // namespace rag::retriever

// kNN-LM search that follows pointers where it can (RetoMaton: Alon et al.
// 2022, "Neuro-Symbolic Language Modeling with Automaton-augmented
// Retrieval"): a datastore key is a position of a training document, so the
// neighbours of position i whose next token is the one that did follow
// point to keys that continue their documents the way the text did, and
// those keys are candidates for position i + 1 without a search.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "retriever/datastore.h"
#include "retriever/searcher.h"

namespace rag::retriever {

struct PointerSearchOptions {
  KeySearchOptions search;
  // Position i + 1 takes the keys its pointers lead to, instead of a search,
  // when there are at least this many; 0 searches every position.
  // Default: 0
  int min_pointers = 0;
  // Pointers make each position wait for the one before it, so the text is
  // cut into runs of at least min_run positions, at most `lanes` of them,
  // advanced side by side: each step searches the runs that need it in one
  // batch (one FAISS call). The first position of each run is always
  // searched. 128 lanes keep a batch of a long text at 20 queries or more
  // (FAISS 1.7.3 switches its coarse quantizer from BLAS to a scalar loop
  // below 20) while about half the positions follow pointers.
  // Defaults: 128 and 32
  int lanes = 128;
  int min_run = 32;
};

// The neighbours of each of the n queries ([n, keys.dim()] float32, query i
// the state that predicted tokens[i]) into (*out)[i], nearest first. Where
// query i - 1's neighbours hold at least options.min_pointers keys whose
// value is tokens[i - 1], (*out)[i] is the keys they lead to
// (KeySearcher::Successors, exact distances) and query i is not searched;
// the rest are searched with options.search. *searched counts the queries
// that were. Errors as KeySearcher::Search and ::Successors;
// InvalidArgument for n < 0, null inputs with n > 0, min_pointers < 0,
// lanes < 1 or min_run < 1.
absl::Status SearchFollowingPointers(const KeySearcher& keys, const float* queries, const int32_t* tokens, int64_t n,
                                     const PointerSearchOptions& options,
                                     std::vector<std::vector<DatastoreNeighbour>>* out, int64_t* searched);

}  // namespace rag::retriever

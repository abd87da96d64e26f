// What serving needs of an index, whether this process holds it (Retriever,
// LocalKeySearcher) or a front fans it out to shard servers
// (services/shard_set.h): nearest chunks of queries, and nearest kNN-LM
// datastore keys of hidden states. The mode strategies and the RETRO
// neighbour sets take these interfaces, so one code path serves a single
// index and a sharded one. Implementations are thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "retriever/chunk_store.h"
#include "retriever/datastore.h"

namespace rag::retriever {

struct Neighbour;
struct SearchOptions;

class ChunkSearcher {
 public:
  virtual ~ChunkSearcher() = default;
  // Neighbours of each query (token ids), nearest first (Retriever::Search).
  virtual absl::StatusOr<std::vector<std::vector<Neighbour>>> Search(const std::vector<std::vector<Token>>& queries,
                                                                     const SearchOptions& options) const = 0;
  // The same for `nq` query vectors already embedded ([nq, dim()] float32).
  virtual absl::StatusOr<std::vector<std::vector<Neighbour>>> SearchEmbeddings(const float* embeddings, int64_t nq,
                                                                               const SearchOptions& options) const = 0;
  // Width of the embedding space.
  virtual int dim() const = 0;
};

struct KeySearchOptions {
  int k = 1024;  // keys per query. Default: 1024 (kNN-LM's)
  int nprobe = 16;  // IVF lists visited. Default: 16
  // Recompute distances from the stored fp16 keys. Default: false
  bool exact = false;
  // Keys of this document are never returned; "" = none. Default: ""
  std::string exclude_doc_id;
};

class KeySearcher {
 public:
  virtual ~KeySearcher() = default;
  // The k nearest keys of each of the nq queries ([nq, dim()] float32),
  // nearest first, into (*out)[q]. Errors as Datastore::Search.
  virtual absl::Status Search(const float* queries, int64_t nq, const KeySearchOptions& options,
                              std::vector<std::vector<DatastoreNeighbour>>* out) const = 0;
  // RetoMaton's pointers from `from` (Datastore::Successors): the keys that
  // follow those of its neighbours whose value is `token`, with exact
  // distances to `query`. Unimplemented by searchers that do not hold the
  // keys (a front's shards each hold a part).
  virtual absl::Status Successors(const float* query, const std::vector<DatastoreNeighbour>& from, int32_t token,
                                  std::vector<DatastoreNeighbour>* out) const;
  // Width of the keys (the LM's hidden size).
  virtual int dim() const = 0;
};

// The KeySearcher of one datastore: the excluded document's id is looked up
// in the index's chunk store (an id it does not hold excludes nothing).
// Both must outlive it.
class LocalKeySearcher : public KeySearcher {
 public:
  LocalKeySearcher(const Datastore* datastore, const ChunkStore* store) : datastore_(datastore), store_(store) {}
  absl::Status Search(const float* queries, int64_t nq, const KeySearchOptions& options,
                      std::vector<std::vector<DatastoreNeighbour>>* out) const override;
  absl::Status Successors(const float* query, const std::vector<DatastoreNeighbour>& from, int32_t token,
                          std::vector<DatastoreNeighbour>* out) const override;
  int dim() const override;

 private:
  const Datastore* datastore_;
  const ChunkStore* store_;
};

}  // namespace rag::retriever

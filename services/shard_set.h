// ShardSet: the index of a sharded front (`rag serve --shards A,B,...`): N
// shard servers, each serving the documents ShardOfDocument gives it
// (retriever/shard.h), searched as one index. At start it reads every
// shard's manifest (Index.Stats) and refuses a set whose shards disagree on
// model, tokenizer, embedder, chunking, factory or trained index, or that
// does not hold shards 0..N-1 exactly once. A query is embedded once, here;
// the vectors (or, for kNN-LM, the hidden states) go to every shard at once
// over the internal Shard service with the calling request's deadline, and
// the shards' canonical top-k lists are merged into the one a single index
// over all their documents returns. A shard that fails fails the call,
// naming it: never a silent partial answer. Thread-safe.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "lm/embedder.h"
#include "proto/rag.pb.h"
#include "retriever/retriever.h"
#include "retriever/searcher.h"
#include "services/client.h"

namespace rag::services {

// A front's chunk ids: the shard in bits 48 and up, the shard's own chunk id
// below (proto/rag.proto, Neighbour.chunk_id).
inline constexpr int kShardIdShift = 48;

struct ShardSetOptions {
  ClientSecurity security;  // toward the shards (their TLS and token). Default: plaintext, no token
  // Seconds to wait for each shard at start. Default: 10
  double connect_timeout_s = 10;
  // Deadline of a call to the shards when the request being served has none.
  // Default: 60
  double rpc_timeout_s = 60;
};

// What the front serves, which every shard must have been built with.
struct FrontIdentity {
  std::string model_hash;
  std::string tokenizer_hash;
  std::string embedder_hash;
  int key_dim = 0;  // the LM's hidden size: the width of kNN-LM keys
};

class ShardSet : public retriever::ChunkSearcher {
 public:
  // Connects to `addresses` (host:port, any order) and checks them (see the
  // file comment). Unavailable naming a shard that does not answer;
  // FailedPrecondition naming the shard and the field that disagrees.
  // `embedder` (not owned, outlives the set) embeds the queries.
  static absl::StatusOr<std::unique_ptr<ShardSet>> Open(const std::vector<std::string>& addresses,
                                                        const FrontIdentity& front, lm::Embedder* embedder,
                                                        const ShardSetOptions& options);
  ~ShardSet() override;

  // Dense only: "bm25" needs collection statistics no shard has alone, so
  // it is FailedPrecondition here.
  absl::StatusOr<std::vector<std::vector<retriever::Neighbour>>> Search(
      const std::vector<std::vector<retriever::Token>>& queries, const retriever::SearchOptions& options) const override;
  absl::StatusOr<std::vector<std::vector<retriever::Neighbour>>> SearchEmbeddings(
      const float* embeddings, int64_t nq, const retriever::SearchOptions& options) const override;
  int dim() const override;

  // The kNN-LM datastore spread over the shards; null unless every shard
  // has one.
  const retriever::KeySearcher* keys() const;

  // Every shard's Stats, counts summed; manifest_json holds
  // {"shards": [each shard's manifest]}.
  absl::StatusOr<v1::StatsResponse> Stats() const;
  // Sends `document` to the shard that owns its id and returns once that
  // shard has acknowledged it (durable there); adds the shard's counts to
  // *totals.
  absl::Status AddDocument(const v1::Document& document, v1::AddDocumentsResponse* totals) const;

  int size() const;

  // One connected shard (shard_set.cc).
  struct Shard;

 private:
  class Keys;
  ShardSet();

  std::vector<std::unique_ptr<Shard>> shards_;  // by shard number
  lm::Embedder* embedder_ = nullptr;
  ShardSetOptions options_;
  int dim_ = 0;
  std::unique_ptr<Keys> keys_;  // when every shard has a datastore
};

}  // namespace rag::services

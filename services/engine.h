// Engine: the served language model and (optionally) index, answering the
// rag.v1 requests in-process. `rag serve` puts a gRPC server in front of one;
// the in-process forms of `rag query|score|generate|eval|add` call one
// directly. Every request is validated here (services/request_parsing.h:
// InvalidArgument naming the field, ResourceExhausted over a limit), so both
// forms fail the same way; the scoring rpcs then dispatch to the strategy
// of the request's mode (services/{lm,knnlm,retro,infgram,ralm}_mode.h).
// Thread-safe: any number of requests at once.
#pragma once

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/utf8.h"
#include "lm/embedder.h"
#include "lm/language_model.h"
#include "lm/retro_model.h"
#include "proto/rag.pb.h"
#include "retriever/datastore.h"
#include "retriever/retriever.h"
#include "services/backend.h"
#include "services/mode_strategy.h"
#include "services/request_parsing.h"
#include "services/shard_set.h"

namespace rag::services {

struct EngineOptions {
  std::string model_dir;        // required
  std::string index_dir;        // "" serves the model only
  // A sharded front: the addresses of the shard servers (any order) whose
  // indexes together form the served index; exclusive with index_dir.
  // Default: none
  std::vector<std::string> shards;
  ShardSetOptions shard_options;  // toward the shards
  std::string embedder_path;    // TorchScript encoder the index was built with; "" = the LM's
  bool writable_index = false;  // allow AddDocuments. Default: false
  // Concurrent Search (and AddDocuments) calls share the embedder's forward
  // passes (lm::MakeBatchingEmbedder). Default: true
  bool batch_embeddings = true;
  EngineLimits limits;
};

class Engine : public Backend {
 public:
  // Opens the model, and the index when options.index_dir is set (refused
  // when it was built by another model, tokenizer or embedder).
  static absl::StatusOr<std::unique_ptr<Engine>> Open(const EngineOptions& options);
  ~Engine() override;

  absl::StatusOr<v1::SearchResponse> Search(const v1::SearchRequest& request) override;
  absl::StatusOr<v1::ScoreResponse> Score(const v1::ScoreRequest& request) override;
  absl::StatusOr<v1::NextTokenResponse> NextToken(const v1::NextTokenRequest& request) override;
  absl::StatusOr<v1::GenerateResponse> Generate(const v1::GenerateRequest& request,
                                                const GenerateCallback& on_token) override;
  absl::StatusOr<v1::InfoResponse> Info() override;
  // One short Score in every served mode and one Search: the first forward
  // passes allocate and pick kernels, the first searches fault in the
  // mapped index and datastore. `rag serve` runs it before health says
  // SERVING, so the first client does not pay for it.
  absl::Status WarmUp();
  absl::StatusOr<v1::StatsResponse> Stats() override;
  // The internal Shard service (proto/rag.proto): searches of this server's
  // own index by vector and by kNN-LM key, for a sharded front.
  absl::StatusOr<v1::SearchResponse> SearchVectors(const v1::SearchVectorsRequest& request);
  // Each text's query vector ([texts, dim] float32, row-major) as Search
  // embeds it before searching: what SearchVectors takes. The texts are
  // checked as Search's are; FailedPrecondition without an index.
  absl::StatusOr<std::vector<float>> Embed(const std::vector<std::string>& texts);
  absl::StatusOr<v1::SearchKeysResponse> SearchKeys(const v1::SearchKeysRequest& request);
  // AddDocument for each, then FinishAdd.
  absl::StatusOr<v1::AddDocumentsResponse> AddDocuments(const std::vector<v1::Document>& documents,
                                                        const AddCallback& on_progress) override;

  // One document of an AddDocuments stream: durable and searchable on
  // return. Updates the counts in *totals (documents_added, chunks_added,
  // documents_skipped).
  absl::Status AddDocument(const v1::Document& document, v1::AddDocumentsResponse* totals);
  // Saves the index after adds and fills the index totals of *totals.
  absl::Status FinishAdd(v1::AddDocumentsResponse* totals);

  const EngineOptions& options() const { return options_; }
  // The plain LM (a RETRO model directory's base LM): lm and knnlm modes,
  // the index's embedder.
  lm::LanguageModel& model() { return *model_; }
  // The RETRO model when the model directory holds one, else null.
  lm::RetroModel* retro() { return retro_.get(); }
  bool has_index() const { return searcher_ != nullptr; }
  // The server-side embedding batcher's counts (EngineOptions.batch_embeddings
  // with an index), else nullopt.
  std::optional<lm::BatchingStats> embedding_batches() const {
    if (batching_embedder_ == nullptr) return std::nullopt;
    return lm::BatchingStatsOf(*batching_embedder_);
  }

 private:
  // Counts a Search, Score, NextToken or Generate call while it runs.
  class ActiveCall {
   public:
    explicit ActiveCall(std::atomic<int64_t>* n) : n_(n) { ++*n_; }
    ~ActiveCall() { --*n_; }
    ActiveCall(const ActiveCall&) = delete;
    ActiveCall& operator=(const ActiveCall&) = delete;

   private:
    std::atomic<int64_t>* n_;
  };

  Engine() = default;
  // What requests are checked against (limits, what is served).
  ParseContext parse_context() const;
  absl::Status NeedIndex(const char* rpc) const;
  // The Shard service's: an index held here, not behind a front.
  absl::Status NeedLocalIndex(const char* rpc) const;
  // The strategy of `mode` (ParseMode refuses a mode that is not served).
  const ModeStrategy& strategy(Mode mode) const { return *strategies_[static_cast<int>(mode)]; }
  // The datastore keys of a document's tokens: the LM's hidden states.
  absl::StatusOr<std::vector<float>> DocumentKeys(const std::vector<retriever::Token>& tokens) const;
  // kNN-LM over documents added to the live index: gives the datastore (if
  // any) the keys of stored document `doc_id` unless it has them (durable
  // when the index is writable).
  absl::Status AddDatastoreKeys(const std::string& doc_id);

  EngineOptions options_;
  std::unique_ptr<lm::LanguageModel> owned_model_;
  lm::LanguageModel* model_ = nullptr;  // owned_model_, or retro_'s base
  std::unique_ptr<lm::RetroModel> retro_;
  std::unique_ptr<lm::Embedder> embedder_;
  std::unique_ptr<lm::Embedder> batching_embedder_;  // over embedder_, when options.batch_embeddings
  std::unique_ptr<retriever::Retriever> retriever_;
  std::unique_ptr<retriever::Datastore> datastore_;  // INDEX_DIR/datastore, when built
  std::unique_ptr<retriever::LocalKeySearcher> local_keys_;  // over datastore_
  std::unique_ptr<ShardSet> shards_;                         // a front's index
  std::unique_ptr<CorpusCounts> counts_;                     // over retriever_'s documents (infgram)
  const retriever::ChunkSearcher* searcher_ = nullptr;       // retriever_ or shards_; null without an index
  const retriever::KeySearcher* keys_ = nullptr;             // local_keys_ or shards_'; null without a datastore
  std::string split_json_;
  std::unique_ptr<ModeStrategy> strategies_[kNumModes];  // by Mode; null for a mode not served
  std::atomic<int64_t> active_calls_{0};
};

}  // namespace rag::services

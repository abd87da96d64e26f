// Engine: the served language model and (optionally) index, answering the
// rag.v1 requests in-process. `rag serve` puts a gRPC server in front of one;
// the in-process forms of `rag query|score|generate|eval|add` call one
// directly. Every request is validated here (InvalidArgument naming the
// field, ResourceExhausted over a limit), so both forms fail the same way.
// Thread-safe: any number of requests at once.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "lm/embedder.h"
#include "lm/language_model.h"
#include "proto/rag.pb.h"
#include "lm/knnlm.h"
#include "lm/retro_inference.h"
#include "lm/retro_model.h"
#include "retriever/datastore.h"
#include "retriever/retriever.h"
#include "services/backend.h"

namespace rag::services {

// IVF lists a kNN-LM datastore search visits when a request leaves nprobe 0:
// on Brown, nprobe 4, 8 and 16 give the same perplexity within 0.2%, and
// the search, not the forward pass, sets kNN-LM's speed (bench_knnlm: at 4,
// 0.51 of the LM's scoring speed; at 8, 0.45).
inline constexpr int kDefaultKnnNprobe = 4;

struct EngineLimits {
  int64_t max_text_bytes = 1 << 20;  // any text or prompt. Default: 1 MiB
  int max_batch = 256;               // texts per Search. Default: 256
  int max_k = 4096;                  // neighbours per query. Default: 4096
  int max_top_n = 1000;              // NextToken.top_n. Default: 1000
  int max_generate_tokens = 1024;    // Generate.max_tokens. Default: 1024
  int64_t max_id_bytes = 1024;       // Document.id. Default: 1024
};

struct EngineOptions {
  std::string model_dir;        // required
  std::string index_dir;        // "" serves the model only
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
  absl::StatusOr<v1::StatsResponse> Stats() override;
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
  bool has_index() const { return retriever_ != nullptr; }

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
  absl::Status CheckText(const std::string& text, const char* field, bool allow_empty) const;
  // `k` (the request's `given`, its default applied) within [1, max_k].
  absl::Status CheckK(int k, int given) const;
  absl::Status CheckMode(const std::string& mode) const;
  // kNN-LM over documents added to the live index: gives the datastore the
  // keys of stored document `doc_id` unless it has them (durable when the
  // index is writable).
  absl::Status AddDatastoreKeys(const std::string& doc_id);
  // At open: the keys of every document added after the build that the
  // datastore lacks (a crash between the two appends, or a read-only
  // server, which keeps them in memory only).
  absl::Status CatchUpDatastore();
  // Validated kNN-LM parameters of a request (defaults filled in).
  struct KnnParams {
    lm::KnnOptions knn;
    int nprobe = kDefaultKnnNprobe;
    bool exact = false;
    int32_t exclude_doc = -1;
  };
  absl::StatusOr<KnnParams> ParseKnn(bool has_lambda, float lambda, bool has_temperature, float temperature, int k,
                                     int nprobe, bool exact, const std::string& exclude_doc_id) const;
  // Neighbours of `n` hidden states [n, D], in blocks (bounded memory).
  absl::Status SearchDatastore(const float* hidden, int64_t n, const KnnParams& p,
                               std::vector<std::vector<retriever::DatastoreNeighbour>>* out) const;
  // The kNN-LM next-token log-distribution [V] at one position: the
  // neighbours of `hidden` [D] mixed into `lm_logprobs` [V].
  absl::StatusOr<torch::Tensor> KnnDistribution(const torch::Tensor& hidden, const torch::Tensor& lm_logprobs,
                                                const KnnParams& p) const;
  absl::Status NeedIndex(const char* rpc) const;

  // Validated RETRO parameters of a request.
  struct RetroParams {
    std::string retrieval = "on";  // on, off, random
    int leakage_filter = 32;       // tokens; 0 = off
    std::string exclude_doc_id;
    std::string search_method = "dense";  // dense, bm25
  };
  absl::StatusOr<RetroParams> ParseRetro(const std::string& retrieval, bool has_leakage, int leakage,
                                         const std::string& exclude_doc_id,
                                         const std::string& search_method = "") const;
  // The neighbour set of every chunk of `ids` but the last (whose set no
  // token of `ids` attends to): retrieved with the chunk, minus neighbours
  // sharing a leakage_filter-token run with the chunk after it; or random
  // chunks; sets.size() == number of chunks. Adds the filtered count to *filtered.
  // The first `padding` ids are layout padding, left out of chunk 0's query.
  absl::StatusOr<std::vector<lm::NeighbourSet>> RetroSets(const std::vector<lm::TokenId>& ids, const RetroParams& p,
                                                          int64_t* filtered, int64_t padding = 0) const;
  // The RETRO set of neighbours `list` (chunk + continuation, padded to R).
  // The first K of `list` as a set, re-cut on `query` (the tokens that
  // retrieved them) as the model's align_neighbours says.
  lm::NeighbourSet ToNeighbourSet(const std::vector<retriever::Neighbour>& list,
                                  const std::vector<lm::TokenId>& query) const;

  EngineOptions options_;
  std::unique_ptr<lm::LanguageModel> owned_model_;
  lm::LanguageModel* model_ = nullptr;  // owned_model_, or retro_'s base
  std::unique_ptr<lm::RetroModel> retro_;
  std::unique_ptr<lm::Embedder> embedder_;
  std::unique_ptr<lm::Embedder> batching_embedder_;  // over embedder_, when options.batch_embeddings
  std::unique_ptr<retriever::Retriever> retriever_;
  std::unique_ptr<retriever::Datastore> datastore_;  // INDEX_DIR/datastore, when built
  std::string split_json_;
  std::atomic<int64_t> active_calls_{0};
};

// Replaces invalid UTF-8 sequences by U+FFFD: token pieces and chunk texts
// may split a character, but protobuf strings and JSON must be UTF-8.
std::string ToValidUtf8(const std::string& bytes);
bool IsValidUtf8(const std::string& bytes);

}  // namespace rag::services


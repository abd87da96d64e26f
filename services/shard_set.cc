#include "services/shard_set.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <utility>

#include "common/cancellation.h"
#include "common/stage_timer.h"
#include "common/status.h"
#include "proto/rag.grpc.pb.h"
#include "retriever/manifest.h"
#include "retriever/shard.h"
#include "retriever/topk.h"
#include "retriever/vector_index.h"

namespace rag::services {

struct ShardSet::Shard {
  int number = 0;
  std::string address;
  std::unique_ptr<GrpcBackend> backend;  // Index: Stats, AddDocuments
  std::unique_ptr<v1::Shard::Stub> stub;  // the internal searches
  retriever::Manifest manifest;

  std::string Name() const { return "shard " + std::to_string(number) + " (" + address + ")"; }
};

namespace {

absl::Status ShardError(const grpc::Status& s, const std::string& name) {
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), name + ": " + s.error_message());
}

// A field the shards must agree on, named when they do not.
absl::Status Disagree(const std::string& name, const char* field, const std::string& value, const std::string& want,
                      const std::string& want_from) {
  return absl::FailedPreconditionError(name + " has " + field + " '" + value + "', but " + want_from + " has '" +
                                       want + "'");
}

}  // namespace

// Runs one internal rpc on every shard at once and waits for all of them.
// `start(shard, context, response, done)` issues the call.
template <typename Response>
using StartCall = std::function<void(ShardSet::Shard&, grpc::ClientContext*, Response*,
                                     std::function<void(grpc::Status)>)>;

class FanOut {
 public:
  template <typename Response>
  static absl::Status Run(const std::vector<std::unique_ptr<ShardSet::Shard>>& shards, const ShardSetOptions& options,
                          const StartCall<Response>& start, std::vector<Response>* responses) {
    const size_t n = shards.size();
    responses->assign(n, Response());
    std::vector<std::unique_ptr<grpc::ClientContext>> contexts(n);
    std::vector<grpc::Status> statuses(n);
    std::mutex mu;
    std::condition_variable cv;
    size_t pending = n;
    // The served call's deadline travels to the shards; without one, ours.
    auto deadline = std::chrono::system_clock::now() +
                    std::chrono::microseconds(static_cast<int64_t>(options.rpc_timeout_s * 1e6));
    if (const auto d = CurrentDeadline()) deadline = *d;
    for (size_t i = 0; i < n; ++i) {
      contexts[i] = std::make_unique<grpc::ClientContext>();
      if (!options.security.auth_token.empty()) {
        contexts[i]->AddMetadata("authorization", "Bearer " + options.security.auth_token);
      }
      contexts[i]->set_deadline(deadline);
      start(*shards[i], contexts[i].get(), &(*responses)[i], [&, i](grpc::Status s) {
        std::lock_guard<std::mutex> lock(mu);
        statuses[i] = std::move(s);
        if (--pending == 0) cv.notify_all();
      });
    }
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return pending == 0; });
    for (size_t i = 0; i < n; ++i) {
      if (!statuses[i].ok()) return ShardError(statuses[i], shards[i]->Name());
    }
    return absl::OkStatus();
  }
};

class ShardSet::Keys : public retriever::KeySearcher {
 public:
  Keys(const ShardSet* set, int dim) : set_(set), dim_(dim) {}

  absl::Status Search(const float* queries, int64_t nq, const retriever::KeySearchOptions& o,
                      std::vector<std::vector<retriever::DatastoreNeighbour>>* out) const override {
    if (nq < 0 || (nq > 0 && queries == nullptr)) return absl::InvalidArgumentError("bad key queries");
    const StageTimer timer(Stage::kSearch);  // the shards' answers, and merging them
    out->assign(static_cast<size_t>(nq), {});
    if (nq == 0) return absl::OkStatus();
    v1::SearchKeysRequest request;
    request.mutable_queries()->Add(queries, queries + nq * dim_);
    request.set_dim(dim_);
    request.set_k(o.k);
    request.set_nprobe(o.nprobe);
    request.set_exact(o.exact);
    request.set_exclude_doc_id(o.exclude_doc_id);
    std::vector<v1::SearchKeysResponse> responses;
    RAG_RETURN_IF_ERROR(FanOut::Run<v1::SearchKeysResponse>(
        set_->shards_, set_->options_,
        [&](Shard& shard, grpc::ClientContext* context, v1::SearchKeysResponse* response,
            std::function<void(grpc::Status)> done) {
          shard.stub->async()->SearchKeys(context, &request, response, std::move(done));
        },
        &responses));
    for (size_t s = 0; s < responses.size(); ++s) {
      if (responses[s].results_size() != nq) {
        return absl::InternalError(set_->shards_[s]->Name() + " answered " + std::to_string(responses[s].results_size()) +
                                   " key lists for " + std::to_string(nq) + " queries");
      }
    }
    for (int64_t q = 0; q < nq; ++q) {
      auto& merged = (*out)[static_cast<size_t>(q)];
      for (size_t s = 0; s < responses.size(); ++s) {
        for (const auto& key : responses[s].results(static_cast<int>(q)).keys()) {
          merged.push_back({static_cast<int64_t>(s) << kShardIdShift | key.key_id(), key.value(), key.doc(),
                            key.distance()});
        }
      }
      std::sort(merged.begin(), merged.end(), retriever::DatastoreNeighbourOrder());
      retriever::KeepFirst(&merged, static_cast<size_t>(o.k));
    }
    return absl::OkStatus();
  }

  int dim() const override { return dim_; }

 private:
  const ShardSet* set_;
  int dim_;
};

ShardSet::ShardSet() = default;
ShardSet::~ShardSet() = default;

absl::StatusOr<std::unique_ptr<ShardSet>> ShardSet::Open(const std::vector<std::string>& addresses,
                                                         const FrontIdentity& front, lm::Embedder* embedder,
                                                         const ShardSetOptions& options) {
  if (addresses.empty()) return absl::InvalidArgumentError("--shards: no shard addresses given");
  std::unique_ptr<ShardSet> set(new ShardSet());
  set->embedder_ = embedder;
  set->options_ = options;
  std::vector<std::unique_ptr<Shard>> connected;
  for (const std::string& address : addresses) {
    auto shard = std::make_unique<Shard>();
    shard->address = address;
    auto backend = GrpcBackend::Connect(address, options.connect_timeout_s, options.security);
    if (!backend.ok()) return Annotate(backend.status(), "shard at " + address);
    shard->backend = std::move(*backend);
    shard->backend->set_rpc_timeout(options.rpc_timeout_s);
    shard->stub = v1::Shard::NewStub(shard->backend->channel());
    auto stats = shard->backend->Stats();
    if (!stats.ok()) return Annotate(stats.status(), "reading the manifest of the shard at " + address);
    auto manifest = retriever::Manifest::FromJson(stats->manifest_json());
    if (!manifest.ok()) {
      return absl::FailedPreconditionError("the server at " + address +
                                           " is not a shard server (no index manifest: " +
                                           std::string(manifest.status().message()) + ")");
    }
    shard->manifest = std::move(*manifest);
    shard->number = shard->manifest.shard_id;
    connected.push_back(std::move(shard));
  }
  // Shards 0..N-1, each once, in order.
  const int n = static_cast<int>(connected.size());
  set->shards_.resize(static_cast<size_t>(n));
  for (auto& shard : connected) {
    const retriever::Manifest& m = shard->manifest;
    if (m.shard_count != n) {
      return absl::FailedPreconditionError(shard->Name() + " is one of " + std::to_string(m.shard_count) +
                                           " shards, but " + std::to_string(n) + " addresses were given");
    }
    auto& slot = set->shards_[static_cast<size_t>(m.shard_id)];
    if (slot != nullptr) {
      return absl::FailedPreconditionError("shard " + std::to_string(m.shard_id) + " is served twice: at " +
                                           slot->address + " and at " + shard->address);
    }
    slot = std::move(shard);
  }
  const Shard& first = *set->shards_[0];
  for (const auto& shard : set->shards_) {
    const retriever::Manifest& m = shard->manifest;
    const std::string name = shard->Name();
    if (m.model_hash != front.model_hash) return Disagree(name, "model hash", m.model_hash, front.model_hash, "the front's model");
    if (m.tokenizer_hash != front.tokenizer_hash) {
      return Disagree(name, "tokenizer hash", m.tokenizer_hash, front.tokenizer_hash, "the front's model");
    }
    if (m.embedder_hash != front.embedder_hash) {
      return Disagree(name, "embedder hash", m.embedder_hash, front.embedder_hash, "the front's embedder");
    }
    const std::string from = first.Name();
    const retriever::Manifest& f = first.manifest;
    if (m.index_factory != f.index_factory) return Disagree(name, "index factory", m.index_factory, f.index_factory, from);
    if (m.trained_index_hash != f.trained_index_hash) {
      return Disagree(name, "trained index hash", m.trained_index_hash, f.trained_index_hash, from);
    }
    if (m.dim != f.dim) return Disagree(name, "dim", std::to_string(m.dim), std::to_string(f.dim), from);
    if (m.chunk_tokens != f.chunk_tokens || m.continuation_tokens != f.continuation_tokens) {
      return Disagree(name, "chunking (chunk/continuation tokens)",
                      std::to_string(m.chunk_tokens) + "/" + std::to_string(m.continuation_tokens),
                      std::to_string(f.chunk_tokens) + "/" + std::to_string(f.continuation_tokens), from);
    }
    if ((m.datastore_keys > 0) != (f.datastore_keys > 0)) {
      return Disagree(name, "kNN-LM datastore", m.datastore_keys > 0 ? "yes" : "no", f.datastore_keys > 0 ? "yes" : "no",
                      from);
    }
    if (m.datastore_factory != f.datastore_factory) {
      return Disagree(name, "datastore factory", m.datastore_factory, f.datastore_factory, from);
    }
  }
  // Shards trained each on their own data have other coarse quantizers and
  // codebooks: their answers are not one index's.
  if (n > 1 && first.manifest.trained_index_hash.empty() && first.manifest.index_factory != "Flat") {
    return absl::FailedPreconditionError(
        "the shards' " + first.manifest.index_factory +
        " indexes were each trained on their own documents; build them from one trained index (rag build "
        "--train-only, then --trained) so that they answer as one index");
  }
  set->dim_ = first.manifest.dim;
  if (embedder != nullptr && embedder->dim() != set->dim_) {
    return absl::FailedPreconditionError("the shards' embeddings have dim " + std::to_string(set->dim_) +
                                         ", the front's embedder " + std::to_string(embedder->dim()));
  }
  if (first.manifest.datastore_keys > 0) set->keys_ = std::make_unique<Keys>(set.get(), front.key_dim);
  return set;
}

int ShardSet::dim() const { return dim_; }
int ShardSet::size() const { return static_cast<int>(shards_.size()); }

const retriever::KeySearcher* ShardSet::keys() const { return keys_.get(); }

absl::StatusOr<std::vector<std::vector<retriever::Neighbour>>> ShardSet::Search(
    const std::vector<std::vector<retriever::Token>>& queries, const retriever::SearchOptions& options) const {
  if (options.method == "bm25") {
    return absl::FailedPreconditionError(
        "method \"bm25\" is not served by a sharded front: BM25's document frequencies are per shard, so the "
        "shards' scores are not comparable (query a shard, or use \"dense\")");
  }
  if (options.method != "dense") {
    return absl::InvalidArgumentError("method must be \"dense\" or \"bm25\", got \"" + options.method + "\"");
  }
  for (size_t i = 0; i < queries.size(); ++i) {
    if (queries[i].empty()) return absl::InvalidArgumentError("query " + std::to_string(i) + " is empty");
  }
  if (queries.empty()) return std::vector<std::vector<retriever::Neighbour>>();
  std::vector<float> embeddings;
  {
    const StageTimer timer(Stage::kEmbed);
    RAG_RETURN_IF_ERROR(embedder_->Embed(queries, &embeddings));
  }
  return SearchEmbeddings(embeddings.data(), static_cast<int64_t>(queries.size()), options);
}

absl::StatusOr<std::vector<std::vector<retriever::Neighbour>>> ShardSet::SearchEmbeddings(
    const float* embeddings, int64_t nq, const retriever::SearchOptions& options) const {
  if (options.k < 1 || options.k > retriever::VectorIndex::kMaxK) {
    return absl::InvalidArgumentError("k must be in [1, " + std::to_string(retriever::VectorIndex::kMaxK) +
                                      "], got " + std::to_string(options.k));
  }
  if (nq < 0 || (nq > 0 && embeddings == nullptr)) return absl::InvalidArgumentError("bad embeddings to search");
  const StageTimer timer(Stage::kSearch);  // the shards' answers, and merging them
  std::vector<std::vector<retriever::Neighbour>> results(static_cast<size_t>(nq));
  if (nq == 0) return results;
  v1::SearchVectorsRequest request;
  request.mutable_vectors()->Add(embeddings, embeddings + nq * dim_);
  request.set_dim(dim_);
  request.set_k(options.k);
  request.set_nprobe(options.nprobe);
  for (const auto& id : options.exclude_doc_ids) request.add_exclude_doc_ids(id);
  std::vector<v1::SearchResponse> responses;
  RAG_RETURN_IF_ERROR(FanOut::Run<v1::SearchResponse>(
      shards_, options_,
      [&](Shard& shard, grpc::ClientContext* context, v1::SearchResponse* response,
          std::function<void(grpc::Status)> done) {
        shard.stub->async()->SearchVectors(context, &request, response, std::move(done));
      },
      &responses));
  for (size_t s = 0; s < responses.size(); ++s) {
    if (responses[s].results_size() != nq) {
      return absl::InternalError(shards_[s]->Name() + " answered " + std::to_string(responses[s].results_size()) +
                                 " lists for " + std::to_string(nq) + " queries");
    }
  }
  for (int64_t q = 0; q < nq; ++q) {
    auto& merged = results[static_cast<size_t>(q)];
    for (size_t s = 0; s < responses.size(); ++s) {
      for (const auto& nb : responses[s].results(static_cast<int>(q)).neighbours()) {
        retriever::Neighbour n;
        n.chunk_id = static_cast<int64_t>(s) << kShardIdShift | nb.chunk_id();
        n.doc_id = nb.doc_id();
        n.offset = nb.offset();
        n.tokens.assign(nb.token_ids().begin(), nb.token_ids().end());
        n.continuation.assign(nb.continuation_ids().begin(), nb.continuation_ids().end());
        n.distance = nb.distance();
        merged.push_back(std::move(n));
      }
    }
    // Each shard sent its own top k in the canonical order, ties complete:
    // the first k of the union are the single index's.
    std::sort(merged.begin(), merged.end(), retriever::ChunkNeighbourOrder());
    retriever::KeepFirst(&merged, static_cast<size_t>(options.k));
  }
  return results;
}

absl::StatusOr<v1::StatsResponse> ShardSet::Stats() const {
  v1::StatsResponse total;
  nlohmann::json manifests = nlohmann::json::array();
  for (const auto& shard : shards_) {
    auto s = shard->backend->Stats();
    if (!s.ok()) return Annotate(s.status(), shard->Name());
    if (shard == shards_.front()) {
      total = *s;
    } else {
      total.set_documents(total.documents() + s->documents());
      total.set_chunks(total.chunks() + s->chunks());
      total.set_tokens(total.tokens() + s->tokens());
      total.set_vectors(total.vectors() + s->vectors());
      total.set_documents_added(total.documents_added() + s->documents_added());
      total.set_datastore_keys(total.datastore_keys() + s->datastore_keys());
      total.set_active_requests(total.active_requests() + s->active_requests());
    }
    manifests.push_back(nlohmann::json::parse(s->manifest_json(), nullptr, /*allow_exceptions=*/false));
  }
  total.set_manifest_json(nlohmann::json{{"shards", manifests}}.dump(2) + "\n");
  return total;
}

absl::Status ShardSet::AddDocument(const v1::Document& document, v1::AddDocumentsResponse* totals) const {
  const Shard& shard = *shards_[static_cast<size_t>(retriever::ShardOfDocument(document.id(), size()))];
  auto r = shard.backend->AddDocuments({document}, nullptr);
  if (!r.ok()) return Annotate(r.status(), shard.Name());
  totals->set_documents_added(totals->documents_added() + r->documents_added());
  totals->set_chunks_added(totals->chunks_added() + r->chunks_added());
  totals->set_documents_skipped(totals->documents_skipped() + r->documents_skipped());
  return absl::OkStatus();
}

}  // namespace rag::services

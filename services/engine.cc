#include "services/engine.h"

#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <utility>

#include "common/cancellation.h"
#include "common/file_util.h"
#include "common/stage_timer.h"
#include "common/status.h"
#include "lm/scorer.h"
#include "retriever/datastore_sync.h"
#include "services/infgram_mode.h"
#include "services/ralm_mode.h"
#include "services/knnlm_mode.h"
#include "services/lm_mode.h"
#include "services/retro_mode.h"

namespace rag::services {
namespace fs = std::filesystem;

namespace {

// LibTorch reports misuse by throwing; a request must never take the server
// down, so every entry point converts exceptions to Internal.
template <typename F>
auto Guarded(const char* what, F&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const c10::Error& e) {
    return absl::InternalError(std::string(what) + ": " + e.what_without_backtrace());
  } catch (const std::exception& e) {
    return absl::InternalError(std::string(what) + ": " + e.what());
  }
}

// The stage times the call's recorder holds, and its wall time so far.
void SetTimings(const StageRecorder& recorder, v1::StageTimings* out) {
  const StageMicros us = recorder.micros();
  out->set_embed_us(us[static_cast<int>(Stage::kEmbed)]);
  out->set_search_us(us[static_cast<int>(Stage::kSearch)]);
  out->set_datastore_us(us[static_cast<int>(Stage::kDatastore)]);
  out->set_forward_us(us[static_cast<int>(Stage::kForward)]);
  out->set_fusion_us(us[static_cast<int>(Stage::kFusion)]);
  out->set_total_us(recorder.total_micros());
}

// The fields of a neighbour that Search and a shard's SearchVectors both
// return as they are: id, offset, distance and the exact token ids.
v1::Neighbour* AddNeighbour(const retriever::Neighbour& n, v1::NeighbourList* out) {
  v1::Neighbour* nb = out->add_neighbours();
  nb->set_chunk_id(n.chunk_id);
  nb->set_offset(n.offset);
  nb->set_distance(n.distance);
  nb->mutable_token_ids()->Add(n.tokens.begin(), n.tokens.end());
  nb->mutable_continuation_ids()->Add(n.continuation.begin(), n.continuation.end());
  return nb;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Engine>> Engine::Open(const EngineOptions& options) {
  return Guarded("opening the engine", [&]() -> absl::StatusOr<std::unique_ptr<Engine>> {
    std::unique_ptr<Engine> e(new Engine());
    e->options_ = options;
    if (options.model_dir.empty()) return absl::InvalidArgumentError("a model directory is required");
    if (lm::IsRetroModelDir(options.model_dir)) {
      auto retro = lm::RetroModel::Open(options.model_dir);
      if (!retro.ok()) return Annotate(retro.status(), "opening RETRO model");
      e->retro_ = std::move(*retro);
      e->model_ = &e->retro_->base();
    } else {
      auto model = lm::LanguageModel::Open(options.model_dir);
      if (!model.ok()) return Annotate(model.status(), "opening model");
      e->owned_model_ = std::move(*model);
      e->model_ = e->owned_model_.get();
    }
    auto split = ReadFile((fs::path(options.model_dir) / lm::kSplitFile).string());
    if (split.ok()) e->split_json_ = std::move(*split);
    if (!options.index_dir.empty() && !options.shards.empty()) {
      return absl::InvalidArgumentError("serve an index (--index) or a set of shards (--shards), not both");
    }
    if (!options.index_dir.empty() || !options.shards.empty()) {
      if (options.embedder_path.empty()) {
        e->embedder_ = lm::MakeLmEmbedder(e->model_);
      } else {
        auto emb = lm::LoadTorchScriptEmbedder(options.embedder_path);
        if (!emb.ok()) return Annotate(emb.status(), "loading the embedder");
        e->embedder_ = std::move(*emb);
      }
    }
    lm::Embedder* embedder = e->embedder_.get();
    if (embedder != nullptr && options.batch_embeddings) {
      e->batching_embedder_ = lm::MakeBatchingEmbedder(embedder);
      embedder = e->batching_embedder_.get();
    }
    if (!options.shards.empty()) {
      FrontIdentity front;
      front.model_hash = e->model_->content_hash();
      front.tokenizer_hash = e->model_->tokenizer().Hash();
      front.embedder_hash = e->embedder_->hash();
      front.key_dim = static_cast<int>(e->model_->config().d_model);
      RAG_ASSIGN_OR_RETURN(e->shards_, ShardSet::Open(options.shards, front, embedder, options.shard_options));
      e->searcher_ = e->shards_.get();
      e->keys_ = e->shards_->keys();
    }
    if (!options.index_dir.empty()) {
      RAG_ASSIGN_OR_RETURN(e->retriever_,
                           retriever::Retriever::Open(options.index_dir, embedder, e->model_->content_hash(),
                                                      e->model_->tokenizer().Hash(), options.writable_index));
      const retriever::Manifest m = e->retriever_->manifest();
      const retriever::ChunkStore& store = e->retriever_->chunk_store();
      RAG_ASSIGN_OR_RETURN(e->datastore_, e->retriever_->dir().OpenDatastore(
                                              store, static_cast<int>(e->model_->config().d_model)));
      if (e->datastore_ != nullptr) {
        Engine* self = e.get();
        RAG_RETURN_IF_ERROR(
            Annotate(retriever::CatchUpDatastore(
                         m, store, e->datastore_.get(),
                         [self](const std::vector<retriever::Token>& t) { return self->DocumentKeys(t); },
                         e->retriever_->writable()),
                     "adding the keys of added documents to the datastore"));
        e->local_keys_ = std::make_unique<retriever::LocalKeySearcher>(e->datastore_.get(), &store);
        e->keys_ = e->local_keys_.get();
      }
      e->searcher_ = e->retriever_.get();
      e->counts_ = std::make_unique<CorpusCounts>(e->retriever_.get());
    }
    // One strategy per mode this server can run (what Info lists).
    const ServedModels served{e->model_, e->retro_.get(), e->retriever_.get(), e->searcher_, e->keys_,
                              e->counts_.get()};
    auto& modes = e->strategies_;
    modes[static_cast<int>(Mode::kLm)] = std::make_unique<LmMode>(served);
    if (served.keys != nullptr) modes[static_cast<int>(Mode::kKnnLm)] = std::make_unique<KnnLmMode>(served);
    if (served.retro != nullptr) modes[static_cast<int>(Mode::kRetro)] = std::make_unique<RetroMode>(served);
    if (served.counts != nullptr) modes[static_cast<int>(Mode::kInfgram)] = std::make_unique<InfgramMode>(served);
    if (served.searcher != nullptr) modes[static_cast<int>(Mode::kRalm)] = std::make_unique<RalmMode>(served);
    return e;
  });
}

// The retriever checkpoints on destruction and needs the embedder: release
// it first.
Engine::~Engine() { retriever_.reset(); }

ParseContext Engine::parse_context() const {
  ParseContext ctx;
  ctx.limits = options_.limits;
  ctx.has_index = searcher_ != nullptr;
  ctx.has_datastore = keys_ != nullptr;
  ctx.has_counts = counts_ != nullptr;
  ctx.retro_chunk_size = retro_ != nullptr ? retro_->config().chunk_size : 0;
  ctx.vocab_size = model_->tokenizer().vocab_size();
  ctx.context = model_->config().context;
  return ctx;
}

absl::StatusOr<std::vector<float>> Engine::DocumentKeys(const std::vector<retriever::Token>& tokens) const {
  const std::vector<lm::TokenId> ids(tokens.begin(), tokens.end());
  torch::Tensor keys;
  {
    torch::NoGradGuard no_grad;
    keys = lm::HiddenStates(model_->module(), ids, model_->tokenizer().eot_id()).to(torch::kFloat32).contiguous();
  }
  const float* data = keys.data_ptr<float>();
  return std::vector<float>(data, data + keys.numel());
}

absl::Status Engine::AddDatastoreKeys(const std::string& doc_id) {
  return retriever::AddDatastoreKeys(
      retriever_->chunk_store(), datastore_.get(), doc_id,
      [this](const std::vector<retriever::Token>& t) { return DocumentKeys(t); }, retriever_->writable());
}

absl::Status Engine::NeedIndex(const char* rpc) const {
  if (searcher_ != nullptr) return absl::OkStatus();
  return absl::FailedPreconditionError(std::string(rpc) + " needs an index, and none is served (start with --index)");
}

absl::Status Engine::NeedLocalIndex(const char* rpc) const {
  if (retriever_ != nullptr) return absl::OkStatus();
  return absl::FailedPreconditionError(std::string(rpc) + " is a shard server's rpc, and this server holds no index" +
                                       (shards_ != nullptr ? " (it is a sharded front)" : ""));
}

absl::StatusOr<v1::SearchResponse> Engine::Search(const v1::SearchRequest& request) {
  const ActiveCall active(&active_calls_);
  return Guarded("Search", [&]() -> absl::StatusOr<v1::SearchResponse> {
    const StageRecorder recorder;
    RAG_RETURN_IF_ERROR(NeedIndex("Search"));
    RAG_ASSIGN_OR_RETURN(SearchParams p, ParseSearchRequest(request, parse_context()));
    const auto& tok = model_->tokenizer();
    std::vector<std::vector<retriever::Token>> queries;
    for (const std::string& text : p.texts) queries.push_back(tok.Encode(text));
    RAG_ASSIGN_OR_RETURN(auto results, searcher_->Search(queries, p.options));
    v1::SearchResponse response;
    for (const auto& list : results) {
      v1::NeighbourList* out = response.add_results();
      for (const auto& n : list) {
        v1::Neighbour* nb = AddNeighbour(n, out);
        nb->set_doc_id(ToValidUtf8(n.doc_id));
        nb->set_text(DecodeToValidUtf8(tok, n.tokens));
        nb->set_continuation(DecodeToValidUtf8(tok, n.continuation));
      }
    }
    SetTimings(recorder, response.mutable_timings());
    return response;
  });
}

absl::StatusOr<v1::ScoreResponse> Engine::Score(const v1::ScoreRequest& request) {
  const ActiveCall active(&active_calls_);
  return Guarded("Score", [&]() -> absl::StatusOr<v1::ScoreResponse> {
    const StageRecorder recorder;
    RAG_ASSIGN_OR_RETURN(ScoreParams p, ParseScoreRequest(request, parse_context()));
    const auto& tok = model_->tokenizer();
    const auto ids = tok.Encode(p.text);
    v1::ScoreResponse r;
    RAG_ASSIGN_OR_RETURN(std::vector<float> logprobs, strategy(p.mode).Score(p, ids, &r));
    r.set_mode(ModeName(p.mode));
    double sum = 0;
    for (float lp : logprobs) sum += lp;
    r.set_tokens(static_cast<int64_t>(logprobs.size()));
    r.set_logprob_sum(sum);
    r.set_nll(-sum / static_cast<double>(logprobs.size()));
    r.set_perplexity(std::exp(r.nll()));
    if (p.per_token) {
      for (size_t i = 0; i < ids.size(); ++i) {
        v1::TokenScore* t = r.add_token_scores();
        t->set_id(ids[i]);
        t->set_piece(tok.TokenBytes(ids[i]));
        t->set_logprob(logprobs[i]);
      }
    }
    SetTimings(recorder, r.mutable_timings());
    return r;
  });
}

absl::StatusOr<v1::NextTokenResponse> Engine::NextToken(const v1::NextTokenRequest& request) {
  const ActiveCall active(&active_calls_);
  return Guarded("NextToken", [&]() -> absl::StatusOr<v1::NextTokenResponse> {
    const StageRecorder recorder;
    RAG_ASSIGN_OR_RETURN(NextTokenParams p, ParseNextTokenRequest(request, parse_context()));
    const auto& tok = model_->tokenizer();
    RAG_ASSIGN_OR_RETURN(torch::Tensor logprobs, strategy(p.mode).NextToken(p, tok.Encode(p.text)));
    v1::NextTokenResponse r;
    r.set_mode(ModeName(p.mode));
    // Rows past the tokenizer's vocabulary (Pythia pads its output to 50304
    // for 50277 tokens) are no token and are not listed; their mass stays in
    // the distribution, so the listed probabilities are the model's own.
    const torch::Tensor listed = logprobs.narrow(0, 0, std::min<int64_t>(logprobs.size(0), tok.vocab_size()));
    auto [values, indices] = listed.topk(std::min<int64_t>(p.top_n, listed.size(0)));
    auto v = values.accessor<float, 1>();
    auto ix = indices.accessor<int64_t, 1>();
    for (int64_t i = 0; i < values.size(0); ++i) {
      v1::TokenProbability* t = r.add_tokens();
      t->set_id(static_cast<int32_t>(ix[i]));
      t->set_piece(tok.TokenBytes(static_cast<int32_t>(ix[i])));
      t->set_logprob(v[i]);
      t->set_probability(std::exp(v[i]));
    }
    SetTimings(recorder, r.mutable_timings());
    return r;
  });
}

absl::StatusOr<v1::GenerateResponse> Engine::Generate(const v1::GenerateRequest& request,
                                                      const GenerateCallback& on_token) {
  const ActiveCall active(&active_calls_);
  return Guarded("Generate", [&]() -> absl::StatusOr<v1::GenerateResponse> {
    const StageRecorder recorder;
    RAG_ASSIGN_OR_RETURN(GenerateParams p, ParseGenerateRequest(request, parse_context()));
    const auto& tok = model_->tokenizer();
    const std::vector<lm::TokenId> prompt = p.prompt_ids.empty() ? tok.Encode(p.prompt) : p.prompt_ids;
    bool cancelled = false;
    auto emit = [&](lm::TokenId id) {
      if (rag::Cancelled()) {
        cancelled = true;
        return false;
      }
      if (!on_token) return true;
      const StageTimer streaming(Stage::kOther);  // the client's pace is no stage of ours
      v1::GenerateResponse msg;
      msg.set_token_id(id);
      if (id == tok.eot_id()) {
        msg.set_end_of_text(true);
      } else {
        msg.set_piece(tok.TokenBytes(id));
      }
      cancelled = !on_token(msg);
      return !cancelled;
    };
    v1::GenerateResponse done;
    RAG_ASSIGN_OR_RETURN(std::vector<lm::TokenId> generated, strategy(p.mode).Generate(p, prompt, emit, &done));
    if (cancelled) return absl::CancelledError("generation cancelled by the client");
    std::vector<int32_t> text_ids;
    for (auto id : generated) {
      if (id != tok.eot_id()) text_ids.push_back(id);
    }
    done.set_done(true);
    done.set_text(DecodeToValidUtf8(tok, text_ids));
    done.set_tokens(static_cast<int64_t>(generated.size()));
    SetTimings(recorder, done.mutable_timings());
    return done;
  });
}

absl::Status Engine::WarmUp() {
  for (Mode mode : kAllModes) {
    if (strategies_[static_cast<int>(mode)] == nullptr) continue;
    v1::ScoreRequest score;
    score.set_text("The first call of the day warms the server up.");
    score.set_mode(ModeName(mode));
    RAG_RETURN_IF_ERROR(Annotate(Score(score).status(), std::string("warming up mode ") + ModeName(mode)));
  }
  if (searcher_ != nullptr) {
    v1::SearchRequest search;
    search.add_texts("The first call of the day warms the server up.");
    search.set_k(1);
    RAG_RETURN_IF_ERROR(Annotate(Search(search).status(), "warming up Search"));
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::InfoResponse> Engine::Info() {
  v1::InfoResponse r;
  r.set_model_hash(model_->content_hash());
  r.set_config_json(model_->config().ToJson());
  r.set_tokenizer_json(model_->tokenizer().ToJson());
  r.set_split_json(split_json_);
  if (retro_ != nullptr) r.set_retro_chunk_tokens(retro_->config().chunk_size);
  const lm::ModelIdentity& id = model_->identity();
  v1::ModelIdentity* m = r.mutable_model();
  m->set_format(id.format);
  m->set_architecture(id.architecture);
  m->set_parameters(model_->NumParameters());
  m->set_stored_dtype(id.stored_dtype);
  m->set_content_hash(id.content_hash);
  m->set_tokenizer_hash(model_->tokenizer().Hash());
  m->set_vocab_size(model_->config().vocab_size);
  m->set_context(model_->config().context);
  for (Mode mode : kAllModes) {
    if (strategies_[static_cast<int>(mode)] != nullptr) r.add_modes(ModeName(mode));
  }
  return r;
}

absl::StatusOr<v1::StatsResponse> Engine::Stats() {
  RAG_RETURN_IF_ERROR(NeedIndex("Stats"));
  if (shards_ != nullptr) {
    RAG_ASSIGN_OR_RETURN(v1::StatsResponse r, shards_->Stats());
    r.set_active_requests(active_calls_.load());  // the front's own
    return r;
  }
  const retriever::Manifest m = retriever_->manifest();
  const auto& store = retriever_->chunk_store();
  v1::StatsResponse r;
  r.set_active_requests(active_calls_.load());
  r.set_documents(store.num_documents());
  r.set_chunks(store.num_chunks());
  r.set_tokens(store.num_tokens());
  r.set_vectors(retriever_->num_vectors());
  r.set_dim(m.dim);
  r.set_index_factory(m.index_factory);
  r.set_chunk_tokens(m.chunk_tokens);
  r.set_continuation_tokens(m.continuation_tokens);
  r.set_model_hash(m.model_hash);
  r.set_tokenizer_hash(m.tokenizer_hash);
  r.set_embedder(m.embedder);
  r.set_faiss_version(m.faiss_version);
  r.set_documents_added(m.documents_added + (store.num_documents() - m.documents));
  r.set_manifest_json(m.ToJson());
  if (datastore_ != nullptr) {
    r.set_datastore_keys(datastore_->size());
    r.set_datastore_factory(datastore_->factory());
  }
  return r;
}

namespace {

// The [queries, dim] rows of a Shard request: InvalidArgument unless `dim`
// is the index's and the floats are whole rows, within the batch limit.
absl::StatusOr<int64_t> QueryRows(int64_t floats, int dim, int index_dim, int64_t max_rows, const char* field) {
  if (dim != index_dim) {
    return absl::InvalidArgumentError(std::string(field) + ": dim " + std::to_string(dim) + ", the index's is " +
                                      std::to_string(index_dim));
  }
  if (dim <= 0 || floats % dim != 0) {
    return absl::InvalidArgumentError(std::string(field) + ": " + std::to_string(floats) +
                                      " floats are not whole rows of dim " + std::to_string(dim));
  }
  const int64_t rows = floats / dim;
  if (rows > max_rows) {
    return absl::ResourceExhaustedError(std::string(field) + ": " + std::to_string(rows) + " queries, over the " +
                                        std::to_string(max_rows) + " one request may carry");
  }
  return rows;
}

}  // namespace

absl::StatusOr<std::vector<float>> Engine::Embed(const std::vector<std::string>& texts) {
  const ActiveCall active(&active_calls_);
  return Guarded("Embed", [&]() -> absl::StatusOr<std::vector<float>> {
    RAG_RETURN_IF_ERROR(NeedIndex("Embed"));
    v1::SearchRequest request;
    for (const std::string& t : texts) request.add_texts(t);
    RAG_ASSIGN_OR_RETURN(const SearchParams p, ParseSearchRequest(request, parse_context()));
    std::vector<std::vector<retriever::Token>> queries;
    for (const std::string& text : p.texts) {
      queries.push_back(model_->tokenizer().Encode(text));
      if (queries.back().empty()) {
        return absl::InvalidArgumentError("text " + std::to_string(queries.size() - 1) + " has no tokens");
      }
    }
    std::vector<float> out;
    RAG_RETURN_IF_ERROR(embedder_->Embed(queries, &out));
    return out;
  });
}

absl::StatusOr<v1::SearchResponse> Engine::SearchVectors(const v1::SearchVectorsRequest& request) {
  const ActiveCall active(&active_calls_);
  return Guarded("SearchVectors", [&]() -> absl::StatusOr<v1::SearchResponse> {
    RAG_RETURN_IF_ERROR(NeedLocalIndex("SearchVectors"));
    // A front searches RETRO's over-fetched candidates in batches of 64
    // chunks, and a Search batch is at most max_batch texts.
    const int64_t max_rows = std::max<int64_t>(options_.limits.max_batch, 1024);
    RAG_ASSIGN_OR_RETURN(const int64_t rows, QueryRows(request.vectors_size(), request.dim(), retriever_->dim(),
                                                       max_rows, "vectors"));
    retriever::SearchOptions o;
    o.k = request.k() == 0 ? retriever::kDefaultSearchK : request.k();
    o.nprobe = request.nprobe() == 0 ? retriever::kDefaultNprobe : request.nprobe();
    o.exclude_doc_ids.assign(request.exclude_doc_ids().begin(), request.exclude_doc_ids().end());
    RAG_ASSIGN_OR_RETURN(auto results, retriever_->SearchEmbeddings(request.vectors().data(), rows, o));
    v1::SearchResponse response;
    for (const auto& list : results) {
      v1::NeighbourList* out = response.add_results();
      for (const auto& n : list) {
        // Tokens only: the front decodes the texts it returns.
        AddNeighbour(n, out)->set_doc_id(n.doc_id);
      }
    }
    return response;
  });
}

absl::StatusOr<v1::SearchKeysResponse> Engine::SearchKeys(const v1::SearchKeysRequest& request) {
  const ActiveCall active(&active_calls_);
  return Guarded("SearchKeys", [&]() -> absl::StatusOr<v1::SearchKeysResponse> {
    RAG_RETURN_IF_ERROR(NeedLocalIndex("SearchKeys"));
    if (local_keys_ == nullptr) return absl::FailedPreconditionError("SearchKeys: this shard has no kNN-LM datastore");
    // kNN-LM searches a text's positions in blocks of 256.
    RAG_ASSIGN_OR_RETURN(const int64_t rows,
                         QueryRows(request.queries_size(), request.dim(), local_keys_->dim(), 4096, "queries"));
    retriever::KeySearchOptions o;
    o.k = request.k();
    o.nprobe = request.nprobe() == 0 ? kDefaultKnnNprobe : request.nprobe();
    o.exact = request.exact();
    o.exclude_doc_id = request.exclude_doc_id();
    std::vector<std::vector<retriever::DatastoreNeighbour>> found;
    RAG_RETURN_IF_ERROR(local_keys_->Search(request.queries().data(), rows, o, &found));
    v1::SearchKeysResponse response;
    for (const auto& list : found) {
      v1::DatastoreKeyList* out = response.add_results();
      for (const auto& n : list) {
        v1::DatastoreKey* key = out->add_keys();
        key->set_key_id(n.key_id);
        key->set_value(n.value);
        key->set_doc(n.doc);
        key->set_distance(n.distance);
      }
    }
    return response;
  });
}

absl::Status Engine::AddDocument(const v1::Document& d, v1::AddDocumentsResponse* totals) {
  return Guarded("AddDocuments", [&]() -> absl::Status {
    RAG_RETURN_IF_ERROR(NeedIndex("AddDocuments"));
    if (shards_ != nullptr) {
      if (!options_.writable_index) {
        return absl::FailedPreconditionError("the front is served read-only (restart rag serve without --read-only)");
      }
      RAG_RETURN_IF_ERROR(ValidateDocument(d, options_.limits));
      return shards_->AddDocument(d, totals);
    }
    if (!retriever_->writable()) {
      return absl::FailedPreconditionError("the index is served read-only (restart rag serve without --read-only)");
    }
    RAG_RETURN_IF_ERROR(ValidateDocument(d, options_.limits));
    if (d.skip_if_exists() && retriever_->chunk_store().HasDocument(d.id())) {
      totals->set_documents_skipped(totals->documents_skipped() + 1);
      return AddDatastoreKeys(d.id());  // in case an earlier add stopped between the two
    }
    auto ids = retriever_->AddDocument(d.id(), model_->tokenizer().Encode(d.text()),
                                       d.metadata_json().empty() ? "{}" : d.metadata_json());
    if (!ids.ok()) {
      if (absl::IsAlreadyExists(ids.status())) {
        if (d.skip_if_exists()) {
          totals->set_documents_skipped(totals->documents_skipped() + 1);
          return absl::OkStatus();
        }
        // Not the store's message: it names server paths.
        return absl::AlreadyExistsError("document id '" + d.id() +
                                        "' is already stored (set skip_if_exists to "
                                        "skip such documents)");
      }
      return ids.status();
    }
    // Stored (durable) first: the chunk store is the record of what was
    // added, and Open gives the datastore any keys a crash here cost it.
    RAG_RETURN_IF_ERROR(Annotate(AddDatastoreKeys(d.id()), "adding its keys to the datastore"));
    totals->set_documents_added(totals->documents_added() + 1);
    totals->set_chunks_added(totals->chunks_added() + static_cast<int64_t>(ids->size()));
    return absl::OkStatus();
  });
}

absl::Status Engine::FinishAdd(v1::AddDocumentsResponse* totals) {
  RAG_RETURN_IF_ERROR(NeedIndex("AddDocuments"));
  if (shards_ != nullptr) {
    // Each shard saved its index when its document's stream ended.
    RAG_ASSIGN_OR_RETURN(v1::StatsResponse stats, shards_->Stats());
    totals->set_documents(stats.documents());
    totals->set_chunks(stats.chunks());
    return absl::OkStatus();
  }
  if (retriever_->writable()) RAG_RETURN_IF_ERROR(retriever_->Checkpoint());
  totals->set_documents(retriever_->chunk_store().num_documents());
  totals->set_chunks(retriever_->chunk_store().num_chunks());
  return absl::OkStatus();
}

absl::StatusOr<v1::AddDocumentsResponse> Engine::AddDocuments(const std::vector<v1::Document>& documents,
                                                              const AddCallback& on_progress) {
  v1::AddDocumentsResponse totals;
  for (const auto& d : documents) {
    absl::Status s = AddDocument(d, &totals);
    if (!s.ok()) {
      // What was added stays added; save it before reporting.
      (void)FinishAdd(&totals);
      return Annotate(s, "after " + std::to_string(totals.documents_added()) + " documents were added");
    }
    if (on_progress) on_progress(totals);
  }
  RAG_RETURN_IF_ERROR(FinishAdd(&totals));
  return totals;
}

}  // namespace rag::services

#include "services/engine.h"

#include <torch/torch.h>
#include <xxhash.h>

#include <cmath>
#include <filesystem>
#include <random>

#include "common/cancellation.h"
#include "common/file_util.h"
#include "common/status.h"
#include "lm/generator.h"
#include "lm/scorer.h"

namespace rag::services {
namespace fs = std::filesystem;

namespace {

// A request over one of the server's configurable limits: RESOURCE_EXHAUSTED
// naming the field, the limit and the `rag serve` flag that sets it.
absl::Status OverLimit(const std::string& what, int64_t value, int64_t limit, const char* flag) {
  return absl::ResourceExhaustedError(what + " is " + std::to_string(value) + "; the limit is " +
                                      std::to_string(limit) + " (rag serve " + flag + ")");
}

// RETRO's log-distribution [V] of the token after `ids` (preceded by `eot`):
// one forward over the last chunk-aligned window that holds position n,
// whose input chunk v >= 1 attends the set retrieved with document chunk
// start + v - 1 (`sets` empty: retrieval off).
absl::StatusOr<torch::Tensor> RetroNextTokenLogProbs(lm::RetroLM& model, const std::vector<lm::TokenId>& ids,
                                                     lm::TokenId eot, const std::vector<lm::NeighbourSet>& sets) {
  torch::NoGradGuard no_grad;
  const lm::RetroConfig& c = model->config();
  const int64_t m = c.chunk_size, ctx = c.decoder.context, k = c.neighbours, r = c.neighbour_tokens;
  const int64_t n = static_cast<int64_t>(ids.size());
  // Input positions hold [eot, t_0, ..., t_{n-1}]; position n predicts.
  const int64_t start = n + 1 > ctx ? (n + 1 - ctx + m - 1) / m : 0;  // in chunks
  std::vector<int64_t> input;
  input.push_back(start == 0 ? eot : ids[static_cast<size_t>(start * m - 1)]);
  for (int64_t i = start * m; i < n; ++i) input.push_back(ids[static_cast<size_t>(i)]);
  const int64_t len = static_cast<int64_t>(input.size());
  const int64_t chunks = (len + m - 1) / m;
  torch::Tensor tokens = torch::tensor(input, torch::kLong).view({1, len});  // [1, T]
  torch::Tensor nb, mask;
  if (!sets.empty()) {
    nb = torch::zeros({1, chunks, k, r}, torch::kLong);  // [1, C, K, R]
    mask = torch::zeros({1, chunks, k}, torch::kBool);   // [1, C, K]
    auto nb_a = nb.accessor<int64_t, 4>();
    auto mask_a = mask.accessor<bool, 3>();
    for (int64_t v = 1; v < chunks; ++v) {
      const int64_t j = start + v - 1;
      if (j >= static_cast<int64_t>(sets.size())) break;
      const lm::NeighbourSet& set = sets[static_cast<size_t>(j)];
      for (int64_t q = 0; q < k && q < static_cast<int64_t>(set.present.size()); ++q) {
        mask_a[0][v][q] = set.present[static_cast<size_t>(q)] != 0;
        for (int64_t t = 0; t < r; ++t) nb_a[0][v][q][t] = set.tokens[static_cast<size_t>(q * r + t)];
      }
    }
  }
  torch::Tensor hidden = model->ForwardHidden(tokens, nb, mask);        // [1, T, D]
  torch::Tensor logits = model->Logits(hidden.narrow(1, len - 1, 1));  // [1, 1, V]
  return torch::log_softmax(logits.view({-1}).to(torch::kFloat32), -1);  // [V]
}

// What a request stopped by rag::Cancelled() returns (the client sees its
// own CANCELLED or DEADLINE_EXCEEDED; this is for logs and in-process use).
absl::Status CallCancelled() {
  return absl::CancelledError("the call was cancelled or its deadline passed; work stopped");
}

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

int Utf8SequenceLength(const unsigned char* s, size_t n) {
  const unsigned char c = s[0];
  int len;
  uint32_t min;
  if (c < 0x80) return 1;
  if ((c & 0xE0) == 0xC0) {
    len = 2;
    min = 0x80;
  } else if ((c & 0xF0) == 0xE0) {
    len = 3;
    min = 0x800;
  } else if ((c & 0xF8) == 0xF0) {
    len = 4;
    min = 0x10000;
  } else {
    return 0;
  }
  if (n < static_cast<size_t>(len)) return 0;
  uint32_t cp = c & (0x7F >> len);
  for (int i = 1; i < len; ++i) {
    if ((s[i] & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (s[i] & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return len;
}

// The next tokens and distances of a neighbour list, as lm/knnlm takes them.
void SplitNeighbours(const std::vector<retriever::DatastoreNeighbour>& list, std::vector<int32_t>* values,
                     std::vector<float>* distances) {
  values->clear();
  distances->clear();
  for (const auto& nb : list) {
    values->push_back(nb.value);
    distances->push_back(nb.distance);
  }
}

std::string Decode(const lm::Tokenizer& tok, const std::vector<int32_t>& ids) {
  std::string bytes;
  for (int32_t id : ids) bytes += tok.TokenBytes(id);
  return ToValidUtf8(bytes);
}

// `text` with end-of-text in front so that its first `prompt_tokens` end a
// RETRO chunk of m tokens, as prompt windows are trained: what follows the
// prompt then attends to the neighbours retrieved with it. *padding: how
// many were put in front.
std::vector<lm::TokenId> PromptEndingAChunk(const std::vector<lm::TokenId>& text, int64_t prompt_tokens, int64_t m,
                                            lm::TokenId eot, int64_t* padding) {
  *padding = (m - prompt_tokens % m) % m;
  std::vector<lm::TokenId> laid_out(static_cast<size_t>(*padding), eot);
  laid_out.insert(laid_out.end(), text.begin(), text.end());
  return laid_out;
}

}  // namespace

std::string ToValidUtf8(const std::string& bytes) {
  std::string out;
  out.reserve(bytes.size());
  const auto* s = reinterpret_cast<const unsigned char*>(bytes.data());
  size_t i = 0;
  while (i < bytes.size()) {
    const int len = Utf8SequenceLength(s + i, bytes.size() - i);
    if (len == 0) {
      out += "\xEF\xBF\xBD";
      ++i;
    } else {
      out.append(bytes, i, static_cast<size_t>(len));
      i += static_cast<size_t>(len);
    }
  }
  return out;
}

bool IsValidUtf8(const std::string& bytes) {
  const auto* s = reinterpret_cast<const unsigned char*>(bytes.data());
  for (size_t i = 0; i < bytes.size();) {
    const int len = Utf8SequenceLength(s + i, bytes.size() - i);
    if (len == 0) return false;
    i += static_cast<size_t>(len);
  }
  return true;
}

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
    if (options.index_dir.empty()) return e;
    if (options.embedder_path.empty()) {
      e->embedder_ = lm::MakeLmEmbedder(e->model_);
    } else {
      auto emb = lm::LoadTorchScriptEmbedder(options.embedder_path);
      if (!emb.ok()) return Annotate(emb.status(), "loading the embedder");
      e->embedder_ = std::move(*emb);
    }
    lm::Embedder* embedder = e->embedder_.get();
    if (options.batch_embeddings) {
      e->batching_embedder_ = lm::MakeBatchingEmbedder(embedder);
      embedder = e->batching_embedder_.get();
    }
    RAG_ASSIGN_OR_RETURN(e->retriever_,
                         retriever::Retriever::Open(options.index_dir, embedder, e->model_->content_hash(),
                                                    e->model_->tokenizer().Hash(), options.writable_index));
    // The datastore sits in the index directory, whose manifest (model and
    // tokenizer hashes, checked above) covers it.
    const fs::path ds_dir = fs::path(options.index_dir) / retriever::kDatastoreDir;
    if (fs::exists(ds_dir)) {
      // Its files must be the ones the manifest recorded: a datastore copied
      // in from another index (another model's hidden states) is refused.
      const retriever::Manifest m = e->retriever_->manifest();
      for (const char* f : {retriever::kDatastoreKeysFile, retriever::kDatastoreValuesFile,
                            retriever::kDatastoreDocsFile, retriever::kDatastoreIndexFile}) {
        const std::string key = std::string(retriever::kDatastoreDir) + "/" + f;
        auto it = m.checksums.find(key);
        auto sum = HashFileHex((ds_dir / f).string());
        if (it == m.checksums.end() || !sum.ok() || *sum != it->second) {
          return absl::FailedPreconditionError("the datastore in '" + ds_dir.string() +
                                               "' is not the one this index's manifest records (" + key +
                                               "); rebuild it with `rag build --datastore` for this model");
        }
      }
      retriever::DatastoreOpenOptions dso;
      const retriever::ChunkStore* store = &e->retriever_->chunk_store();
      dso.keep_added = [store](const std::string& doc_id) { return store->HasDocument(doc_id); };
      auto ds = retriever::Datastore::Open(ds_dir.string(), dso);
      if (!ds.ok()) return Annotate(ds.status(), "opening the datastore of '" + options.index_dir + "'");
      if ((*ds)->dim() != e->model_->config().d_model) {
        return absl::FailedPreconditionError("the datastore of '" + options.index_dir + "' has keys of dim " +
                                             std::to_string((*ds)->dim()) + " but the model's hidden states have " +
                                             std::to_string(e->model_->config().d_model));
      }
      e->datastore_ = std::move(*ds);
      RAG_RETURN_IF_ERROR(Annotate(e->CatchUpDatastore(), "adding the keys of added documents to the datastore"));
    }
    return e;
  });
}

// The retriever checkpoints on destruction and needs the embedder: release
// it first.
Engine::~Engine() { retriever_.reset(); }

absl::Status Engine::CheckK(int k, int given) const {
  if (k > options_.limits.max_k) return OverLimit("k", k, options_.limits.max_k, "--max-k");
  if (k < 1) {
    return absl::InvalidArgumentError("k must be in [1, " + std::to_string(options_.limits.max_k) + "], got " +
                                      std::to_string(given));
  }
  return absl::OkStatus();
}

absl::Status Engine::CheckText(const std::string& text, const char* field, bool allow_empty) const {
  if (!allow_empty && text.empty()) return absl::InvalidArgumentError(std::string(field) + " is empty");
  if (static_cast<int64_t>(text.size()) > options_.limits.max_text_bytes) {
    return OverLimit(std::string(field) + " in bytes", static_cast<int64_t>(text.size()),
                     options_.limits.max_text_bytes, "--max-text-bytes");
  }
  return absl::OkStatus();
}

absl::Status Engine::AddDatastoreKeys(const std::string& doc_id) {
  if (datastore_ == nullptr || datastore_->HasAddedDocument(doc_id)) return absl::OkStatus();
  RAG_ASSIGN_OR_RETURN(retriever::DocumentRecord rec, retriever_->chunk_store().GetDocument(doc_id));
  if (rec.tokens.empty()) return absl::OkStatus();
  const std::vector<lm::TokenId> ids(rec.tokens.begin(), rec.tokens.end());
  // One key per token, as the builder: the hidden state that predicts it.
  torch::Tensor keys;
  {
    torch::NoGradGuard no_grad;
    keys = lm::HiddenStates(model_->module(), ids, model_->tokenizer().eot_id()).to(torch::kFloat32).contiguous();
  }
  return datastore_->AddDocumentKeys(doc_id, keys.data_ptr<float>(), rec.tokens.data(), static_cast<int32_t>(rec.index),
                                     static_cast<int64_t>(ids.size()), retriever_->writable());
}

absl::Status Engine::CatchUpDatastore() {
  const retriever::Manifest m = retriever_->manifest();
  const auto& store = retriever_->chunk_store();
  const int64_t built = m.documents - m.documents_added;
  const int64_t chunks = store.num_chunks();
  if (store.num_documents() <= built || chunks == 0) return absl::OkStatus();
  // Chunk ids follow document order: the first chunk of a document added
  // after the build, by bisection.
  int64_t lo = 0, hi = chunks;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    RAG_ASSIGN_OR_RETURN(retriever::ChunkRecord rec, store.GetChunk(mid));
    if (rec.doc_index >= built) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  std::vector<std::string> docs;
  RAG_RETURN_IF_ERROR(store.ForEachChunk(lo, [&](const retriever::ChunkRecord& rec) {
    if (docs.empty() || docs.back() != rec.doc_id) docs.push_back(rec.doc_id);
    return true;
  }));
  int64_t added = 0;
  for (const std::string& id : docs) {
    if (datastore_->HasAddedDocument(id)) continue;
    RAG_RETURN_IF_ERROR(AddDatastoreKeys(id));
    ++added;
  }
  if (added > 0) {
    std::fprintf(stderr, "datastore: computed the keys of %lld added documents it lacked\n",
                 static_cast<long long>(added));
  }
  return absl::OkStatus();
}

absl::Status Engine::CheckMode(const std::string& mode) const {
  if (mode.empty() || mode == "lm") return absl::OkStatus();
  if (mode == "knnlm") {
    if (datastore_ != nullptr) return absl::OkStatus();
    return absl::FailedPreconditionError("mode knnlm needs a datastore, and none is served (build the index with "
                                         "`rag build --datastore` and serve it with --index)");
  }
  if (mode == "retro") {
    if (retro_ != nullptr) return absl::OkStatus();
    return absl::FailedPreconditionError("mode retro needs a RETRO model (train one with `rag train --arch retro` "
                                         "and serve its directory with --model)");
  }
  return absl::InvalidArgumentError("mode must be lm, knnlm or retro, got '" + mode + "'");
}

absl::StatusOr<Engine::KnnParams> Engine::ParseKnn(bool has_lambda, float lambda, bool has_temperature,
                                                   float temperature, int k, int nprobe, bool exact,
                                                   const std::string& exclude_doc_id) const {
  KnnParams p;
  if (has_lambda) {
    if (!(lambda >= 0 && lambda <= 1)) return absl::InvalidArgumentError("lambda must be in [0, 1]");
    p.knn.lambda = lambda;
  }
  if (has_temperature) {
    if (!(temperature > 0) || !std::isfinite(temperature)) {
      return absl::InvalidArgumentError("temperature must be > 0");
    }
    p.knn.temperature = temperature;
  }
  p.knn.k = k == 0 ? 1024 : k;
  RAG_RETURN_IF_ERROR(CheckK(p.knn.k, k));
  p.nprobe = nprobe == 0 ? kDefaultKnnNprobe : nprobe;
  if (p.nprobe < 1 || p.nprobe > (1 << 16)) {
    return absl::InvalidArgumentError("nprobe must be in [1, 65536], got " + std::to_string(nprobe));
  }
  p.exact = exact;
  if (!exclude_doc_id.empty() && retriever_ != nullptr) {
    auto doc = retriever_->chunk_store().GetDocument(exclude_doc_id);
    if (doc.ok()) p.exclude_doc = static_cast<int32_t>(doc->index);
  }
  return p;
}

absl::Status Engine::SearchDatastore(const float* hidden, int64_t n, const KnnParams& p,
                                     std::vector<std::vector<retriever::DatastoreNeighbour>>* out) const {
  constexpr int64_t kBlock = 256;
  out->clear();
  out->reserve(static_cast<size_t>(n));
  std::vector<std::vector<retriever::DatastoreNeighbour>> block;
  const int64_t dim = datastore_->dim();
  for (int64_t i = 0; i < n; i += kBlock) {
    const int64_t b = std::min(kBlock, n - i);
    RAG_RETURN_IF_ERROR(datastore_->Search(hidden + i * dim, b, p.knn.k, p.nprobe,
                                           std::vector<int32_t>(static_cast<size_t>(b), p.exclude_doc), p.exact,
                                           &block));
    for (auto& list : block) out->push_back(std::move(list));
  }
  return absl::OkStatus();
}

absl::StatusOr<torch::Tensor> Engine::KnnDistribution(const torch::Tensor& hidden,
                                                      const torch::Tensor& lm_logprobs, const KnnParams& p) const {
  torch::Tensor h = hidden.to(torch::kFloat32).contiguous();
  std::vector<std::vector<retriever::DatastoreNeighbour>> nb;
  RAG_RETURN_IF_ERROR(SearchDatastore(h.data_ptr<float>(), 1, p, &nb));
  std::vector<int32_t> values;
  std::vector<float> distances;
  SplitNeighbours(nb[0], &values, &distances);
  return lm::InterpolateLogDistribution(lm_logprobs, values.data(), distances.data(),
                                        static_cast<int64_t>(values.size()), p.knn.lambda, p.knn.temperature);
}

absl::StatusOr<Engine::RetroParams> Engine::ParseRetro(const std::string& retrieval, bool has_leakage, int leakage,
                                                       const std::string& exclude_doc_id,
                                                       const std::string& search_method) const {
  RetroParams p;
  if (!search_method.empty()) p.search_method = search_method;
  if (p.search_method != "dense" && p.search_method != "bm25") {
    return absl::InvalidArgumentError("search_method must be dense or bm25, got '" + search_method + "'");
  }
  if (!retrieval.empty()) p.retrieval = retrieval;
  if (p.retrieval != "on" && p.retrieval != "off" && p.retrieval != "random") {
    return absl::InvalidArgumentError("retrieval must be on, off or random, got '" + retrieval + "'");
  }
  if (has_leakage) {
    if (leakage < 0) return absl::InvalidArgumentError("leakage_filter must be >= 0 (0 = off)");
    p.leakage_filter = leakage;
  }
  p.exclude_doc_id = exclude_doc_id;
  if (p.retrieval != "off" && retriever_ == nullptr) {
    return absl::FailedPreconditionError("retro retrieval " + p.retrieval +
                                         " needs the index the RETRO model retrieves from (start with --index), "
                                         "or use retrieval off");
  }
  return p;
}

lm::NeighbourSet Engine::ToNeighbourSet(const std::vector<retriever::Neighbour>& list,
                                        const std::vector<lm::TokenId>& query) const {
  const auto& c = retro_->config();
  const int64_t k = c.neighbours, r = c.neighbour_tokens;
  lm::NeighbourSet set;
  set.tokens.assign(static_cast<size_t>(k * r), model_->tokenizer().eot_id());
  set.present.assign(static_cast<size_t>(k), 0);
  for (size_t j = 0; j < list.size() && static_cast<int64_t>(j) < k; ++j) {
    retriever::AlignNeighbourTokens(list[j], query, c.align_neighbours, c.chunk_size, r, model_->tokenizer().eot_id(),
                                    set.tokens.data() + j * r);
    set.present[j] = 1;
  }
  return set;
}

absl::StatusOr<std::vector<lm::NeighbourSet>> Engine::RetroSets(const std::vector<lm::TokenId>& ids,
                                                                const RetroParams& p, int64_t* filtered,
                                                                int64_t padding) const {
  const auto& c = retro_->config();
  const int64_t m = c.chunk_size, k = c.neighbours, r = c.neighbour_tokens;
  const int64_t n = static_cast<int64_t>(ids.size());
  const int64_t chunks = (n + m - 1) / m;
  std::vector<lm::NeighbourSet> sets(static_cast<size_t>(chunks));
  if (chunks == 0) return sets;
  sets.back().tokens.assign(static_cast<size_t>(k * r), model_->tokenizer().eot_id());
  sets.back().present.assign(static_cast<size_t>(k), 0);
  auto chunk = [&](int64_t j) {
    return std::vector<lm::TokenId>(ids.begin() + j * m, ids.begin() + std::min(n, (j + 1) * m));
  };
  // Neighbours sharing a long run with the chunk they help predict are the
  // evaluated text itself: dropped, and more are fetched to replace them.
  auto keep = [&](int64_t j, std::vector<retriever::Neighbour> list) {
    std::vector<retriever::Neighbour> kept;
    const std::vector<lm::TokenId> target = chunk(j + 1);
    for (auto& nb : list) {
      if (static_cast<int64_t>(kept.size()) >= k) break;
      if (p.leakage_filter > 0 && retriever::NeighbourLeaks(nb, target, p.leakage_filter)) {
        ++*filtered;
        continue;
      }
      kept.push_back(std::move(nb));
    }
    return kept;
  };
  const int64_t queries = chunks - 1;  // the last chunk's set is never attended
  if (p.retrieval == "random") {
    // Seeded by the text, so the control is reproducible.
    std::mt19937_64 rng(XXH3_64bits(ids.data(), ids.size() * sizeof(lm::TokenId)));
    const int64_t total = retriever_->num_vectors();
    for (int64_t j = 0; j < queries; ++j) {
      std::vector<retriever::ChunkId> drawn;
      for (int64_t i = 0; i < 4 * k && total > 0; ++i) drawn.push_back(static_cast<int64_t>(rng() % total));
      RAG_ASSIGN_OR_RETURN(auto records, retriever_->chunk_store().GetChunks(drawn));
      std::vector<retriever::Neighbour> list;
      for (auto& rec : records) {
        if (!p.exclude_doc_id.empty() && rec.doc_id == p.exclude_doc_id) continue;
        list.push_back({rec.id, rec.doc_id, rec.offset, std::move(rec.tokens), std::move(rec.continuation), 0.0f});
      }
      sets[j] = ToNeighbourSet(keep(j, std::move(list)), chunk(j));
    }
    return sets;
  }
  std::vector<std::vector<lm::TokenId>> query_chunks;
  for (int64_t j = 0; j < queries; ++j) query_chunks.push_back(chunk(j));
  if (queries > 0 && padding > 0) {
    query_chunks[0].erase(query_chunks[0].begin(),
                          query_chunks[0].begin() + std::min<int64_t>(padding, query_chunks[0].size()));
  }
  retriever::SearchOptions so;
  so.method = p.search_method;
  so.k = static_cast<int>(p.leakage_filter > 0 ? 4 * k : k);
  if (!p.exclude_doc_id.empty()) so.exclude_doc_ids = {p.exclude_doc_id};
  constexpr int64_t kBatch = 64;
  for (int64_t b = 0; b < queries; b += kBatch) {
    std::vector<std::vector<lm::TokenId>> batch(query_chunks.begin() + b,
                                                query_chunks.begin() + std::min(queries, b + kBatch));
    RAG_ASSIGN_OR_RETURN(auto found, retriever_->Search(batch, so));
    for (size_t q = 0; q < found.size(); ++q) {
      const int64_t j = b + static_cast<int64_t>(q);
      sets[j] = ToNeighbourSet(keep(j, std::move(found[q])), query_chunks[j]);
    }
  }
  return sets;
}

absl::Status Engine::NeedIndex(const char* rpc) const {
  if (retriever_ != nullptr) return absl::OkStatus();
  return absl::FailedPreconditionError(std::string(rpc) + " needs an index, and none is served (start with --index)");
}

absl::StatusOr<v1::SearchResponse> Engine::Search(const v1::SearchRequest& request) {
  const ActiveCall active(&active_calls_);
  return Guarded("Search", [&]() -> absl::StatusOr<v1::SearchResponse> {
    RAG_RETURN_IF_ERROR(NeedIndex("Search"));
    const auto& limits = options_.limits;
    if (request.texts().empty()) return absl::InvalidArgumentError("texts is empty: give at least one query");
    if (request.texts_size() > limits.max_batch) {
      return OverLimit("the number of texts", request.texts_size(), limits.max_batch, "--max-batch");
    }
    const int k = request.k() == 0 ? 10 : request.k();
    RAG_RETURN_IF_ERROR(CheckK(k, request.k()));
    const int nprobe = request.nprobe() == 0 ? 16 : request.nprobe();
    if (nprobe < 1 || nprobe > (1 << 16)) {
      return absl::InvalidArgumentError("nprobe must be in [1, 65536], got " + std::to_string(request.nprobe()));
    }
    if (request.exclude_doc_ids_size() > 100000) {
      return absl::ResourceExhaustedError("exclude_doc_ids has more than 100000 ids");
    }
    const auto& tok = model_->tokenizer();
    std::vector<std::vector<retriever::Token>> queries;
    for (int i = 0; i < request.texts_size(); ++i) {
      const std::string field = "texts[" + std::to_string(i) + "]";
      RAG_RETURN_IF_ERROR(CheckText(request.texts(i), field.c_str(), false));
      queries.push_back(tok.Encode(request.texts(i)));
    }
    retriever::SearchOptions so;
    so.k = k;
    so.nprobe = nprobe;
    so.exclude_doc_ids.assign(request.exclude_doc_ids().begin(), request.exclude_doc_ids().end());
    if (!request.method().empty()) so.method = request.method();
    RAG_ASSIGN_OR_RETURN(auto results, retriever_->Search(queries, so));
    v1::SearchResponse response;
    for (const auto& list : results) {
      v1::NeighbourList* out = response.add_results();
      for (const auto& n : list) {
        v1::Neighbour* nb = out->add_neighbours();
        nb->set_chunk_id(n.chunk_id);
        nb->set_doc_id(ToValidUtf8(n.doc_id));
        nb->set_offset(n.offset);
        nb->set_text(Decode(tok, n.tokens));
        nb->set_continuation(Decode(tok, n.continuation));
        nb->set_distance(n.distance);
        nb->mutable_token_ids()->Add(n.tokens.begin(), n.tokens.end());
        nb->mutable_continuation_ids()->Add(n.continuation.begin(), n.continuation.end());
      }
    }
    return response;
  });
}

absl::StatusOr<v1::ScoreResponse> Engine::Score(const v1::ScoreRequest& request) {
  const ActiveCall active(&active_calls_);
  return Guarded("Score", [&]() -> absl::StatusOr<v1::ScoreResponse> {
    RAG_RETURN_IF_ERROR(CheckMode(request.mode()));
    RAG_RETURN_IF_ERROR(CheckText(request.text(), "text", false));
    if (request.stride() < 0) return absl::InvalidArgumentError("stride must be >= 0");
    const auto& tok = model_->tokenizer();
    const auto ids = tok.Encode(request.text());
    lm::ScoreOptions so;
    so.stride = request.stride();
    so.should_stop = rag::Cancelled;
    v1::ScoreResponse r;
    std::vector<float> logprobs;
    if (request.mode() == "knnlm") {
      RAG_ASSIGN_OR_RETURN(KnnParams p, ParseKnn(request.has_lambda(), request.lambda(), request.has_temperature(),
                                                 request.temperature(), request.k(), request.nprobe(),
                                                 request.exact_distances(), request.exclude_doc_id()));
      lm::ScoredTokens scored = lm::ScoreTokensWithHidden(model_->module(), ids, tok.eot_id(), so);
      if (rag::Cancelled()) return CallCancelled();
      std::vector<std::vector<retriever::DatastoreNeighbour>> neighbours;
      RAG_RETURN_IF_ERROR(SearchDatastore(scored.hidden.data_ptr<float>(), scored.hidden.size(0), p, &neighbours));
      std::vector<int32_t> values;
      std::vector<float> distances;
      for (size_t i = 0; i < ids.size(); ++i) {
        SplitNeighbours(neighbours[i], &values, &distances);
        const float knn = lm::KnnLogProb(values.data(), distances.data(), static_cast<int64_t>(values.size()),
                                         ids[i], p.knn.temperature);
        logprobs.push_back(lm::InterpolateLogProb(scored.logprobs[i], knn, p.knn.lambda));
        if (request.components()) {
          r.add_lm_logprobs(scored.logprobs[i]);
          r.add_knn_logprobs(knn);
        }
      }
      r.set_mode("knnlm");
    } else if (request.mode() == "retro") {
      RAG_ASSIGN_OR_RETURN(RetroParams p,
                           ParseRetro(request.retrieval(), request.has_leakage_filter(), request.leakage_filter(),
                                      request.exclude_doc_id(), request.search_method()));
      const int64_t m = retro_->config().chunk_size;
      if (request.stride() % m != 0) {
        return absl::InvalidArgumentError("stride must be a multiple of the RETRO chunk size " + std::to_string(m));
      }
      if (request.prompt_bytes() < 0 || request.prompt_bytes() > static_cast<int64_t>(request.text().size())) {
        return absl::InvalidArgumentError("prompt_bytes must be in [0, the text's " +
                                          std::to_string(request.text().size()) + " bytes]");
      }
      // The prompt's tokens: those the text shares with the prompt alone (a
      // token that merges across the boundary belongs to what follows).
      int64_t prompt = 0;
      if (request.prompt_bytes() > 0) {
        const auto alone = tok.Encode(request.text().substr(0, static_cast<size_t>(request.prompt_bytes())));
        while (prompt < static_cast<int64_t>(std::min(alone.size(), ids.size())) && alone[prompt] == ids[prompt]) {
          ++prompt;
        }
      }
      int64_t padding = 0;
      const std::vector<lm::TokenId> laid_out = PromptEndingAChunk(ids, prompt, m, tok.eot_id(), &padding);
      std::vector<lm::NeighbourSet> sets;
      int64_t filtered = 0;
      if (p.retrieval != "off") {
        RAG_ASSIGN_OR_RETURN(sets, RetroSets(laid_out, p, &filtered, padding));
      }
      lm::RetroScoreOptions ro;
      ro.should_stop = rag::Cancelled;
      ro.stride_chunks = request.stride() / m;
      RAG_ASSIGN_OR_RETURN(logprobs, lm::ScoreRetroTokens(retro_->module(), laid_out, tok.eot_id(), sets, ro));
      logprobs.erase(logprobs.begin(), logprobs.begin() + padding);
      r.set_mode("retro");
      r.set_retrievals(sets.empty() ? 0 : static_cast<int64_t>(sets.size()) - 1);
      r.set_neighbours_filtered(filtered);
    } else {
      logprobs = lm::ScoreTokens(model_->module(), ids, tok.eot_id(), so);
      if (rag::Cancelled()) return CallCancelled();
      r.set_mode("lm");
    }
    double sum = 0;
    for (float lp : logprobs) sum += lp;
    r.set_tokens(static_cast<int64_t>(logprobs.size()));
    r.set_logprob_sum(sum);
    r.set_nll(-sum / static_cast<double>(logprobs.size()));
    r.set_perplexity(std::exp(r.nll()));
    if (request.per_token()) {
      for (size_t i = 0; i < ids.size(); ++i) {
        v1::TokenScore* t = r.add_token_scores();
        t->set_id(ids[i]);
        t->set_piece(tok.TokenBytes(ids[i]));
        t->set_logprob(logprobs[i]);
      }
    }
    return r;
  });
}

absl::StatusOr<v1::NextTokenResponse> Engine::NextToken(const v1::NextTokenRequest& request) {
  const ActiveCall active(&active_calls_);
  return Guarded("NextToken", [&]() -> absl::StatusOr<v1::NextTokenResponse> {
    RAG_RETURN_IF_ERROR(CheckMode(request.mode()));
    RAG_RETURN_IF_ERROR(CheckText(request.text(), "text", true));
    const int top_n = request.top_n() == 0 ? 10 : request.top_n();
    if (top_n > options_.limits.max_top_n) return OverLimit("top_n", top_n, options_.limits.max_top_n, "--max-top-n");
    if (top_n < 1) {
      return absl::InvalidArgumentError("top_n must be in [1, " + std::to_string(options_.limits.max_top_n) +
                                        "], got " + std::to_string(request.top_n()));
    }
    const auto& tok = model_->tokenizer();
    v1::NextTokenResponse r;
    torch::Tensor hidden, logprobs;
    if (request.mode() == "retro") {
      RAG_ASSIGN_OR_RETURN(RetroParams p, ParseRetro(request.retrieval(), true, 0, ""));
      const auto ids = tok.Encode(request.text());
      std::vector<lm::NeighbourSet> sets;
      int64_t filtered = 0;
      // Sets of the complete chunks only: the next token sits after them.
      std::vector<lm::TokenId> complete(ids.begin(), ids.end() - static_cast<int64_t>(ids.size()) % retro_->config().chunk_size);
      complete.push_back(tok.eot_id());  // a last (partial) chunk whose set is never used
      if (p.retrieval != "off" && complete.size() > 1) {
        RAG_ASSIGN_OR_RETURN(sets, RetroSets(complete, p, &filtered));
      }
      RAG_ASSIGN_OR_RETURN(logprobs, RetroNextTokenLogProbs(retro_->module(), ids, tok.eot_id(), sets));
      r.set_mode("retro");
    } else {
      logprobs = lm::NextTokenLogProbs(model_->module(), tok.Encode(request.text()), tok.eot_id(), &hidden);
      r.set_mode("lm");
    }
    if (request.mode() == "knnlm") {
      RAG_ASSIGN_OR_RETURN(KnnParams p, ParseKnn(request.has_lambda(), request.lambda(), request.has_temperature(),
                                                 request.temperature(), request.k(), request.nprobe(),
                                                 request.exact_distances(), ""));
      RAG_ASSIGN_OR_RETURN(logprobs, KnnDistribution(hidden, logprobs, p));
      r.set_mode("knnlm");
    }
    auto [values, indices] = logprobs.topk(std::min<int64_t>(top_n, logprobs.size(0)));
    auto v = values.accessor<float, 1>();
    auto ix = indices.accessor<int64_t, 1>();
    for (int64_t i = 0; i < values.size(0); ++i) {
      v1::TokenProbability* t = r.add_tokens();
      t->set_id(static_cast<int32_t>(ix[i]));
      t->set_piece(tok.TokenBytes(static_cast<int32_t>(ix[i])));
      t->set_logprob(v[i]);
      t->set_probability(std::exp(v[i]));
    }
    return r;
  });
}

absl::StatusOr<v1::GenerateResponse> Engine::Generate(const v1::GenerateRequest& request,
                                                      const GenerateCallback& on_token) {
  const ActiveCall active(&active_calls_);
  return Guarded("Generate", [&]() -> absl::StatusOr<v1::GenerateResponse> {
    RAG_RETURN_IF_ERROR(CheckMode(request.mode()));
    RAG_RETURN_IF_ERROR(CheckText(request.prompt(), "prompt", true));
    const int max_tokens = request.max_tokens() == 0 ? 64 : request.max_tokens();
    if (max_tokens > options_.limits.max_generate_tokens) {
      return OverLimit("max_tokens", max_tokens, options_.limits.max_generate_tokens, "--max-generate-tokens");
    }
    if (max_tokens < 1) {
      return absl::InvalidArgumentError("max_tokens must be in [1, " +
                                        std::to_string(options_.limits.max_generate_tokens) + "], got " +
                                        std::to_string(request.max_tokens()));
    }
    const auto& s = request.sampling();
    if (!(s.temperature() >= 0) || !std::isfinite(s.temperature())) {
      return absl::InvalidArgumentError("sampling.temperature must be >= 0 (0 = greedy)");
    }
    if (s.top_k() < 0) return absl::InvalidArgumentError("sampling.top_k must be >= 0 (0 = all tokens)");
    if (!(s.top_p() >= 0 && s.top_p() <= 1)) return absl::InvalidArgumentError("sampling.top_p must be in [0, 1]");
    lm::SamplingOptions so;
    so.max_tokens = max_tokens;
    so.temperature = s.temperature();
    so.top_k = s.top_k();
    so.top_p = s.top_p() == 0 ? 1.0 : s.top_p();
    so.seed = s.seed();
    so.stop_at_eot = !request.ignore_eot();
    const auto& tok = model_->tokenizer();
    std::vector<lm::TokenId> prompt;
    if (request.prompt_token_ids_size() > 0) {
      if (!request.prompt().empty()) {
        return absl::InvalidArgumentError("give the prompt as text or as prompt_token_ids, not both");
      }
      if (request.prompt_token_ids_size() > options_.limits.max_text_bytes) {
        return OverLimit("the number of prompt_token_ids", request.prompt_token_ids_size(),
                         options_.limits.max_text_bytes, "--max-text-bytes");
      }
      for (int i = 0; i < request.prompt_token_ids_size(); ++i) {
        const int32_t id = request.prompt_token_ids(i);
        if (id < 0 || id >= tok.vocab_size()) {
          return absl::InvalidArgumentError("prompt_token_ids[" + std::to_string(i) + "] = " + std::to_string(id) +
                                            " is not a token id (vocabulary of " + std::to_string(tok.vocab_size()) +
                                            ")");
        }
      }
      prompt.assign(request.prompt_token_ids().begin(), request.prompt_token_ids().end());
    } else {
      prompt = tok.Encode(request.prompt());
    }
    lm::LogitsHook hook;
    absl::Status hook_status;
    if (request.mode() == "knnlm") {
      RAG_ASSIGN_OR_RETURN(KnnParams p, ParseKnn(request.has_lambda(), request.lambda(),
                                                 request.has_knn_temperature(), request.knn_temperature(),
                                                 request.k(), request.nprobe(), false, request.exclude_doc_id()));
      // Sampling from log p_knnlm is sampling from p_knnlm: softmax is
      // shift-invariant, so temperature, top-k and top-p apply unchanged.
      hook = [this, p, &hook_status](const torch::Tensor& hidden, const torch::Tensor& logits) {
        auto mixed = KnnDistribution(hidden, torch::log_softmax(logits, -1), p);
        if (!mixed.ok()) {
          hook_status = mixed.status();
          return logits;
        }
        return *mixed;
      };
    }
    bool cancelled = false;
    auto emit = [&](lm::TokenId id) {
      if (rag::Cancelled()) {
        cancelled = true;
        return false;
      }
      if (!on_token) return true;
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
    absl::StatusOr<std::vector<lm::TokenId>> generated;
    if (request.mode() == "retro") {
      RAG_ASSIGN_OR_RETURN(RetroParams p, ParseRetro(request.retrieval(), true, 0, request.exclude_doc_id()));
      // The first generated token already attends to the prompt's neighbours.
      int64_t padding = 0;
      const std::vector<lm::TokenId> laid_out = PromptEndingAChunk(prompt, static_cast<int64_t>(prompt.size()),
                                                                   retro_->config().chunk_size, tok.eot_id(), &padding);
      lm::RetrieveFn retrieve;
      if (p.retrieval != "off") {
        // Neighbours of each completed chunk: retrieved (or drawn at random)
        // once, and reported in the final message.
        retrieve = [&](const std::vector<lm::TokenId>& chunk) -> absl::StatusOr<lm::NeighbourSet> {
          std::vector<lm::TokenId> query = chunk;
          query.push_back(tok.eot_id());
          // The padding is no part of the first chunk's query.
          const bool first = padding > 0 && std::equal(chunk.begin(), chunk.end(), laid_out.begin());
          int64_t filtered = 0;
          RAG_ASSIGN_OR_RETURN(auto sets, RetroSets(query, p, &filtered, first ? padding : 0));
          return sets[0];
        };
      }
      auto on_retrieve = [&](int64_t chunk, const lm::NeighbourSet& set) {
        v1::ChunkRetrieval* rv = done.add_retrievals();
        rv->set_chunk(chunk);
        const int64_t r_tokens = retro_->config().neighbour_tokens;
        for (size_t j = 0; j < set.present.size(); ++j) {
          if (!set.present[j]) continue;
          v1::Neighbour* nb = rv->add_neighbours();
          std::vector<int32_t> t(set.tokens.begin() + static_cast<int64_t>(j) * r_tokens,
                                 set.tokens.begin() + static_cast<int64_t>(j + 1) * r_tokens);
          nb->set_text(Decode(tok, t));
          nb->mutable_token_ids()->Add(t.begin(), t.end());
        }
      };
      generated = lm::GenerateRetro(retro_->module(), laid_out, tok.eot_id(), so, retrieve, emit, on_retrieve);
    } else {
      generated = lm::Generate(model_->module(), prompt, tok.eot_id(), so, emit, hook);
    }
    if (!generated.ok()) return generated.status();
    RAG_RETURN_IF_ERROR(hook_status);
    if (cancelled) return absl::CancelledError("generation cancelled by the client");
    std::vector<int32_t> text_ids;
    for (auto id : *generated) {
      if (id != tok.eot_id()) text_ids.push_back(id);
    }
    done.set_done(true);
    done.set_text(Decode(tok, text_ids));
    done.set_tokens(static_cast<int64_t>(generated->size()));
    return done;
  });
}

absl::StatusOr<v1::InfoResponse> Engine::Info() {
  v1::InfoResponse r;
  r.set_model_hash(model_->content_hash());
  r.set_config_json(model_->config().ToJson());
  r.set_tokenizer_json(model_->tokenizer().ToJson());
  r.set_split_json(split_json_);
  r.add_modes("lm");
  if (datastore_ != nullptr) r.add_modes("knnlm");
  if (retro_ != nullptr) r.add_modes("retro");
  return r;
}

absl::StatusOr<v1::StatsResponse> Engine::Stats() {
  RAG_RETURN_IF_ERROR(NeedIndex("Stats"));
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

absl::Status Engine::AddDocument(const v1::Document& d, v1::AddDocumentsResponse* totals) {
  return Guarded("AddDocuments", [&]() -> absl::Status {
    RAG_RETURN_IF_ERROR(NeedIndex("AddDocuments"));
    if (!retriever_->writable()) {
      return absl::FailedPreconditionError("the index is served read-only (restart rag serve without --read-only)");
    }
    if (d.id().empty()) return absl::InvalidArgumentError("id is empty: every document needs a unique id");
    if (static_cast<int64_t>(d.id().size()) > options_.limits.max_id_bytes) {
      return OverLimit("id in bytes", static_cast<int64_t>(d.id().size()), options_.limits.max_id_bytes,
                       "--max-id-bytes");
    }
    const std::string field = "text of document '" + d.id() + "'";
    RAG_RETURN_IF_ERROR(CheckText(d.text(), field.c_str(), false));
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

#include "index_builder/retro_training.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <random>
#include <unordered_set>

#include <xxhash.h>

#include "common/file_util.h"
#include "common/progress.h"
#include "common/status.h"
#include "index_builder/retro_neighbours.h"
#include "lm/data_split.h"
#include "lm/embedder.h"
#include "lm/language_model.h"
#include "lm/retro_model.h"
#include "retriever/neighbour_set.h"
#include "retriever/retriever.h"

namespace rag::index_builder {
namespace fs = std::filesystem;
using nlohmann::json;

lm::RetroTrainerOptions RetroPresetOptions(const std::string& preset) {
  lm::RetroTrainerOptions o;
  o.freeze_decoder = true;
  if (preset == "tiny") {
    o.steps = 200;
    o.batch_size = 8;
    o.lr = 2e-3;
    o.warmup_steps = 20;
    o.checkpoint_every = 100;
    o.eval_every = 50;
    o.prompt_windows = 8;
  } else {
    // The `small` LM's budget: its decoder is frozen, so fewer steps than
    // the LM's own training recover most of the gain (RETRO's retrofitting).
    o.steps = 400;
    o.batch_size = 8;
    o.lr = 1e-3;
    o.warmup_steps = 40;
    o.checkpoint_every = 100;
    o.eval_every = 100;
    // Windows of two chunks, mostly padding: cheaper than the 8 above.
    o.prompt_windows = 16;
  }
  return o;
}

namespace {

// RetroConfig defaults around the base LM's decoder and its tokenizer's
// end-of-text (what prompts are padded with), with the user's overrides (a
// JSON object) applied on top.
absl::StatusOr<lm::RetroConfig> MakeConfig(const lm::TransformerConfig& decoder, lm::TokenId eot,
                                           const std::string& overrides) {
  lm::RetroConfig defaults;
  defaults.decoder = decoder;
  defaults.padding_id = eot;
  if (defaults.decoder.n_layers < 4) {
    defaults.cca_layers.clear();
    for (int64_t l = 0; l < defaults.decoder.n_layers; ++l) defaults.cca_layers.push_back(l);
  }
  if (overrides.empty()) {
    RAG_RETURN_IF_ERROR(defaults.Validate());
    return defaults;
  }
  json base = json::parse(defaults.ToJson());
  json extra = json::parse(overrides, nullptr, false);
  if (extra.is_discarded() || !extra.is_object()) return absl::InvalidArgumentError("--config must be a JSON object");
  if (extra.contains("decoder")) {
    return absl::InvalidArgumentError("--config: the decoder is the base LM's (--init) and cannot be overridden");
  }
  base.merge_patch(extra);
  return lm::RetroConfig::FromJson(base.dump());
}

// Adds the prompt windows of one document to `out`: `count` prompts (see
// RetroTrainJob::prompts_per_document), each with the K neighbours found
// with it, never from exclude[1..] (the excluded documents) and, except for
// a fraction `own_rate` of the prompts, not from exclude[0] (the document).
absl::Status AddPromptWindows(const retriever::Retriever& retriever, const std::vector<lm::TokenId>& doc,
                              const std::string& doc_id, const std::vector<std::string>& exclude, int count,
                              const std::string& method, double own_rate, const lm::RetroConfig& config,
                              lm::TokenId eot, uint64_t seed, lm::RetroPromptWindows* out) {
  const int64_t n = static_cast<int64_t>(doc.size()), m = config.chunk_size;
  const int64_t k = config.neighbours, r = config.neighbour_tokens;
  if (n < 2 || count < 1) return absl::OkStatus();
  std::mt19937_64 rng(XXH3_64bits_withSeed(doc_id.data(), doc_id.size(), seed));
  std::vector<std::vector<retriever::Token>> queries;
  std::vector<std::pair<int64_t, int64_t>> spans;  // (start, prompt tokens)
  std::vector<bool> own;                           // may retrieve the document itself
  for (int i = 0; i < count; ++i) {
    own.push_back(std::uniform_real_distribution<double>(0.0, 1.0)(rng) < own_rate);
    // Short documents (facts, abstracts) are asked from their start, as
    // probes and prompts are; long ones anywhere.
    const int64_t s = n <= 2 * m ? 0 : std::uniform_int_distribution<int64_t>(0, n - 2)(rng);
    const int64_t most = std::min(m, n - s - 1), least = std::min<int64_t>(2, most);
    const int64_t p = std::uniform_int_distribution<int64_t>(least, most)(rng);
    spans.emplace_back(s, p);
    queries.emplace_back(doc.begin() + s, doc.begin() + s + p);
  }
  retriever::NeighbourSetOptions so;
  so.k = static_cast<int>(k);
  so.tokens = r;
  so.pad = static_cast<retriever::Token>(eot);
  so.align = config.align_neighbours;
  so.chunk = m;
  so.method = method;
  // One search for the prompts that may retrieve their document, one for the rest.
  std::vector<retriever::NeighbourSet> sets(queries.size());
  for (const bool with_own : {true, false}) {
    std::vector<size_t> which;
    retriever::NeighbourQueries group;
    for (size_t i = 0; i < queries.size(); ++i) {
      if (own[i] != with_own) continue;
      which.push_back(i);
      group.tokens.push_back(queries[i]);
    }
    if (group.tokens.empty()) continue;
    so.exclude_doc_ids.assign(exclude.begin() + (with_own ? 1 : 0), exclude.end());
    RAG_ASSIGN_OR_RETURN(auto built, retriever::BuildNeighbourSets(retriever, group, so));
    for (size_t g = 0; g < which.size(); ++g) sets[which[g]] = std::move(built[g]);
  }
  for (size_t i = 0; i < spans.size(); ++i) {
    const auto [s, p] = spans[i];
    out->tokens.emplace_back(doc.begin() + s, doc.begin() + std::min(n, s + p + m));
    out->prompt_tokens.push_back(p);
    out->neighbours.push_back(std::move(sets[i].tokens));
    out->present.push_back(std::move(sets[i].present));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<RetroTrainSummary> TrainRetro(const RetroTrainJob& job, const std::atomic<bool>* stop) {
  const auto started = std::chrono::steady_clock::now();
  if (job.out_dir.empty()) return absl::InvalidArgumentError("no output model directory given");
  if (job.index_dir.empty()) return absl::InvalidArgumentError("--arch retro needs --index INDEX_DIR");
  if (job.base_dir.empty()) {
    return absl::InvalidArgumentError("--arch retro needs --init LM_DIR: the LM the index was built with");
  }
  const fs::path dir(job.out_dir);
  const std::string checkpoint = (dir / lm::kCheckpointFile).string();
  if (job.resume && !fs::exists(checkpoint)) {
    return absl::FailedPreconditionError("--resume: no checkpoint at '" + checkpoint + "'");
  }
  if (!job.resume && !job.overwrite && (fs::exists(checkpoint) || fs::exists(dir / lm::kInfoFile))) {
    return absl::FailedPreconditionError("'" + job.out_dir +
                                         "' already holds a model or checkpoint; pass --resume to continue "
                                         "it or --overwrite to start over");
  }
  RAG_ASSIGN_OR_RETURN(auto base, lm::LanguageModel::Open(job.base_dir));
  if (base->module()->scripted()) {
    return absl::FailedPreconditionError("--init '" + job.base_dir + "' is a " + base->identity().format +
                                         " model; RETRO's decoder starts from a rag model's own layers");
  }
  // A downloaded model was not trained here: there is no held-out side of
  // its training to respect, so RETRO makes its own split of the index's
  // documents below (RETRO-fitting a pretrained decoder, Borgeaud et al. 4.4).
  const fs::path base_split = fs::path(job.base_dir) / lm::kSplitFile;
  const bool own_split = base->identity().format == "huggingface" && !fs::exists(base_split);
  std::unordered_set<std::string> validation_ids;
  if (own_split) {
    if (!(job.validation_fraction >= 0 && job.validation_fraction < 1)) {
      return absl::InvalidArgumentError("validation fraction must be in [0, 1)");
    }
  } else {
    auto split_text = ReadFile(base_split.string());
    if (!split_text.ok()) {
      return Annotate(split_text.status(), "--init '" + job.base_dir +
                                               "' has no split.json (train it with `rag train`), so RETRO cannot "
                                               "keep the LM's held-out documents out of its training");
    }
    json split = json::parse(*split_text, nullptr, false);
    if (split.is_discarded() || !split.contains("validation_ids") || !split["validation_ids"].is_array()) {
      return absl::DataLossError("'" + job.base_dir + "/split.json' is malformed");
    }
    for (const auto& id : split["validation_ids"]) validation_ids.insert(id.get<std::string>());
  }

  auto embedder = lm::MakeLmEmbedder(base.get());
  RAG_ASSIGN_OR_RETURN(auto retriever, retriever::Retriever::Open(job.index_dir, embedder.get(), base->content_hash(),
                                                                  base->tokenizer().Hash()));
  const retriever::Manifest manifest = retriever->manifest();
  const lm::TokenId eot = base->tokenizer().eot_id();
  RAG_ASSIGN_OR_RETURN(lm::RetroConfig config, MakeConfig(base->config(), eot, job.config_overrides_json));
  if (config.chunk_size != manifest.chunk_tokens) {
    return absl::InvalidArgumentError("chunk_size " + std::to_string(config.chunk_size) + " differs from the index's " +
                                      std::to_string(manifest.chunk_tokens) + "-token chunks");
  }
  if (config.neighbour_tokens > manifest.chunk_tokens + manifest.continuation_tokens) {
    return absl::InvalidArgumentError("neighbour_tokens " + std::to_string(config.neighbour_tokens) +
                                      " exceeds the index's chunk + continuation (" +
                                      std::to_string(manifest.chunk_tokens + manifest.continuation_tokens) + ")");
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError("creating '" + job.out_dir + "': " + ec.message());
  // Data-parallel, rank 0 alone writes the model directory (the neighbour
  // table, identical on every rank, is written atomically by each).
  const bool writer = job.trainer.dist == nullptr || job.trainer.dist->is_root();
  if (job.overwrite && !job.resume && writer) fs::remove(dir / lm::kInfoFile, ec);

  RetroNeighbourOptions no;
  no.k = static_cast<int>(config.neighbours);
  no.tokens = static_cast<int>(config.neighbour_tokens);
  no.align = config.align_neighbours;
  no.chunk = config.chunk_size;
  no.nprobe = job.nprobe;
  no.method = job.neighbour_search;
  no.own_document_filter = job.own_document_filter;
  no.show_progress = job.trainer.show_progress;
  RAG_ASSIGN_OR_RETURN(RetroNeighbourTable table,
                       LoadOrComputeRetroNeighbours(*retriever, static_cast<int32_t>(eot), no,
                                                    (dir / kRetroNeighboursFile).string()));

  // The index's documents, each with the neighbour sets of its chunks, on
  // the side of the base LM's split they belong to.
  lm::RetroTrainingData data;
  RetroTrainSummary summary;
  const auto& store = retriever->chunk_store();
  std::vector<std::string> doc_ids;
  RAG_RETURN_IF_ERROR(store.ForEachChunk(0, [&](const retriever::ChunkRecord& c) {
    if (doc_ids.empty() || doc_ids.back() != c.doc_id) doc_ids.push_back(c.doc_id);
    return true;
  }));
  if (own_split) {
    // Over all the index's documents (before --corpus or --exclude-documents
    // narrow them), by id, so resuming or re-evaluating sees the same split.
    std::vector<Document> ids;
    for (const auto& id : doc_ids) ids.push_back({id, ""});
    lm::DataSplit made = lm::SplitDocuments(std::move(ids), job.validation_fraction, job.trainer.seed);
    for (const auto& d : made.validation) validation_ids.insert(d.id);
    if (writer) {
      RAG_RETURN_IF_ERROR(WriteFileAtomic((dir / lm::kSplitFile).string(),
                                          lm::SplitToJson(made, job.validation_fraction, job.trainer.seed)));
    }
    std::fprintf(stderr, "train: '%s' has no split.json (a downloaded model): %zu of the index's %zu documents held "
                 "out, recorded in %s\n", job.base_dir.c_str(), made.validation.size(), doc_ids.size(),
                 (dir / lm::kSplitFile).c_str());
  }
  const int64_t set_size = table.k * static_cast<int64_t>(table.tokens);
  const bool prompts = job.trainer.prompt_windows > 0;
  if (prompts && job.prompt_search != "dense" && job.prompt_search != "bm25") {
    return absl::InvalidArgumentError("prompt search must be dense or bm25, got '" + job.prompt_search + "'");
  }
  std::vector<std::string> exclude(job.exclude_documents.begin(), job.exclude_documents.end());
  std::sort(exclude.begin(), exclude.end());
  exclude.insert(exclude.begin(), "");  // slot for the document itself
  std::unique_ptr<Progress> progress;
  if (prompts && job.trainer.show_progress) {
    progress = std::make_unique<Progress>("retro prompts", static_cast<int64_t>(doc_ids.size()), "docs");
  }
  int64_t visited = 0;
  for (const auto& id : doc_ids) {
    if (progress) progress->Update(visited++);
    if (!job.only_documents.empty() && job.only_documents.count(id) == 0) continue;
    if (job.exclude_documents.count(id) > 0) continue;
    RAG_ASSIGN_OR_RETURN(retriever::DocumentRecord doc, store.GetDocument(id));
    const bool validation = validation_ids.count(id) > 0;
    lm::RetroDocuments& side = validation ? data.validation : data.train;
    side.tokens.emplace_back(doc.tokens.begin(), doc.tokens.end());
    const int64_t first = doc.first_chunk, n = doc.num_chunks;
    side.neighbours.emplace_back(table.token_ids.begin() + first * set_size,
                                 table.token_ids.begin() + (first + n) * set_size);
    std::vector<uint8_t> present(static_cast<size_t>(n * table.k));
    for (int64_t c = 0; c < n; ++c) {
      for (int j = 0; j < table.k; ++j) present[static_cast<size_t>(c * table.k + j)] = table.has(first + c, j);
    }
    side.present.push_back(std::move(present));
    if (prompts) {
      // Validation documents and 1 in 20 training documents (by id) give the
      // held-out prompts that show whether the model reads its neighbours.
      const bool held_out = validation || XXH3_64bits(id.data(), id.size()) % 20 == 0;
      exclude[0] = id;
      RAG_RETURN_IF_ERROR(AddPromptWindows(*retriever, side.tokens.back(), id, exclude, job.prompts_per_document,
                                           job.prompt_search, job.prompt_own_document, config, eot,
                                           job.trainer.seed,
                                           held_out ? &data.validation_prompts : &data.train_prompts));
    }
    if (validation) {
      summary.validation_documents += 1;
    } else {
      summary.train_documents += 1;
      summary.train_chunks += n;
    }
  }
  if (progress) progress->Finish();
  if (summary.train_documents == 0) return absl::InvalidArgumentError("the index holds no training document");
  summary.train_prompt_windows = data.train_prompts.size();
  summary.validation_prompt_windows = data.validation_prompts.size();

  lm::RetroTrainerOptions options = job.trainer;
  RAG_ASSIGN_OR_RETURN(auto trainer, lm::RetroTrainer::Create(config, options, std::move(data), eot, checkpoint,
                                                              job.resume, &base->module()));
  if (job.resume) std::fprintf(stderr, "train: resuming at step %lld\n", static_cast<long long>(trainer->step()));
  std::fprintf(stderr,
               "train: RETRO (%s) %lld parameters, %zu training documents (%lld chunks), %zu validation documents, "
               "%lld neighbours of %lld tokens per chunk\n",
               options.freeze_decoder ? "retrofit: decoder frozen" : "all weights trained",
               static_cast<long long>(trainer->model()->NumParameters()), summary.train_documents,
               static_cast<long long>(summary.train_chunks), summary.validation_documents,
               static_cast<long long>(config.neighbours), static_cast<long long>(config.neighbour_tokens));
  if (options.prompt_windows > 0) {
    std::fprintf(stderr,
                 "train: %lld prompt windows per step from %zu (%zu held out), neighbours by %s; %zu documents "
                 "excluded\n",
                 static_cast<long long>(options.prompt_windows), summary.train_prompt_windows,
                 summary.validation_prompt_windows, job.prompt_search.c_str(), job.exclude_documents.size());
  }
  RAG_RETURN_IF_ERROR(trainer->Run(stop));
  summary.steps = trainer->step();
  if (summary.validation_documents > 0) {
    summary.validation_loss = trainer->ValidationLoss(true);
    summary.validation_loss_no_retrieval = trainer->ValidationLoss(false);
  }
  summary.prompt_loss = trainer->PromptValidationLoss(true);
  summary.prompt_loss_no_retrieval = trainer->PromptValidationLoss(false);
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  if (!writer) return summary;  // rank 0 saves the (identical) model
  trainer->model()->eval();
  lm::RetroModel model(config, trainer->model(), std::move(base));
  auto finite = [](double v) { return std::isfinite(v) ? json(v) : json(); };
  json info = {{"steps", summary.steps},
               {"seed", options.seed},
               {"retrofit", options.freeze_decoder},
               {"index_dir", job.index_dir},
               {"index_fingerprint", table.fingerprint},
               {"train_documents", summary.train_documents},
               {"validation_documents", summary.validation_documents},
               {"train_chunks", summary.train_chunks},
               {"validation_loss", finite(summary.validation_loss)},
               {"validation_loss_no_retrieval", finite(summary.validation_loss_no_retrieval)},
               {"prompt_windows", options.prompt_windows},
               {"prompt_search", job.prompt_search},
               {"neighbour_search", job.neighbour_search},
               {"own_document_filter", job.own_document_filter},
               {"prompt_own_document", job.prompt_own_document},
               {"train_prompt_windows", summary.train_prompt_windows},
               {"validation_prompt_windows", summary.validation_prompt_windows},
               {"prompt_loss", finite(summary.prompt_loss)},
               {"prompt_loss_no_retrieval", finite(summary.prompt_loss_no_retrieval)},
               {"excluded_documents", job.exclude_documents.size()}};
  RAG_RETURN_IF_ERROR(model.Save(job.out_dir, job.base_dir, info.dump()));
  return summary;
}

}  // namespace rag::index_builder

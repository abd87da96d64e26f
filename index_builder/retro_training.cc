#include "index_builder/retro_training.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <unordered_set>

#include "common/file_util.h"
#include "common/status.h"
#include "index_builder/retro_neighbours.h"
#include "lm/embedder.h"
#include "lm/language_model.h"
#include "lm/retro_model.h"
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
  } else {
    // The `small` LM's budget: its decoder is frozen, so fewer steps than
    // the LM's own training recover most of the gain (RETRO's retrofitting).
    o.steps = 400;
    o.batch_size = 8;
    o.lr = 1e-3;
    o.warmup_steps = 40;
    o.checkpoint_every = 100;
    o.eval_every = 100;
  }
  return o;
}

namespace {

// RetroConfig defaults around the base LM's decoder, with the user's
// overrides (a JSON object) applied on top.
absl::StatusOr<lm::RetroConfig> MakeConfig(const lm::TransformerConfig& decoder, const std::string& overrides) {
  lm::RetroConfig defaults;
  defaults.decoder = decoder;
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
  auto split_text = ReadFile((fs::path(job.base_dir) / lm::kSplitFile).string());
  if (!split_text.ok()) {
    return Annotate(split_text.status(), "--init '" + job.base_dir +
                                             "' has no split.json (train it with `rag train`), so RETRO cannot "
                                             "keep the LM's held-out documents out of its training");
  }
  json split = json::parse(*split_text, nullptr, false);
  if (split.is_discarded() || !split.contains("validation_ids") || !split["validation_ids"].is_array()) {
    return absl::DataLossError("'" + job.base_dir + "/split.json' is malformed");
  }
  std::unordered_set<std::string> validation_ids;
  for (const auto& id : split["validation_ids"]) validation_ids.insert(id.get<std::string>());

  auto embedder = lm::MakeLmEmbedder(base.get());
  RAG_ASSIGN_OR_RETURN(auto retriever, retriever::Retriever::Open(job.index_dir, embedder.get(), base->content_hash(),
                                                                  base->tokenizer().Hash()));
  const retriever::Manifest manifest = retriever->manifest();
  RAG_ASSIGN_OR_RETURN(lm::RetroConfig config, MakeConfig(base->config(), job.config_overrides_json));
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
  if (job.overwrite && !job.resume) fs::remove(dir / lm::kInfoFile, ec);

  RetroNeighbourOptions no;
  no.k = static_cast<int>(config.neighbours);
  no.tokens = static_cast<int>(config.neighbour_tokens);
  no.nprobe = job.nprobe;
  no.show_progress = job.trainer.show_progress;
  const lm::TokenId eot = base->tokenizer().eot_id();
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
  const int64_t set_size = table.k * static_cast<int64_t>(table.tokens);
  for (const auto& id : doc_ids) {
    if (!job.only_documents.empty() && job.only_documents.count(id) == 0) continue;
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
    if (validation) {
      summary.validation_documents += 1;
    } else {
      summary.train_documents += 1;
      summary.train_chunks += n;
    }
  }
  if (summary.train_documents == 0) return absl::InvalidArgumentError("the index holds no training document");

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
  RAG_RETURN_IF_ERROR(trainer->Run(stop));
  summary.steps = trainer->step();
  if (summary.validation_documents > 0) {
    summary.validation_loss = trainer->ValidationLoss(true);
    summary.validation_loss_no_retrieval = trainer->ValidationLoss(false);
  }
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
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
               {"validation_loss_no_retrieval", finite(summary.validation_loss_no_retrieval)}};
  RAG_RETURN_IF_ERROR(model.Save(job.out_dir, job.base_dir, info.dump()));
  return summary;
}

}  // namespace rag::index_builder

#include "index_builder/trained_index.h"

#include <torch/torch.h>

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>

#include "common/file_util.h"
#include "common/progress.h"
#include "common/status.h"
#include "lm/scorer.h"
#include "retriever/datastore.h"
#include "retriever/vector_index.h"

namespace rag::index_builder {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using retriever::VectorIndex;

absl::Status CheckTrainingStop(const std::atomic<bool>* stop) {
  if (stop != nullptr && stop->load()) return absl::CancelledError("training interrupted; rerun to train again");
  return absl::OkStatus();
}

// Rows [0, n) when the sample is all of them, else SampleRows's choice.
std::vector<int64_t> SampleOf(int64_t n, int64_t m, uint64_t seed) {
  if (m < n) return VectorIndex::SampleRows(n, m, seed);
  std::vector<int64_t> all(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) all[static_cast<size_t>(i)] = i;
  return all;
}

// The embeddings of the chunks numbered `rows` (sorted) in the whole
// corpus's chunk order (documents in order, each cut as ChunkStore cuts it),
// [rows.size(), dim] in that order: the rows a single build's TrainFromFile
// would read from embeddings.f32. Only documents holding a sampled chunk
// are tokenized again.
absl::StatusOr<std::vector<float>> EmbedSampledChunks(const std::vector<Document>& docs,
                                                      const std::vector<int64_t>& chunks_of_doc,
                                                      const std::vector<int64_t>& rows, const lm::Tokenizer& tok,
                                                      lm::Embedder& embedder, const TrainOnlyOptions& o,
                                                      const std::atomic<bool>* stop) {
  std::vector<float> sample;
  sample.reserve(rows.size() * static_cast<size_t>(embedder.dim()));
  std::vector<std::vector<lm::TokenId>> batch;
  std::vector<float> out;
  auto flush = [&]() -> absl::Status {
    if (batch.empty()) return absl::OkStatus();
    RAG_RETURN_IF_ERROR(embedder.Embed(batch, &out));
    sample.insert(sample.end(), out.begin(), out.end());
    batch.clear();
    return CheckTrainingStop(stop);
  };
  Progress progress("train: embed sample", static_cast<int64_t>(rows.size()), "chunks");
  size_t next = 0;
  int64_t first = 0;  // the document's first chunk
  for (size_t d = 0; d < docs.size() && next < rows.size(); ++d) {
    const int64_t end = first + chunks_of_doc[d];
    if (rows[next] < end) {
      const std::vector<lm::TokenId> tokens = tok.Encode(docs[d].text);
      for (; next < rows.size() && rows[next] < end; ++next) {
        const size_t from = static_cast<size_t>((rows[next] - first) * o.chunk_tokens);
        const size_t to = std::min(tokens.size(), from + static_cast<size_t>(o.chunk_tokens));
        batch.emplace_back(tokens.begin() + from, tokens.begin() + to);
        if (static_cast<int64_t>(batch.size()) == o.embed_batch) RAG_RETURN_IF_ERROR(flush());
      }
      if (o.show_progress) progress.Update(static_cast<int64_t>(next));
    }
    first = end;
  }
  RAG_RETURN_IF_ERROR(flush());
  if (o.show_progress) progress.Finish();
  if (sample.size() != rows.size() * static_cast<size_t>(embedder.dim())) {
    return absl::InternalError("embedded " + std::to_string(sample.size()) + " floats for " +
                               std::to_string(rows.size()) + " sampled chunks");
  }
  return sample;
}

// Stage 1 of --train-only: the chunk index, written to work/chunks.faiss.
absl::Status TrainChunkIndex(const std::vector<Document>& docs, const std::vector<int64_t>& chunks_of_doc,
                             const lm::Tokenizer& tok, lm::Embedder& embedder, const TrainOnlyOptions& o,
                             const fs::path& work, TrainedIndexRecord* r, const std::atomic<bool>* stop) {
  const int dim = embedder.dim();
  const int64_t n = r->chunks;
  const std::string requested = o.index_factory.empty() ? VectorIndex::DefaultFactory(n, dim) : o.index_factory;
  RAG_ASSIGN_OR_RETURN(retriever::FactoryChoice choice, VectorIndex::AdaptFactory(requested, n, dim));
  if (!choice.note.empty()) std::fprintf(stderr, "train: %s\n", choice.note.c_str());
  r->index_factory = choice.factory;
  r->factory_note = choice.note;
  RAG_ASSIGN_OR_RETURN(auto index, VectorIndex::Create(dim, choice.factory));
  index->DropSearchTables();  // saved empty, never searched here
  if (!index->is_trained()) {
    const int64_t m = index->TrainingSampleSize(n);
    const std::vector<int64_t> rows = SampleOf(n, m, o.seed);
    RAG_ASSIGN_OR_RETURN(std::vector<float> sample,
                         EmbedSampledChunks(docs, chunks_of_doc, rows, tok, embedder, o, stop));
    RAG_RETURN_IF_ERROR(Annotate(index->TrainOnSample(std::move(sample), o.seed), "training the index"));
    r->sample_rows = m;
  }
  std::fprintf(stderr, "train: index %s for %lld chunks of dim %d, trained on %lld\n", choice.factory.c_str(),
               static_cast<long long>(n), dim, static_cast<long long>(r->sample_rows));
  const std::string path = (work / kTrainedChunkIndexFile).string();
  RAG_RETURN_IF_ERROR(index->Save(path));
  RAG_ASSIGN_OR_RETURN(r->trained_index_hash, HashFileHex(path));
  return absl::OkStatus();
}

// Stage 2 of --train-only --datastore: the key index over one key per token
// of the selected documents, trained on the hidden states of a seeded
// sample of those positions (documents in corpus order, each token in
// order), rounded to fp16 as DatastoreWriter stores keys.
absl::Status TrainDatastoreIndex(const std::vector<Document>& docs, const std::vector<int64_t>& tokens_of_doc,
                                 const TrainOnlyOptions& o, const fs::path& work, TrainedIndexRecord* r,
                                 const std::atomic<bool>* stop) {
  if (o.model == nullptr) return absl::InvalidArgumentError("a datastore needs the model that computes its keys");
  const std::set<std::string> wanted(o.datastore_doc_ids.begin(), o.datastore_doc_ids.end());
  std::vector<size_t> selected;
  int64_t total = 0;
  for (size_t d = 0; d < docs.size(); ++d) {
    if (!wanted.empty() && wanted.count(docs[d].id) == 0) continue;
    selected.push_back(d);
    total += tokens_of_doc[d];
  }
  if (total == 0) return absl::InvalidArgumentError("no token of the corpus is selected for the datastore");
  const int dim = static_cast<int>(o.model->config().d_model);
  retriever::DatastoreFinishOptions finish;
  finish.factory = o.datastore_factory;
  finish.seed = o.seed;
  RAG_ASSIGN_OR_RETURN(retriever::DatastoreIndexPlan plan, retriever::PlanDatastoreIndex(finish, total, dim));
  r->datastore = true;
  r->datastore_dim = dim;
  r->datastore_keys = total;
  r->datastore_requested_factory = o.datastore_factory;
  r->datastore_factory = plan.choice.factory;
  r->datastore_factory_note = plan.choice.note;
  if (!plan.index->is_trained()) {
    const int64_t m = plan.sample_rows;
    const std::vector<int64_t> rows = SampleOf(total, m, o.seed);
    std::vector<float> sample;
    sample.reserve(static_cast<size_t>(m) * static_cast<size_t>(dim));
    const lm::Tokenizer& tok = o.model->tokenizer();
    o.model->module()->eval();
    Progress progress("train: datastore sample", m, "keys");
    size_t next = 0;
    int64_t first = 0;
    for (size_t d : selected) {
      const int64_t end = first + tokens_of_doc[d];
      if (next < rows.size() && rows[next] < end) {
        RAG_RETURN_IF_ERROR(CheckTrainingStop(stop));
        const std::vector<lm::TokenId> tokens = tok.Encode(docs[d].text);
        torch::Tensor hidden =
            lm::HiddenStates(o.model->module(), tokens, tok.eot_id()).to(torch::kFloat32).contiguous();
        const float* h = hidden.data_ptr<float>();
        for (; next < rows.size() && rows[next] < end; ++next) {
          const float* key = h + (rows[next] - first) * dim;
          for (int j = 0; j < dim; ++j) sample.push_back(retriever::HalfToFloat(retriever::FloatToHalf(key[j])));
        }
        if (o.show_progress) progress.Update(static_cast<int64_t>(next));
      }
      first = end;
    }
    if (o.show_progress) progress.Finish();
    plan.index->DropSearchTables();
    RAG_RETURN_IF_ERROR(Annotate(plan.index->TrainOnSample(std::move(sample), o.seed), "training the datastore index"));
    r->datastore_sample_rows = m;
  }
  std::fprintf(stderr, "train: datastore index %s for %lld keys, trained on %lld\n", plan.choice.factory.c_str(),
               static_cast<long long>(total), static_cast<long long>(r->datastore_sample_rows));
  const std::string path = (work / kTrainedDatastoreIndexFile).string();
  RAG_RETURN_IF_ERROR(plan.index->Save(path));
  RAG_ASSIGN_OR_RETURN(r->datastore_trained_hash, HashFileHex(path));
  return absl::OkStatus();
}

absl::Status Mismatch(const std::string& field, const std::string& trained, const std::string& build) {
  return absl::FailedPreconditionError("the trained index was made with " + field + " '" + trained +
                                       "', this build has '" + build + "'");
}

}  // namespace

std::string TrainedIndexRecord::ToJson() const {
  json j = {{"format_version", format_version},
            {"created_at", created_at},
            {"corpus_path", corpus_path},
            {"model", {{"content_hash", model_hash},
                       {"tokenizer_hash", tokenizer_hash},
                       {"embedder", embedder},
                       {"embedder_hash", embedder_hash},
                       {"dim", dim}}},
            {"chunking", {{"chunk_tokens", chunk_tokens}, {"continuation_tokens", continuation_tokens},
                          {"chunks", chunks}}},
            {"faiss", {{"requested_factory", requested_factory},
                       {"index_factory", index_factory},
                       {"note", factory_note},
                       {"sample_rows", sample_rows},
                       {"seed", seed},
                       {"trained_index_hash", trained_index_hash}}}};
  if (datastore) {
    j["datastore"] = {{"dim", datastore_dim},
                      {"keys", datastore_keys},
                      {"requested_factory", datastore_requested_factory},
                      {"index_factory", datastore_factory},
                      {"note", datastore_factory_note},
                      {"sample_rows", datastore_sample_rows},
                      {"trained_index_hash", datastore_trained_hash}};
  }
  return j.dump(2) + "\n";
}

absl::StatusOr<TrainedIndexRecord> TrainedIndexRecord::FromJson(const std::string& text) {
  const json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return absl::DataLossError("trained.json is not a JSON object");
  TrainedIndexRecord r;
  try {
    r.format_version = j.at("format_version").get<int>();
    if (r.format_version > kTrainedFormatVersion) {
      return absl::FailedPreconditionError("trained.json format version " + std::to_string(r.format_version) +
                                           " is newer than this rag reads; upgrade rag");
    }
    r.created_at = j.value("created_at", "");
    r.corpus_path = j.value("corpus_path", "");
    const json& mo = j.at("model");
    r.model_hash = mo.at("content_hash").get<std::string>();
    r.tokenizer_hash = mo.at("tokenizer_hash").get<std::string>();
    r.embedder = mo.value("embedder", "");
    r.embedder_hash = mo.at("embedder_hash").get<std::string>();
    r.dim = mo.at("dim").get<int>();
    const json& ch = j.at("chunking");
    r.chunk_tokens = ch.at("chunk_tokens").get<int>();
    r.continuation_tokens = ch.at("continuation_tokens").get<int>();
    r.chunks = ch.at("chunks").get<int64_t>();
    const json& f = j.at("faiss");
    r.requested_factory = f.value("requested_factory", "");
    r.index_factory = f.at("index_factory").get<std::string>();
    r.factory_note = f.value("note", "");
    r.sample_rows = f.value("sample_rows", int64_t{0});
    r.seed = f.value("seed", uint64_t{1234});
    r.trained_index_hash = f.at("trained_index_hash").get<std::string>();
    if (j.contains("datastore")) {
      const json& ds = j.at("datastore");
      r.datastore = true;
      r.datastore_dim = ds.at("dim").get<int>();
      r.datastore_keys = ds.at("keys").get<int64_t>();
      r.datastore_requested_factory = ds.value("requested_factory", "");
      r.datastore_factory = ds.at("index_factory").get<std::string>();
      r.datastore_factory_note = ds.value("note", "");
      r.datastore_sample_rows = ds.value("sample_rows", int64_t{0});
      r.datastore_trained_hash = ds.at("trained_index_hash").get<std::string>();
    }
  } catch (const json::exception& e) {
    return absl::DataLossError(std::string("trained.json is malformed: ") + e.what());
  }
  if (r.dim < 1 || r.chunk_tokens < 1 || r.trained_index_hash.empty()) {
    return absl::DataLossError("trained.json is inconsistent (dim, chunking or hash)");
  }
  return r;
}

absl::StatusOr<TrainedIndexRecord> TrainedIndexRecord::Load(const std::string& dir) {
  const fs::path path = fs::path(dir) / kTrainedRecordFile;
  if (!fs::exists(path)) {
    return absl::NotFoundError("'" + dir + "' holds no trained index (no " + kTrainedRecordFile +
                               "; make one with rag build --train-only)");
  }
  RAG_ASSIGN_OR_RETURN(std::string text, ReadFile(path.string()));
  auto r = FromJson(text);
  if (!r.ok()) return Annotate(r.status(), "reading " + path.string());
  std::vector<std::pair<std::string, std::string>> files = {{kTrainedChunkIndexFile, r->trained_index_hash}};
  if (r->datastore) files.emplace_back(kTrainedDatastoreIndexFile, r->datastore_trained_hash);
  for (const auto& [name, want] : files) {
    const std::string file = (fs::path(dir) / name).string();
    RAG_ASSIGN_OR_RETURN(std::string got, HashFileHex(file));
    if (got != want) {
      return absl::DataLossError("'" + file + "' has hash " + got + ", " + kTrainedRecordFile + " says " + want);
    }
  }
  return r;
}

absl::StatusOr<TrainedIndexRecord> TrainIndexOnly(const std::vector<Document>& documents,
                                                  const lm::Tokenizer& tokenizer, lm::Embedder& embedder,
                                                  const std::string& model_hash, const TrainOnlyOptions& o,
                                                  const std::atomic<bool>* stop) {
  if (o.out_dir.empty()) return absl::InvalidArgumentError("no output directory given");
  if (documents.empty()) return absl::InvalidArgumentError("corpus has no documents");
  if (o.chunk_tokens < 1 || o.chunk_tokens > 4096) return absl::InvalidArgumentError("chunk tokens must be in [1, 4096]");
  if (o.continuation_tokens < 0 || o.continuation_tokens > 4096) {
    return absl::InvalidArgumentError("continuation tokens must be in [0, 4096]");
  }
  if (o.embed_batch < 1) return absl::InvalidArgumentError("batch size must be >= 1");
  const fs::path out(o.out_dir);
  const fs::path work = o.out_dir + ".partial";
  if (fs::exists(out) && !o.overwrite) {
    return absl::FailedPreconditionError("'" + o.out_dir + "' already exists; pass --overwrite to replace it");
  }
  // Training is not resumed: what a killed run left is simply redone.
  std::error_code ec;
  fs::remove_all(work, ec);
  fs::create_directories(work, ec);
  if (ec) return absl::InternalError("creating '" + work.string() + "': " + ec.message());

  TrainedIndexRecord r;
  std::vector<int64_t> chunks_of_doc(documents.size()), tokens_of_doc(documents.size());
  {
    Progress progress("train: tokenize", static_cast<int64_t>(documents.size()), "documents");
    for (size_t d = 0; d < documents.size(); ++d) {
      RAG_RETURN_IF_ERROR(CheckTrainingStop(stop));
      tokens_of_doc[d] = static_cast<int64_t>(tokenizer.Encode(documents[d].text).size());
      chunks_of_doc[d] = (tokens_of_doc[d] + o.chunk_tokens - 1) / o.chunk_tokens;  // as ChunkStore cuts
      r.chunks += chunks_of_doc[d];
      if (o.show_progress) progress.Update(static_cast<int64_t>(d + 1));
    }
    if (o.show_progress) progress.Finish(std::to_string(r.chunks) + " chunks");
  }
  if (r.chunks == 0) return absl::InvalidArgumentError("corpus produced no tokens to index");
  r.created_at = retriever::NowUtc();
  r.corpus_path = o.corpus_path;
  r.model_hash = model_hash;
  r.tokenizer_hash = tokenizer.Hash();
  r.embedder = embedder.description();
  r.embedder_hash = embedder.hash();
  r.dim = embedder.dim();
  r.chunk_tokens = o.chunk_tokens;
  r.continuation_tokens = o.continuation_tokens;
  r.requested_factory = o.index_factory;
  r.seed = o.seed;
  RAG_RETURN_IF_ERROR(TrainChunkIndex(documents, chunks_of_doc, tokenizer, embedder, o, work, &r, stop));
  if (o.datastore) RAG_RETURN_IF_ERROR(TrainDatastoreIndex(documents, tokens_of_doc, o, work, &r, stop));
  RAG_RETURN_IF_ERROR(WriteFileAtomic((work / kTrainedRecordFile).string(), r.ToJson()));

  const fs::path old = o.out_dir + ".old";
  if (fs::exists(out)) {
    fs::remove_all(old, ec);
    RAG_RETURN_IF_ERROR(DurableRename(out.string(), old.string()));
  }
  RAG_RETURN_IF_ERROR(DurableRename(work.string(), out.string()));
  fs::remove_all(old, ec);
  return r;
}

absl::Status CheckTrainedMatches(const TrainedIndexRecord& t, const BuildIdentity& b) {
  if (t.model_hash != b.model_hash) return Mismatch("model_hash", t.model_hash, b.model_hash);
  if (t.tokenizer_hash != b.tokenizer_hash) return Mismatch("tokenizer_hash", t.tokenizer_hash, b.tokenizer_hash);
  if (t.embedder_hash != b.embedder_hash) return Mismatch("embedder_hash", t.embedder_hash, b.embedder_hash);
  if (t.dim != b.dim) return Mismatch("dim", std::to_string(t.dim), std::to_string(b.dim));
  if (t.chunk_tokens != b.chunk_tokens) {
    return Mismatch("chunk_tokens", std::to_string(t.chunk_tokens), std::to_string(b.chunk_tokens));
  }
  if (t.continuation_tokens != b.continuation_tokens) {
    return Mismatch("continuation_tokens", std::to_string(t.continuation_tokens),
                    std::to_string(b.continuation_tokens));
  }
  if (!b.index_factory.empty() && b.index_factory != t.requested_factory && b.index_factory != t.index_factory) {
    return Mismatch("index_factory", t.index_factory, b.index_factory);
  }
  if (b.datastore && !t.datastore) {
    return absl::FailedPreconditionError(
        "datastore: the trained index has no datastore key index; rerun rag build --train-only with --datastore");
  }
  if (b.datastore && !b.datastore_factory.empty() && b.datastore_factory != t.datastore_requested_factory &&
      b.datastore_factory != t.datastore_factory) {
    return Mismatch("datastore_factory", t.datastore_factory, b.datastore_factory);
  }
  return absl::OkStatus();
}

}  // namespace rag::index_builder

#include "index_builder/datastore_builder.h"

#include <torch/torch.h>

#include <filesystem>
#include <numeric>
#include <random>

#include "common/file_util.h"
#include "common/progress.h"
#include "common/status.h"
#include "lm/scorer.h"

namespace rag::index_builder {

absl::StatusOr<retriever::DatastoreInfo> BuildDatastore(const std::vector<Document>& documents,
                                                        const std::vector<size_t>& selected,
                                                        const std::vector<int32_t>& doc_index,
                                                        lm::LanguageModel& model,
                                                        const DatastoreBuildOptions& o,
                                                        const std::atomic<bool>* stop) {
  if (doc_index.size() != selected.size()) {
    return absl::InvalidArgumentError("BuildDatastore: one document index per document is required");
  }
  const int dim = static_cast<int>(model.config().d_model);
  // Finished by an earlier run that died before the index's manifest.
  if (std::filesystem::exists(std::filesystem::path(o.dir) / retriever::kDatastoreIndexFile)) {
    RAG_ASSIGN_OR_RETURN(auto done, retriever::Datastore::Open(o.dir));
    retriever::DatastoreInfo info;
    info.rows = done->size();
    info.dim = done->dim();
    info.requested_factory = o.index_factory;
    info.index_factory = done->factory();
    for (const char* f : {retriever::kDatastoreKeysFile, retriever::kDatastoreValuesFile,
                          retriever::kDatastoreDocsFile, retriever::kDatastoreIndexFile}) {
      RAG_ASSIGN_OR_RETURN(info.checksums[f], HashFileHex((std::filesystem::path(o.dir) / f).string()));
    }
    return info;
  }
  RAG_ASSIGN_OR_RETURN(auto writer, retriever::DatastoreWriter::Create(o.dir, dim, /*resume=*/true));
  const int64_t durable = writer->rows();
  const auto& tok = model.tokenizer();
  std::vector<std::vector<lm::TokenId>> tokens(selected.size());
  int64_t total = 0;
  for (size_t i = 0; i < selected.size(); ++i) {
    tokens[i] = tok.Encode(documents[selected[i]].text);
    total += static_cast<int64_t>(tokens[i].size());
  }
  if (durable > total) {
    return absl::FailedPreconditionError("datastore '" + o.dir + "' holds more keys than this corpus has tokens; "
                                         "it was built from other documents");
  }
  if (durable > 0) {
    std::fprintf(stderr, "build: datastore: resuming at key %lld of %lld\n", static_cast<long long>(durable),
                 static_cast<long long>(total));
  }
  // The FAISS index is built while keys are computed (DatastoreWriter::
  // IndexInBackground), trained on a sample of the first keys written. So
  // documents go in a seeded random order: corpora are often sorted (Brown
  // by genre), and the first quarter of the keys should look like the whole.
  std::vector<size_t> order(selected.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::mt19937_64 rng(o.seed);  // Fisher-Yates by hand: std::shuffle's order differs between libraries
  for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[rng() % i]);
  retriever::DatastoreFinishOptions finish;
  finish.factory = o.index_factory;
  finish.seed = o.seed;
  finish.show_progress = o.show_progress;
  finish.trained_index = o.trained_index;
  RAG_RETURN_IF_ERROR(writer->IndexInBackground(finish, total));

  Progress progress("build: datastore", total, "keys");
  int64_t done = 0, since_sync = 0;
  model.module()->eval();
  for (size_t i : order) {
    const int64_t n = static_cast<int64_t>(tokens[i].size());
    if (done + n <= durable || n == 0) {
      done += n;
      continue;
    }
    if (stop != nullptr && stop->load()) return absl::CancelledError("interrupted; rerun the same command to resume");
    torch::Tensor hidden = lm::HiddenStates(model.module(), tokens[i], tok.eot_id());
    // Keys before `skip` are durable from an interrupted run.
    const int64_t skip = std::max<int64_t>(0, durable - done);
    torch::Tensor keys = hidden.narrow(0, skip, n - skip).to(torch::kFloat32).contiguous();
    std::vector<int32_t> values(tokens[i].begin() + skip, tokens[i].end());
    std::vector<int32_t> docs(static_cast<size_t>(n - skip), doc_index[i]);
    RAG_RETURN_IF_ERROR(writer->Append(keys.data_ptr<float>(), values.data(), docs.data(), n - skip));
    done += n;
    since_sync += n - skip;
    if (since_sync >= o.sync_every_tokens) {
      RAG_RETURN_IF_ERROR(writer->Sync());
      since_sync = 0;
    }
    if (o.show_progress) progress.Update(done, writer->IndexingStatus());
  }
  RAG_RETURN_IF_ERROR(writer->Sync());
  if (o.show_progress) progress.Finish(writer->IndexingStatus());
  return writer->Finish(finish);
}

}  // namespace rag::index_builder

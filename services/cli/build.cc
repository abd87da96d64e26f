#include "services/cli/build.h"

#include <cstdio>
#include <filesystem>

#include "common/file_util.h"
#include "common/status.h"
#include "index_builder/corpus_reader.h"
#include "index_builder/index_builder.h"
#include "index_builder/trained_index.h"
#include "lm/data_split.h"
#include "lm/embedder.h"

namespace rag::cli {
namespace {

namespace fs = std::filesystem;

// The embedding function of an index: the model's own (mean-pooled hidden
// states) unless the user brings a TorchScript encoder.
absl::StatusOr<std::unique_ptr<rag::lm::Embedder>> MakeEmbedder(rag::lm::LanguageModel* model,
                                                                const std::string& torchscript) {
  if (torchscript.empty()) return rag::lm::MakeLmEmbedder(model);
  auto e = rag::lm::LoadTorchScriptEmbedder(torchscript);
  if (!e.ok()) return rag::Annotate(e.status(), "--embedder");
  return e;
}

struct BuildArgs {
  std::string corpus, model, out, factory, embedder, datastore_factory, datastore_split = "all", shard, trained;
  bool datastore = false, train_only = false;
  int chunk_tokens = 64, continuation_tokens = 64;
  int64_t batch = rag::index_builder::BuildOptions{}.embed_batch;
  uint64_t seed = 1234;
  bool overwrite = false, json_out = false, quiet = false;
};

// The ids of the documents the datastore covers: all ("" split) or the
// model's training split (held-out documents never in the datastore, for
// honest validation numbers). Empty = all.
absl::StatusOr<std::vector<std::string>> DatastoreDocIds(const BuildArgs& a, const std::vector<rag::Document>& docs) {
  std::vector<std::string> ids;
  if (a.datastore_split == "all") return ids;
  if (a.datastore_split != "train") return absl::InvalidArgumentError("--datastore-split must be all or train");
  auto split = rag::ReadFile((fs::path(a.model) / rag::lm::kSplitFile).string());
  if (!split.ok()) return rag::Annotate(split.status(), "--datastore-split train needs the model's split");
  auto train = rag::lm::SelectSplit(docs, *split, "train");
  if (!train.ok()) return train.status();
  for (const auto& d : *train) ids.push_back(d.id);
  return ids;
}

// `rag build --train-only`: the whole corpus, no shard.
int RunTrainOnly(const BuildArgs& a, rag::lm::LanguageModel* model, const std::vector<rag::Document>& docs,
                 rag::lm::Embedder& embedder) {
  rag::index_builder::TrainOnlyOptions o;
  o.out_dir = a.out;
  o.corpus_path = a.corpus;
  o.index_factory = a.factory;
  o.chunk_tokens = a.chunk_tokens;
  o.continuation_tokens = a.continuation_tokens;
  o.embed_batch = a.batch;
  o.seed = a.seed;
  o.overwrite = a.overwrite;
  o.show_progress = !a.quiet;
  if (a.datastore) {
    o.datastore = true;
    o.model = model;
    o.datastore_factory = a.datastore_factory;
    auto ids = DatastoreDocIds(a, docs);
    if (!ids.ok()) return Fail(ids.status());
    o.datastore_doc_ids = *std::move(ids);
  }
  InstallStopHandlers();
  auto r = rag::index_builder::TrainIndexOnly(docs, model->tokenizer(), embedder, model->content_hash(), o, &g_stop);
  if (!r.ok()) return Fail(r.status());
  if (a.json_out) {
    PrintJson(json::parse(r->ToJson()));
  } else {
    std::printf("trained %s: index %s for %lld chunks (dim %d), hash %s\n", a.out.c_str(), r->index_factory.c_str(),
                static_cast<long long>(r->chunks), r->dim, r->trained_index_hash.c_str());
  }
  return 0;
}

int RunBuild(const BuildArgs& a) {
  auto model = OpenModel(a.model);
  if (!model.ok()) return Fail(model.status());
  rag::index_builder::CorpusStats stats;
  rag::retriever::ShardSpec shard;
  if (a.train_only && (!a.shard.empty() || !a.trained.empty())) {
    return Fail(absl::InvalidArgumentError("--train-only trains on the whole corpus: --shard and --trained do not apply"));
  }
  if (!a.shard.empty()) {
    auto s = rag::retriever::ParseShardSpec(a.shard);
    if (!s.ok()) return Fail(s.status());
    shard = *s;
  }
  auto docs = rag::index_builder::ReadCorpus(a.corpus, &stats);
  if (!docs.ok()) return Fail(docs.status());
  std::fprintf(stderr, "build: corpus %s: %zu documents, %.1f MB\n", a.corpus.c_str(), stats.documents,
               static_cast<double>(stats.bytes) / 1e6);
  if (shard.count > 1) {
    const size_t all = docs->size();
    rag::index_builder::KeepShardDocuments(shard, &*docs);
    std::fprintf(stderr, "build: shard %s keeps %zu documents\n", shard.ToString().c_str(), docs->size());
    // An index holds at least one chunk (FAISS training, the chunk store's
    // bookkeeping); a shard the hash left empty is a corpus split too finely.
    if (docs->empty() && all > 0) {
      return Fail(absl::FailedPreconditionError(
          "shard " + shard.ToString() + " holds none of the corpus's " + std::to_string(all) +
          " documents (ids are split by a hash, not evenly); an empty shard cannot be built: use fewer shards"));
    }
  }
  auto embedder = MakeEmbedder(model->get(), a.embedder);
  if (!embedder.ok()) return Fail(embedder.status());
  if (a.train_only) return RunTrainOnly(a, model->get(), *docs, **embedder);
  rag::index_builder::BuildOptions o;
  o.out_dir = a.out;
  o.corpus_path = a.corpus;
  o.index_factory = a.factory;
  o.chunk_tokens = a.chunk_tokens;
  o.continuation_tokens = a.continuation_tokens;
  o.embed_batch = a.batch;
  o.seed = a.seed;
  o.overwrite = a.overwrite;
  o.shard = shard;
  o.trained_dir = a.trained;
  o.show_progress = !a.quiet;
  o.model_architecture = (*model)->identity().architecture;
  o.model_parameters = (*model)->NumParameters();
  if (a.datastore) {
    o.datastore = true;
    o.model = model->get();
    o.datastore_factory = a.datastore_factory;
    o.datastore_split = a.datastore_split;
    auto ids = DatastoreDocIds(a, *docs);
    if (!ids.ok()) return Fail(ids.status());
    o.datastore_doc_ids = *std::move(ids);
  }
  InstallStopHandlers();
  auto m =
      rag::index_builder::BuildIndex(*docs, (*model)->tokenizer(), **embedder, (*model)->content_hash(), o, &g_stop);
  if (!m.ok()) return Fail(m.status());
  if (a.json_out) {
    PrintJson(json::parse(m->ToJson()));
  } else {
    std::printf("built %s: %lld documents, %lld tokens, %lld chunks, index %s (dim %d)\n", a.out.c_str(),
                static_cast<long long>(m->documents), static_cast<long long>(m->tokens),
                static_cast<long long>(m->chunks), m->index_factory.c_str(), m->dim);
  }
  return 0;
}

}  // namespace

Command AddBuildCommand(CLI::App* app) {
  auto a = std::make_shared<BuildArgs>();
  auto* cmd = app->add_subcommand("build", "build a retrieval index over a corpus");
  cmd->add_option("--corpus", a->corpus, "corpus: .txt, .jsonl or directory")->required();
  cmd->add_option("--model", a->model, "model directory (tokenizer, embedder, served model)")->required();
  cmd->add_option("--out", a->out, "index directory to write")->required();
  cmd->add_option("--index-factory", a->factory, "FAISS factory string (default: from the corpus size)");
  cmd->add_option("--chunk-tokens", a->chunk_tokens, "tokens per chunk")->capture_default_str();
  cmd->add_option("--continuation-tokens", a->continuation_tokens, "tokens of continuation per chunk")
      ->capture_default_str();
  cmd->add_option("--embedder", a->embedder, "TorchScript encoder (ids [B, T] -> [B, D]) instead of the LM");
  cmd->add_option("--batch-size", a->batch, "chunks per embedding batch")->capture_default_str();
  cmd->add_option("--seed", a->seed, "seed of the FAISS training sample")->capture_default_str();
  cmd->add_flag("--overwrite", a->overwrite, "replace an existing index");
  cmd->add_flag("--datastore", a->datastore, "also build the kNN-LM datastore (one key per token)");
  cmd->add_option("--datastore-factory", a->datastore_factory,
                  "FAISS factory of the datastore (default: from its size)");
  cmd->add_option("--datastore-split", a->datastore_split, "all, or train: only the model's training documents")
      ->capture_default_str();
  cmd->add_option("--shard", a->shard,
                  "build shard i of N (i/N) of the documents, by a stable hash of their ids; auto or auto/N take "
                  "the rank (and size) from mpirun, Slurm arrays or Kubernetes Indexed Jobs");
  cmd->add_flag("--train-only", a->train_only,
                "only train the FAISS index (and with --datastore the key index) on a sample of the whole corpus, "
                "into --out, for shard builds to share via --trained");
  cmd->add_option("--trained", a->trained,
                  "add the vectors to a copy of this --train-only index instead of training (shards must share one)");
  cmd->add_flag("--json", a->json_out, "print the manifest as JSON");
  cmd->add_flag("--quiet", a->quiet, "no progress lines");
  return {cmd, [a] { return RunBuild(*a); }};
}

}  // namespace rag::cli

#include "services/cli/index_commands.h"

#include <cstdio>

#include "common/progress.h"
#include "common/status.h"
#include "index_builder/corpus_reader.h"
#include "services/engine.h"

namespace rag::cli {
namespace {

struct QueryArgs {
  TargetArgs target;
  std::string text, text_file;
  std::vector<std::string> exclude;
  std::string method = "dense";
  int k = 5, nprobe = rag::retriever::kDefaultNprobe;
  bool json_out = false;
};

int RunQuery(const QueryArgs& a) {
  auto text = TextArg(a.text, a.text_file, "--text", !a.target.server.empty());
  if (!text.ok()) return Fail(text.status());
  if (text->empty()) return Fail(absl::InvalidArgumentError("--text is empty: nothing to search for"));
  if (a.k < 1) return Fail(absl::InvalidArgumentError("-k must be >= 1"));
  auto backend = OpenTarget(a.target, true);
  if (!backend.ok()) return Fail(backend.status());
  rag::v1::SearchRequest req;
  req.add_texts(*text);
  req.set_k(a.k);
  req.set_nprobe(a.nprobe);
  req.set_method(a.method);
  for (const auto& id : a.exclude) req.add_exclude_doc_ids(id);
  auto r = (*backend)->Search(req);
  if (!r.ok()) return Fail(r.status());
  json neighbours = json::array();
  for (const auto& n : r->results(0).neighbours()) {
    neighbours.push_back({{"chunk_id", n.chunk_id()},
                          {"doc_id", n.doc_id()},
                          {"offset", n.offset()},
                          {"text", n.text()},
                          {"continuation", n.continuation()},
                          {"distance", n.distance()}});
  }
  if (a.json_out) {
    PrintJson({{"neighbours", neighbours}});
  } else {
    int rank = 1;
    for (const auto& n : neighbours) {
      std::printf("%d. [%s, chunk %lld, distance %.4f]\n   %s\n   >> %s\n", rank++,
                  n["doc_id"].get<std::string>().c_str(), static_cast<long long>(n["chunk_id"].get<int64_t>()),
                  n["distance"].get<double>(), n["text"].get<std::string>().c_str(),
                  n["continuation"].get<std::string>().c_str());
    }
  }
  return 0;
}

int RunStats(const TargetArgs& target) {
  auto backend = OpenTarget(target, true);
  if (!backend.ok()) return Fail(backend.status());
  auto r = (*backend)->Stats();
  if (!r.ok()) return Fail(r.status());
  PrintJson({{"documents", r->documents()},
             {"chunks", r->chunks()},
             {"tokens", r->tokens()},
             {"vectors", r->vectors()},
             {"dim", r->dim()},
             {"index_factory", r->index_factory()},
             {"chunk_tokens", r->chunk_tokens()},
             {"continuation_tokens", r->continuation_tokens()},
             {"model_hash", r->model_hash()},
             {"tokenizer_hash", r->tokenizer_hash()},
             {"embedder", r->embedder()},
             {"faiss_version", r->faiss_version()},
             {"documents_added", r->documents_added()}});
  return 0;
}

struct AddArgs {
  TargetArgs target;
  std::string corpus;
  bool skip_existing = false, json_out = false, quiet = false;
};

int RunAdd(const AddArgs& a) {
  rag::index_builder::CorpusStats stats;
  auto docs = rag::index_builder::ReadCorpus(a.corpus, &stats);
  if (!docs.ok()) return Fail(docs.status());
  auto backend = OpenTarget(a.target, true, /*writable=*/true);
  if (!backend.ok()) return Fail(backend.status());
  std::vector<rag::v1::Document> batch;
  for (auto& d : *docs) {
    if (!a.target.server.empty() && !rag::IsValidUtf8(d.text + d.id)) {
      return Fail(absl::InvalidArgumentError("document '" + d.id + "' is not valid UTF-8, which gRPC requires"));
    }
    rag::v1::Document doc;
    doc.set_id(d.id);
    doc.set_text(std::move(d.text));
    doc.set_skip_if_exists(a.skip_existing);
    batch.push_back(std::move(doc));
  }
  std::unique_ptr<rag::Progress> progress;
  if (!a.quiet) progress = std::make_unique<rag::Progress>("add", static_cast<int64_t>(batch.size()), "documents");
  auto r = (*backend)->AddDocuments(batch, [&](const rag::v1::AddDocumentsResponse& sofar) {
    if (progress) progress->Update(sofar.documents_added() + sofar.documents_skipped());
  });
  if (!r.ok()) return Fail(r.status());
  if (progress) progress->Finish();
  if (a.json_out) {
    PrintJson({{"documents_added", r->documents_added()},
               {"chunks_added", r->chunks_added()},
               {"documents_skipped", r->documents_skipped()},
               {"documents", r->documents()},
               {"chunks", r->chunks()}});
  } else {
    std::printf("added %lld documents (%lld chunks), skipped %lld; the index now holds %lld documents, %lld chunks\n",
                static_cast<long long>(r->documents_added()), static_cast<long long>(r->chunks_added()),
                static_cast<long long>(r->documents_skipped()), static_cast<long long>(r->documents()),
                static_cast<long long>(r->chunks()));
  }
  return 0;
}

}  // namespace

Command AddQueryCommand(CLI::App* app) {
  auto a = std::make_shared<QueryArgs>();
  auto* cmd = app->add_subcommand("query", "nearest chunks of a text");
  AddTargetOptions(cmd, &a->target, true);
  cmd->add_option("--text", a->text, "query text");
  cmd->add_option("--text-file", a->text_file, "file whose bytes are the query");
  cmd->add_option("-k,--k", a->k, "neighbours")->capture_default_str();
  cmd->add_option("--nprobe", a->nprobe, "IVF lists to visit")->capture_default_str();
  cmd->add_option("--method", a->method, "dense (embeddings + FAISS) or bm25 (lexical)")
      ->capture_default_str()
      ->check(CLI::IsMember({"dense", "bm25"}));
  cmd->add_option("--exclude-doc", a->exclude, "document id never to return (repeatable)");
  cmd->add_flag("--json", a->json_out, "print JSON");
  return {cmd, [a] { return RunQuery(*a); }};
}

Command AddAddCommand(CLI::App* app) {
  auto a = std::make_shared<AddArgs>();
  auto* cmd = app->add_subcommand("add", "add documents to a live index");
  AddTargetOptions(cmd, &a->target, true);
  cmd->add_option("--corpus", a->corpus, "documents: .txt, .jsonl or directory")->required();
  cmd->add_flag("--skip-existing", a->skip_existing, "skip documents whose id is stored instead of failing");
  cmd->add_flag("--json", a->json_out, "print JSON");
  cmd->add_flag("--quiet", a->quiet, "no progress lines");
  return {cmd, [a] { return RunAdd(*a); }};
}

Command AddStatsCommand(CLI::App* app) {
  auto a = std::make_shared<TargetArgs>();
  auto* cmd = app->add_subcommand("stats", "counts and provenance of a served index (JSON)");
  AddTargetOptions(cmd, a.get(), true);
  return {cmd, [a] { return RunStats(*a); }};
}

}  // namespace rag::cli

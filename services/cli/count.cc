#include "services/cli/count.h"

#include <cctype>
#include <cstdio>

#include "common/status.h"
#include "lm/tokenizer.h"
#include "retriever/index_dir.h"

namespace rag::cli {
namespace {

struct CountArgs {
  std::string index, model, text, text_file;
  int64_t show_documents = 10;
  bool json_out = false;
};

// Exact occurrences of a text's tokens in an index's documents.
int RunCount(const CountArgs& a) {
  auto text = TextArg(a.text, a.text_file, "--text");
  if (!text.ok()) return Fail(text.status());
  if (text->empty()) return Fail(absl::InvalidArgumentError("--text is empty: nothing to count"));
  auto dir = rag::retriever::IndexDir::Open(a.index, rag::retriever::IndexDirOptions());
  if (!dir.ok()) return Fail(dir.status());
  // The index's own copy of the tokenizer, or the model's for indexes built
  // before there was one.
  auto tok = (*dir)->LoadTokenizer(a.model);
  if (!tok.ok()) return Fail(tok.status());
  auto store = (*dir)->OpenChunkStore(/*writable=*/false);
  if (!store.ok()) return Fail(store.status());
  // counts.sa covers the documents of the build; with documents added since
  // (or none there), the suffix array is built afresh over all of them.
  auto loaded = (*dir)->LoadTokenCounts(**store);
  if (!loaded.ok()) return Fail(loaded.status());
  if (loaded->rebuilt) {
    std::fprintf(stderr, "count: suffix array over all %lld documents built in %.1f s\n",
                 static_cast<long long>(loaded->counts.documents()), loaded->build_seconds);
  }
  const rag::retriever::TokenCounts* counts = &loaded->counts;
  const std::vector<int32_t> ids = tok->Encode(*text);
  auto n = counts->Count(ids);
  if (!n.ok()) return Fail(n.status());
  // Byte-level BPE folds a word's leading space into its first token: inside
  // a text the phrase is " of the", not "of the". Both are counted.
  int64_t spaced = 0;
  const bool add_space = !std::isspace(static_cast<unsigned char>((*text)[0]));
  if (add_space) {
    auto m = counts->Count(tok->Encode(" " + *text));
    if (!m.ok()) return Fail(m.status());
    spaced = *m;
  }
  auto where = counts->Documents(ids, a.show_documents);  // of the exact token sequence
  if (!where.ok()) return Fail(where.status());
  // Document ids: the first chunk of each listed document names it.
  json doc_ids = json::array();
  std::vector<int64_t> wanted(where->begin(), where->end());
  size_t next = 0;
  if (!wanted.empty()) {
    auto s = (*store)->ForEachChunk(0, [&](const rag::retriever::ChunkRecord& rec) {
      while (next < wanted.size() && wanted[next] < rec.doc_index) ++next;
      if (next < wanted.size() && wanted[next] == rec.doc_index) {
        doc_ids.push_back(rec.doc_id);
        ++next;
      }
      return next < wanted.size();
    });
    if (!s.ok()) return Fail(s);
  }
  if (a.json_out) {
    json j = {
        {"tokens", ids.size()}, {"count", *n}, {"documents", doc_ids}, {"indexed_documents", counts->documents()}};
    if (add_space) j["count_after_a_space"] = spaced;
    PrintJson(j);
  } else {
    std::printf("%lld occurrences of these %zu tokens", static_cast<long long>(*n), ids.size());
    if (add_space) std::printf(", %lld more after a space (inside a text)", static_cast<long long>(spaced));
    std::printf(", in %lld documents", static_cast<long long>(counts->documents()));
    if (!doc_ids.empty()) {
      std::printf("; in:");
      for (const auto& id : doc_ids) std::printf(" %s", id.get<std::string>().c_str());
      if (static_cast<int64_t>(doc_ids.size()) == a.show_documents) std::printf(" ...");
    }
    std::printf("\n");
  }
  return 0;
}

}  // namespace

Command AddCountCommand(CLI::App* app) {
  auto a = std::make_shared<CountArgs>();
  auto* cmd = app->add_subcommand("count", "exact occurrences of a text's tokens in an index's documents");
  cmd->add_option("--index", a->index, "index directory")->required();
  cmd->add_option("--text", a->text, "the text to count");
  cmd->add_option("--text-file", a->text_file, "read the text from this file");
  cmd->add_option("--model", a->model, "tokenize with this model's tokenizer (indexes without tokenizer.json)");
  cmd->add_option("--show-documents", a->show_documents, "list at most this many documents")->capture_default_str();
  cmd->add_flag("--json", a->json_out, "print JSON");
  return {cmd, [a] { return RunCount(*a); }};
}

}  // namespace rag::cli

#include "services/cli/count.h"

#include <cstdio>

#include "common/status.h"
#include "services/cli/index_counts.h"

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
  auto opened = OpenIndexCounts(a.index, a.model, "count");
  if (!opened.ok()) return Fail(opened.status());
  const rag::retriever::TokenCounts* counts = &opened->loaded.counts;
  const std::vector<int32_t> ids = opened->tokenizer.Encode(*text);
  auto phrase = CountPhrase(*opened, *text);
  if (!phrase.ok()) return Fail(phrase.status());
  const int64_t n = phrase->alone;
  auto where = counts->Documents(ids, a.show_documents);  // of the exact token sequence
  if (!where.ok()) return Fail(where.status());
  // Document ids: the first chunk of each listed document names it.
  json doc_ids = json::array();
  std::vector<int64_t> wanted(where->begin(), where->end());
  size_t next = 0;
  if (!wanted.empty()) {
    auto s = opened->store->ForEachChunk(0, [&](const rag::retriever::ChunkRecord& rec) {
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
        {"tokens", ids.size()}, {"count", n}, {"documents", doc_ids}, {"indexed_documents", counts->documents()}};
    if (phrase->spaced) j["count_after_a_space"] = phrase->after_space;
    PrintJson(j);
  } else {
    std::printf("%lld occurrences of these %zu tokens", static_cast<long long>(n), ids.size());
    if (phrase->spaced) {
      std::printf(", %lld more after a space (inside a text)", static_cast<long long>(phrase->after_space));
    }
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

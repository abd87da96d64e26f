// rag_example: the engine behind `rag serve`, used as a library. Opens a
// model and an index in-process, then prints the nearest chunks of a text
// and its perplexity under the plain LM and (when the index has a
// datastore) kNN-LM, one "key value" line each.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <string>

#include "lm/runtime.h"
#include "services/engine.h"

int main(int argc, char** argv) {
  CLI::App app{"rag_example: search and score with an installed rag"};
  std::string model, index, text;
  int k = 3;
  app.add_option("--model", model, "model directory")->required();
  app.add_option("--index", index, "index directory")->required();
  app.add_option("--text", text, "query and scored text")->required();
  app.add_option("-k", k, "neighbours")->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  rag::lm::ConfigureRuntime(0);
  rag::services::EngineOptions options;
  options.model_dir = model;
  options.index_dir = index;
  auto engine = rag::services::Engine::Open(options);
  if (!engine.ok()) {
    std::fprintf(stderr, "rag_example: %s\n", engine.status().ToString().c_str());
    return 1;
  }
  // The model, through rag::lm.
  const rag::lm::LanguageModel& lm = (*engine)->model();
  std::printf("text_tokens %zu\n", lm.tokenizer().Encode(text).size());

  rag::v1::SearchRequest search;
  search.add_texts(text);
  search.set_k(k);
  auto found = (*engine)->Search(search);
  if (!found.ok()) {
    std::fprintf(stderr, "rag_example: %s\n", found.status().ToString().c_str());
    return 1;
  }
  for (const auto& n : found->results(0).neighbours()) {
    std::printf("neighbour %s %lld %.6f\n", n.doc_id().c_str(), static_cast<long long>(n.chunk_id()), n.distance());
  }

  auto info = (*engine)->Info();
  if (!info.ok()) return 1;
  for (const std::string& mode : info->modes()) {
    rag::v1::ScoreRequest score;
    score.set_text(text);
    score.set_mode(mode);
    auto r = (*engine)->Score(score);
    if (!r.ok()) {
      std::fprintf(stderr, "rag_example: %s\n", r.status().ToString().c_str());
      return 1;
    }
    std::printf("perplexity_%s %.9g\n", mode.c_str(), r->perplexity());
  }
  return 0;
}

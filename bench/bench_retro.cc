// RETRO against the plain LM (issue 5), in one run:
//  (a) generation speed: retro tokens/s against lm tokens/s, same model
//      size (target >= 0.6);
//  (b) what the neighbours could teach: for every chunk of the validation
//      documents, how often the next chunk's tokens appear among the tokens
//      of the K neighbours retrieved with it, against K random chunks, and
//      the perplexity of the LM interpolated with a unigram cache over them
//      (p = (1 - l) p_lm + l c(token) / |neighbours|). A retriever whose
//      neighbours beat random chunks by little gives RETRO nothing to learn.
//      Two bounds: an oracle that searches with the chunk to be predicted
//      (leakage-filtered), and a cache over the whole document so far.
//
// One Engine serves a RETRO model directory: mode lm runs its base LM (the
// same decoder, without encoder and CCA), mode retro runs the RetroLM with
// retrieval on (a FAISS search and a neighbour encoding per 64-token chunk,
// a KV cache for the decoder) and with retrieval off. Greedy decoding of
// --max-tokens tokens (end-of-text ignored, so every call makes the same
// number) after prompts cut from the model's validation documents; the three
// modes are alternated prompt by prompt so load drift hits all of them, after
// one warm-up call each. Every retro-on call must report its retrievals.
//
//   build/bench/bench_retro --model RETRO_DIR --index INDEX_DIR [--corpus data/brown/brown.jsonl]
//       [--prompts 8] [--prompt-bytes 300] [--max-tokens 192] [--parts ab] [--threads N]
//       [--search-method dense|bm25] [--neighbours K] (how part (b) finds neighbours, how many)
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <iterator>
#include <random>
#include <unordered_map>
#include <cstdio>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "common/file_util.h"
#include "common/status.h"
#include "index_builder/corpus_reader.h"
#include "lm/data_split.h"
#include "lm/language_model.h"
#include "lm/runtime.h"
#include "lm/embedder.h"
#include "retriever/leakage.h"
#include "lm/retro_model.h"
#include "lm/scorer.h"
#include "retriever/retriever.h"
#include "services/engine.h"

namespace {

namespace fs = std::filesystem;

int Fail(const std::string& what) {
  std::fprintf(stderr, "bench_retro: %s\n", what.c_str());
  return 1;
}

// K neighbour token lists (chunk + continuation, at most R tokens each).
using NeighbourTokens = std::vector<std::vector<int32_t>>;

// Tallies, over the tokens of the chunks that neighbours are retrieved for,
// how often the token is among the neighbours' tokens and what a unigram
// cache over them does to the LM's log-likelihood at each interpolation weight.
struct CacheTally {
  static constexpr double kLambdas[] = {0.01, 0.02, 0.05, 0.1, 0.2};
  std::string label;
  int64_t tokens = 0, found = 0;
  double lm_logprob = 0;
  double mixed_logprob[std::size(kLambdas)] = {};

  void Add(const std::vector<int32_t>& target, const float* lm_logprobs, const NeighbourTokens& neighbours) {
    std::unordered_map<int32_t, int64_t> counts;
    int64_t total = 0;
    for (const auto& nb : neighbours) {
      for (int32_t t : nb) ++counts[t];
      total += static_cast<int64_t>(nb.size());
    }
    for (size_t i = 0; i < target.size(); ++i) {
      const auto it = counts.find(target[i]);
      const double cache = it == counts.end() || total == 0 ? 0.0 : static_cast<double>(it->second) / total;
      const double lm = std::exp(static_cast<double>(lm_logprobs[i]));
      found += cache > 0;
      lm_logprob += std::log(lm);
      for (size_t l = 0; l < std::size(kLambdas); ++l) {
        mixed_logprob[l] += std::log((1 - kLambdas[l]) * lm + kLambdas[l] * cache);
      }
      ++tokens;
    }
  }
};

struct Row {
  std::string label, mode, retrieval;
  double seconds = 0;
  int64_t tokens = 0, retrievals = 0;
};

// (a) Generation speed; true when the target is met.
absl::StatusOr<bool> GenerationSpeed(rag::services::Engine& engine, const std::vector<std::string>& texts,
                                     int max_tokens) {
  std::vector<Row> rows = {{"lm (base decoder)", "lm", ""},
                           {"retro, retrieval off", "retro", "off"},
                           {"retro, retrieval on", "retro", "on"}};
  auto run = [&](Row& r, const std::string& prompt, bool timed) -> absl::Status {
    rag::v1::GenerateRequest req;
    req.set_prompt(prompt);
    req.set_mode(r.mode);
    req.mutable_retro()->set_retrieval(r.retrieval);
    req.set_max_tokens(max_tokens);
    req.set_ignore_eot(true);
    req.mutable_sampling()->set_temperature(0);
    const auto t0 = std::chrono::steady_clock::now();
    auto g = engine.Generate(req, nullptr);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!g.ok()) return g.status();
    if (g->tokens() != max_tokens) {
      return absl::InternalError(r.label + " generated " + std::to_string(g->tokens()) + " tokens, expected " +
                                 std::to_string(max_tokens));
    }
    if (r.retrieval == "on" && g->retrievals_size() == 0) return absl::InternalError(r.label + " retrieved nothing");
    if (timed) {
      r.seconds += s;
      r.tokens += g->tokens();
      r.retrievals += g->retrievals_size();
    }
    return absl::OkStatus();
  };
  for (auto& r : rows) RAG_RETURN_IF_ERROR(rag::Annotate(run(r, texts[0], /*timed=*/false), "warm-up"));
  for (const auto& t : texts) {
    for (auto& r : rows) RAG_RETURN_IF_ERROR(run(r, t, /*timed=*/true));
  }

  std::printf("(a) generation: %zu prompts (the start of validation documents), %d greedy tokens each\n", texts.size(),
              max_tokens);
  const double lm_rate = static_cast<double>(rows[0].tokens) / rows[0].seconds;
  std::printf("%-24s %12s %10s %12s\n", "mode", "tokens/s", "vs lm", "retrievals");
  for (const auto& r : rows) {
    const double rate = static_cast<double>(r.tokens) / r.seconds;
    std::printf("%-24s %12.1f %10.3f %12lld\n", r.label.c_str(), rate, rate / lm_rate,
                static_cast<long long>(r.retrievals));
  }
  const double ratio = static_cast<double>(rows[2].tokens) / rows[2].seconds / lm_rate;
  std::printf("\nretro (retrieval on)/lm generation tokens/s: %.3f (target >= 0.6): %s\n", ratio,
              ratio >= 0.6 ? "PASS" : "FAIL");
  return ratio >= 0.6;
}


// (b) What the neighbours of RETRO's retriever could teach the LM.
absl::Status NeighbourInformation(rag::lm::LanguageModel& model, const std::string& index_dir, int k, int r,
                                  const std::string& method, const std::vector<rag::Document>& documents) {
  constexpr int kLeakageRun = 32;
  auto embedder = rag::lm::MakeLmEmbedder(&model);
  RAG_ASSIGN_OR_RETURN(auto retriever, rag::retriever::Retriever::Open(index_dir, embedder.get(), model.content_hash(),
                                                                      model.tokenizer().Hash()));
  const int64_t m = retriever->manifest().chunk_tokens;
  const int64_t total_chunks = retriever->num_vectors();
  CacheTally excluded{"retrieved, own document excluded"}, filtered{"retrieved, own document allowed, filtered"},
      random{"random chunks of other documents"}, oracle{"oracle: searched with the chunk to predict"},
      history{"the document so far (a cache, not retrieval)"};
  std::mt19937_64 rng(1234);
  const auto& tok = model.tokenizer();
  auto neighbour_tokens = [&](const std::vector<rag::retriever::Token>& chunk,
                              const std::vector<rag::retriever::Token>& continuation) {
    std::vector<int32_t> t(chunk.begin(), chunk.end());
    t.insert(t.end(), continuation.begin(), continuation.end());
    if (static_cast<int>(t.size()) > r) t.resize(static_cast<size_t>(r));
    return t;
  };
  for (const auto& doc : documents) {
    const std::vector<int32_t> ids = tok.Encode(doc.text);
    const std::vector<float> lm = rag::lm::ScoreTokens(model.module(), ids, tok.eot_id());
    const int64_t n = static_cast<int64_t>(ids.size()), chunks = (n + m - 1) / m;
    if (chunks < 2) continue;
    std::vector<std::vector<rag::retriever::Token>> queries, targets;
    for (int64_t j = 0; j + 1 < chunks; ++j) {
      queries.emplace_back(ids.begin() + j * m, ids.begin() + (j + 1) * m);
      targets.emplace_back(ids.begin() + (j + 1) * m, ids.begin() + std::min(n, (j + 2) * m));
    }
    rag::retriever::SearchOptions so;
    so.k = 4 * k;  // spares for the leakage filter
    so.method = method;
    RAG_ASSIGN_OR_RETURN(auto with_own, retriever->Search(queries, so));
    // An upper bound no retriever can reach: the search sees the text it is
    // to help predict (still leakage-filtered, so not the text itself).
    RAG_ASSIGN_OR_RETURN(auto by_target, retriever->Search(targets, so));
    so.exclude_doc_ids = {doc.id};
    RAG_ASSIGN_OR_RETURN(auto without_own, retriever->Search(queries, so));
    for (int64_t j = 0; j + 1 < chunks; ++j) {
      const std::vector<int32_t> target(ids.begin() + (j + 1) * m, ids.begin() + std::min(n, (j + 2) * m));
      const float* target_lm = lm.data() + (j + 1) * m;
      NeighbourTokens own_excluded, own_filtered, drawn, best;
      for (const auto& nb : without_own[static_cast<size_t>(j)]) {
        if (static_cast<int>(own_excluded.size()) < k) own_excluded.push_back(neighbour_tokens(nb.tokens, nb.continuation));
      }
      for (const auto& nb : with_own[static_cast<size_t>(j)]) {
        std::vector<int32_t> t = neighbour_tokens(nb.tokens, nb.continuation);
        if (static_cast<int>(own_filtered.size()) < k && !rag::retriever::SharesTokenRun(target, t, kLeakageRun)) {
          own_filtered.push_back(std::move(t));
        }
      }
      for (const auto& nb : by_target[static_cast<size_t>(j)]) {
        std::vector<int32_t> t = neighbour_tokens(nb.tokens, nb.continuation);
        if (static_cast<int>(best.size()) < k && !rag::retriever::SharesTokenRun(target, t, kLeakageRun)) {
          best.push_back(std::move(t));
        }
      }
      while (static_cast<int>(drawn.size()) < k && total_chunks > 0) {
        RAG_ASSIGN_OR_RETURN(auto recs, retriever->chunk_store().GetChunks({static_cast<int64_t>(rng() % total_chunks)}));
        if (recs[0].doc_id != doc.id) drawn.push_back(neighbour_tokens(recs[0].tokens, recs[0].continuation));
      }
      excluded.Add(target, target_lm, own_excluded);
      filtered.Add(target, target_lm, own_filtered);
      random.Add(target, target_lm, drawn);
      oracle.Add(target, target_lm, best);
      // Every token before the target, the classic cache LM's memory: what
      // a retriever confined to the document's own past could offer at most.
      history.Add(target, target_lm, {std::vector<int32_t>(ids.begin(), ids.begin() + (j + 1) * m)});
    }
  }
  std::printf(
      "\n(b) neighbour information (%s search): %zu validation documents, %lld tokens after a retrieving "
      "chunk; K %d neighbours of %d tokens; LM perplexity on them %.2f\n",
      method.c_str(), documents.size(), static_cast<long long>(excluded.tokens), k, r,
      std::exp(-excluded.lm_logprob / std::max<int64_t>(1, excluded.tokens)));
  std::printf("%-44s %10s", "neighbours", "in nbrs");
  for (double l : CacheTally::kLambdas) std::printf("   l=%-5.2f", l);
  std::printf("   (perplexity of LM + unigram cache)\n");
  for (const CacheTally* t : {&excluded, &filtered, &random, &oracle, &history}) {
    std::printf("%-44s %10.3f", t->label.c_str(), static_cast<double>(t->found) / std::max<int64_t>(1, t->tokens));
    for (double lp : t->mixed_logprob) std::printf(" %10.2f", std::exp(-lp / std::max<int64_t>(1, t->tokens)));
    std::printf("\n");
  }
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  rag::lm::RestartWithPassiveOpenMP(argv);  // as `rag` runs
  std::string model_dir, index_dir, corpus = "data/brown/brown.jsonl";
  int prompts = 8, prompt_bytes = 300, max_tokens = 192;
  std::string parts = "ab", search_method = "dense";
  int neighbours = 0;  // part (b): K, 0 = the model's
  int threads = 0;
  CLI::App app{"bench_retro: RETRO against the plain LM (generation speed, what the neighbours could teach)"};
  app.add_option("--model", model_dir, "RETRO model directory")->required();
  app.add_option("--index", index_dir, "index directory")->required();
  app.add_option("--corpus", corpus, "corpus of the model's validation documents")->capture_default_str();
  app.add_option("--prompts", prompts, "prompts of part (a)")->capture_default_str()->check(CLI::PositiveNumber);
  app.add_option("--prompt-bytes", prompt_bytes, "bytes per prompt")->capture_default_str();
  app.add_option("--max-tokens", max_tokens, "tokens generated per call")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--parts", parts, "parts to run (a: speed, b: neighbours)")->capture_default_str();
  app.add_option("--threads", threads, "LibTorch intra-op threads (0: lm::DefaultThreads(), by BLAS build)")
      ->capture_default_str();
  app.add_option("--search-method", search_method, "how part (b) finds neighbours (dense, bm25)")
      ->capture_default_str();
  app.add_option("--neighbours", neighbours, "neighbours per chunk in part (b) (0: the model's)")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  rag::lm::ConfigureRuntime(threads);

  rag::services::EngineOptions eo;
  eo.model_dir = model_dir;
  eo.index_dir = index_dir;
  auto engine = rag::services::Engine::Open(eo);
  if (!engine.ok()) return Fail(engine.status().ToString());
  auto info = (*engine)->Info();
  if (!info.ok()) return Fail(info.status().ToString());
  if (std::find(info->modes().begin(), info->modes().end(), "retro") == info->modes().end()) {
    return Fail("'" + model_dir + "' is not a RETRO model directory (train one with rag train --arch retro)");
  }

  // Prompts: the start of each validation document of the base LM's split
  // (never trained on, so generation is not recitation).
  auto all = rag::index_builder::ReadCorpus(corpus);
  if (!all.ok()) return Fail(all.status().ToString());
  auto split = rag::ReadFile((fs::path(model_dir) / rag::lm::kSplitFile).string());
  if (!split.ok()) return Fail("the model has no split file: " + split.status().ToString());
  auto validation = rag::lm::SelectSplit(*all, *split, "validation");
  if (!validation.ok() || validation->empty()) return Fail("the model's split has no validation documents");
  std::vector<std::string> texts;
  for (const auto& d : *validation) {
    if (static_cast<int>(texts.size()) >= prompts) break;
    std::string t = d.text.substr(0, static_cast<size_t>(prompt_bytes));
    // Cut at a space so the prompt ends on a word boundary.
    const size_t space = t.rfind(' ');
    if (space != std::string::npos && space > t.size() / 2) t.resize(space);
    texts.push_back(t);
  }

  std::printf("bench_retro: model %s, index %s; %d threads, %u cores\n\n", model_dir.c_str(), index_dir.c_str(),
              threads, std::thread::hardware_concurrency());
  bool pass = true;
  if (parts.find('a') != std::string::npos) {
    auto a = GenerationSpeed(**engine, texts, max_tokens);
    if (!a.ok()) return Fail(a.status().ToString());
    pass = pass && *a;
  }
  if (parts.find('b') != std::string::npos) {
    const rag::lm::RetroConfig& c = (*engine)->retro()->config();
    const int k = neighbours > 0 ? neighbours : static_cast<int>(c.neighbours),
              r = static_cast<int>(c.neighbour_tokens);
    absl::Status b = NeighbourInformation((*engine)->model(), index_dir, k, r, search_method, *validation);
    if (!b.ok()) return Fail(b.ToString());
  }
  return pass ? 0 : 1;
}

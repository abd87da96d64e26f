#include "services/cli/eval_memorization.h"

#include "services/cli/info.h"

#include <algorithm>
#include <cstdio>
#include <set>
#include <sstream>
#include <stdexcept>

#include "common/file_util.h"
#include "common/progress.h"
#include "common/status.h"
#include "eval/extraction.h"
#include "eval/memorization.h"
#include "eval/report.h"
#include "index_builder/corpus_reader.h"
#include "lm/data_split.h"
#include "retriever/token_counts.h"
#include "services/engine.h"

namespace rag::cli {
namespace {

// A corpus tokenized with `tok`, and the exact counts over all of it.
struct CountedCorpus {
  std::vector<rag::Document> docs;
  std::vector<std::vector<int32_t>> tokens;  // per document
  rag::retriever::TokenCounts counts;
};

absl::StatusOr<CountedCorpus> CountCorpus(const std::string& path, const rag::lm::Tokenizer& tok) {
  RAG_ASSIGN_OR_RETURN(std::vector<rag::Document> docs, rag::index_builder::ReadCorpus(path));
  std::vector<std::vector<int32_t>> tokens;
  for (const auto& d : docs) tokens.push_back(tok.Encode(d.text));
  RAG_ASSIGN_OR_RETURN(rag::retriever::TokenCounts counts, rag::retriever::TokenCounts::Build(tokens));
  return CountedCorpus{std::move(docs), std::move(tokens), std::move(counts)};
}

// Runs a generation and collects the generated token ids.
absl::StatusOr<std::pair<std::vector<int32_t>, rag::v1::GenerateResponse>> GenerateIds(
    rag::services::Backend& backend, const rag::v1::GenerateRequest& req) {
  std::vector<int32_t> ids;
  RAG_ASSIGN_OR_RETURN(rag::v1::GenerateResponse done, backend.Generate(req, [&](const rag::v1::GenerateResponse& t) {
    ids.push_back(t.token_id());
    return true;
  }));
  return std::make_pair(std::move(ids), std::move(done));
}

struct EvalMemArgs {
  TargetArgs target;
  KnnArgs knn;
  std::string corpus, split = "train", mode = kLmMode, prefix_lengths = "16,32,64", output, report, report_name;
  int suffix_tokens = 50, samples = 100;
  uint64_t seed = 1;
  bool json_out = false, quiet = false, exclude_own = false;
};

int RunEvalMemorization(const EvalMemArgs& a) {
  rag::eval::MemorizationOptions mo;
  mo.prefix_lengths.clear();
  {
    std::stringstream ss(a.prefix_lengths);
    std::string item;
    while (std::getline(ss, item, ',')) {
      try {
        size_t used = 0;
        const int v = std::stoi(item, &used);
        if (used != item.size()) throw std::invalid_argument(item);
        mo.prefix_lengths.push_back(v);
      } catch (const std::exception&) {
        return Fail(absl::InvalidArgumentError("--prefix-lengths must be integers like 16,32,64, got '" +
                                               a.prefix_lengths + "'"));
      }
    }
  }
  mo.suffix_tokens = a.suffix_tokens;
  mo.samples = a.samples;
  mo.seed = a.seed;
  auto served = OpenServed(a.target);
  if (!served.ok()) return Fail(served.status());
  rag::services::Backend& backend = *served->backend;
  const rag::v1::InfoResponse& info = served->info;
  const rag::lm::Tokenizer& tok = served->tokenizer;
  // Counts over the whole corpus; samples from the chosen split.
  auto corpus = CountCorpus(a.corpus, tok);
  if (!corpus.ok()) return Fail(corpus.status());
  const std::vector<rag::Document>& docs = corpus->docs;
  std::set<std::string> in_split;
  if (a.split != "all") {
    if (info.split_json().empty()) {
      return Fail(absl::FailedPreconditionError("the model has no split.json: use --split all"));
    }
    auto sel = rag::lm::SelectSplit(docs, info.split_json(), a.split);
    if (!sel.ok()) return Fail(sel.status());
    for (const auto& d : *sel) in_split.insert(d.id);
  }
  std::vector<rag::eval::TokenizedDocument> sampled;
  for (size_t i = 0; i < docs.size(); ++i) {
    if (a.split == "all" || in_split.count(docs[i].id)) sampled.push_back({docs[i].id, corpus->tokens[i]});
  }
  rag::eval::GreedyGenerator generate = [&](const std::vector<int32_t>& prompt, int max_tokens,
                                            const std::string& exclude) -> absl::StatusOr<std::vector<int32_t>> {
    rag::v1::GenerateRequest req;
    req.mutable_prompt_token_ids()->Add(prompt.begin(), prompt.end());
    req.set_mode(a.mode);
    req.set_max_tokens(max_tokens);
    req.set_ignore_eot(true);
    req.mutable_sampling()->set_temperature(0);
    req.set_exclude_doc_id(exclude);
    SetKnn(a.knn, &req);
    RAG_ASSIGN_OR_RETURN(auto generated, GenerateIds(backend, req));
    return std::move(generated.first);
  };
  std::unique_ptr<rag::Progress> progress;
  if (!a.quiet) progress = std::make_unique<rag::Progress>("memorization", a.samples, "samples");
  auto report =
      rag::eval::EvaluateMemorization(sampled, corpus->counts, generate, mo, a.exclude_own, [&](int64_t done) {
        if (progress) progress->Update(done);
      });
  if (!report.ok()) return Fail(report.status());
  if (progress) progress->Finish();
  json by_prefix = json::object();
  for (const auto& [l, t] : report->by_prefix) {
    json buckets = json::object();
    for (const auto& [b, bt] : report->by_prefix_and_duplicates[l]) {
      buckets[b] = {{"samples", bt.samples}, {"exact", bt.exact_rate()}, {"token_match", bt.token_match()}};
    }
    by_prefix[std::to_string(l)] = {{"samples", t.samples},
                                    {"exact", t.exact_rate()},
                                    {"token_match", t.token_match()},
                                    {"by_duplicates", buckets}};
  }
  json j = {{"mode", a.mode},
            {"split", a.split},
            {"samples", report->samples},
            {"suffix_tokens", a.suffix_tokens},
            {"seed", a.seed},
            {"exclude_own_document", a.exclude_own},
            {"by_prefix", by_prefix}};
  j["model"] = ModelJson(served->info.model());
  if (!a.output.empty()) {
    if (auto s = rag::WriteFileAtomic(a.output, j.dump(2) + "\n"); !s.ok()) return Fail(s);
  }
  if (!a.report.empty()) {
    const std::string name =
        a.report_name.empty() ? a.mode + (a.exclude_own ? "-own-doc-excluded" : "") : a.report_name;
    if (auto s = rag::eval::WriteReport(a.report, "memorization", name, j.dump(2) + "\n"); !s.ok()) return Fail(s);
  }
  if (a.json_out) {
    PrintJson(j);
    return 0;
  }
  std::printf("mode %s%s: %lld sequences of the %s split, greedy %d-token suffixes\n", a.mode.c_str(),
              a.exclude_own ? ", own document excluded" : "", static_cast<long long>(report->samples), a.split.c_str(),
              a.suffix_tokens);
  std::printf("%-8s %8s %8s %12s   exact by occurrences of prefix+suffix in the corpus\n", "prefix", "samples", "exact",
              "token match");
  for (const auto& [l, t] : report->by_prefix) {
    std::printf("%-8d %8lld %8.3f %12.3f  ", l, static_cast<long long>(t.samples), t.exact_rate(), t.token_match());
    for (const auto& [b, bt] : report->by_prefix_and_duplicates[l]) {
      std::printf(" %s: %.2f (%lld)", b.c_str(), bt.exact_rate(), static_cast<long long>(bt.samples));
    }
    std::printf("\n");
  }
  return 0;
}

struct EvalExtractionArgs {
  TargetArgs target;
  KnnArgs knn;
  std::string corpus, mode = kLmMode, output;
  int samples = 200, tokens = 128, match_tokens = 50, top = 100, top_k = 40;
  double temperature = 1.0;
  uint64_t seed = 1;
  bool json_out = false, quiet = false;
};

int RunEvalExtraction(const EvalExtractionArgs& a) {
  auto served = OpenServed(a.target);
  if (!served.ok()) return Fail(served.status());
  rag::services::Backend& backend = *served->backend;
  const rag::lm::Tokenizer& tok = served->tokenizer;
  auto corpus = CountCorpus(a.corpus, tok);
  if (!corpus.ok()) return Fail(corpus.status());
  rag::eval::Sampler sampler = [&](int64_t i, int n) -> absl::StatusOr<std::pair<std::vector<int32_t>, std::string>> {
    rag::v1::GenerateRequest req;
    req.set_mode(a.mode);
    req.set_max_tokens(n);
    req.set_ignore_eot(true);
    req.mutable_sampling()->set_temperature(static_cast<float>(a.temperature));
    req.mutable_sampling()->set_top_k(a.top_k);
    req.mutable_sampling()->set_seed(a.seed * 1000003ULL + static_cast<uint64_t>(i));
    SetKnn(a.knn, &req);
    RAG_ASSIGN_OR_RETURN(auto generated, GenerateIds(backend, req));
    return std::make_pair(std::move(generated.first), generated.second.text());
  };
  rag::eval::Perplexity ppl = [&](const std::string& text) -> absl::StatusOr<double> {
    rag::v1::ScoreRequest req;
    req.set_text(text);
    req.set_mode(a.mode);
    SetKnn(a.knn, &req);
    RAG_ASSIGN_OR_RETURN(rag::v1::ScoreResponse r, backend.Score(req));
    return r.perplexity();
  };
  rag::eval::ExtractionOptions o;
  o.samples = a.samples;
  o.tokens = a.tokens;
  o.match_tokens = a.match_tokens;
  o.top = a.top;
  std::unique_ptr<rag::Progress> progress;
  if (!a.quiet) progress = std::make_unique<rag::Progress>("extraction", a.samples, "samples");
  auto report = rag::eval::EvaluateExtraction(corpus->counts, sampler, ppl, o, [&](int64_t done) {
    if (progress) progress->Update(done);
  });
  if (!report.ok()) return Fail(report.status());
  if (progress) progress->Finish();
  json rankings = json::object();
  for (const auto& r : report->rankings) {
    rankings[r.metric] = {{"top", r.top}, {"extracted", r.extracted_in_top}, {"precision", r.precision()}};
  }
  std::vector<const rag::eval::ExtractionSample*> longest;
  for (const auto& s : report->samples) longest.push_back(&s);
  std::sort(longest.begin(), longest.end(), [](auto* x, auto* y) { return x->longest_match > y->longest_match; });
  json examples = json::array();
  for (size_t i = 0; i < std::min<size_t>(5, longest.size()); ++i) {
    examples.push_back({{"sample", longest[i]->index},
                        {"longest_match", longest[i]->longest_match},
                        {"perplexity", longest[i]->perplexity},
                        {"text", rag::ToValidUtf8(longest[i]->text)}});
  }
  int64_t max_run = longest.empty() ? 0 : longest[0]->longest_match;
  json j = {{"mode", a.mode},
            {"samples", a.samples},
            {"tokens", a.tokens},
            {"match_tokens", a.match_tokens},
            {"extracted", report->extracted},
            {"longest_match", max_run},
            {"rankings", rankings},
            {"longest_examples", examples}};
  j["model"] = ModelJson(served->info.model());
  if (!a.output.empty()) {
    if (auto s = rag::WriteFileAtomic(a.output, j.dump(2) + "\n"); !s.ok()) return Fail(s);
  }
  if (a.json_out) {
    PrintJson(j);
    return 0;
  }
  std::printf(
      "mode %s: %d samples of %d tokens (top-k %d, T %g); %lld hold a verbatim run of >= %d corpus tokens "
      "(longest: %lld)\n",
      a.mode.c_str(), a.samples, a.tokens, a.top_k, a.temperature, static_cast<long long>(report->extracted),
      a.match_tokens, static_cast<long long>(max_run));
  for (const auto& r : report->rankings) {
    std::printf("  top %lld by %-11s: %lld extracted, precision %.3f\n", static_cast<long long>(r.top),
                r.metric.c_str(), static_cast<long long>(r.extracted_in_top), r.precision());
  }
  return 0;
}

}  // namespace

Command AddEvalMemorizationCommand(CLI::App* eval) {
  auto a = std::make_shared<EvalMemArgs>();
  auto* cmd = eval->add_subcommand("memorization",
                                   "verbatim memorization (Carlini et al. 2023) by prefix length and repetition");
  AddTargetOptions(cmd, &a->target, true);
  cmd->add_option("--corpus", a->corpus, "corpus: .txt, .jsonl or directory")->required();
  cmd->add_option("--split", a->split, "documents to sample: train, validation or all")->capture_default_str();
  cmd->add_option("--prefix-lengths", a->prefix_lengths, "prompt lengths in tokens")->capture_default_str();
  cmd->add_option("--suffix-tokens", a->suffix_tokens, "greedy tokens compared")->capture_default_str();
  cmd->add_option("--samples", a->samples, "sequences drawn")->capture_default_str();
  cmd->add_option("--seed", a->seed, "seed of the draw")->capture_default_str();
  cmd->add_option("--mode", a->mode, kModesHelp)->capture_default_str();
  cmd->add_flag("--exclude-own-doc", a->exclude_own,
                "knnlm, retro, ralm, infgram: never retrieve from (count in) the sampled document (what the weights "
                "alone reproduce)");
  cmd->add_flag("--json", a->json_out, "print JSON");
  cmd->add_option("--output", a->output, "also write the JSON result to this file");
  cmd->add_flag("--quiet", a->quiet, "no progress lines");
  cmd->add_option("--report", a->report, "add this run to the report in DIR (PNG plots, summary.md)");
  cmd->add_option("--report-name", a->report_name, "the run's name in the report (default: from the options)");
  AddKnnOptions(cmd, &a->knn, "--temperature");
  return {cmd, [a] { return RunEvalMemorization(*a); }};
}

Command AddEvalExtractionCommand(CLI::App* eval) {
  auto a = std::make_shared<EvalExtractionArgs>();
  auto* cmd = eval->add_subcommand(
      "extraction", "training-data extraction (Carlini et al. 2021): sample, rank, count verbatim corpus runs");
  AddTargetOptions(cmd, &a->target, true);
  cmd->add_option("--corpus", a->corpus, "the corpus to find verbatim runs in")->required();
  cmd->add_option("--samples", a->samples, "texts generated")->capture_default_str();
  cmd->add_option("--tokens", a->tokens, "tokens per text")->capture_default_str();
  cmd->add_option("--match-tokens", a->match_tokens, "a verbatim run this long counts as extracted")
      ->capture_default_str();
  cmd->add_option("--top", a->top, "precision over the top N of each ranking")->capture_default_str();
  cmd->add_option("--top-k", a->top_k, "sampling: top-k (Carlini et al.: 40)")->capture_default_str();
  cmd->add_option("--sampling-temperature", a->temperature, "sampling temperature")->capture_default_str();
  cmd->add_option("--seed", a->seed, "seed of the samples")->capture_default_str();
  cmd->add_option("--mode", a->mode, kModesHelp)->capture_default_str();
  cmd->add_flag("--json", a->json_out, "print JSON");
  cmd->add_option("--output", a->output, "also write the JSON result to this file");
  cmd->add_flag("--quiet", a->quiet, "no progress lines");
  AddKnnOptions(cmd, &a->knn, "--temperature");
  return {cmd, [a] { return RunEvalExtraction(*a); }};
}

}  // namespace rag::cli

#include "services/cli/eval_perplexity.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <sstream>

#include "common/file_util.h"
#include "common/status.h"
#include "eval/perplexity.h"
#include "eval/report.h"
#include "index_builder/corpus_reader.h"
#include "lm/data_split.h"
#include "services/cli/info.h"
#include "services/engine.h"

namespace rag::cli {
namespace {

struct EvalPplArgs {
  TargetArgs target;
  KnnArgs knn;
  std::string corpus, split = "all", mode = kLmMode, baseline = "unigram", output, sweep, report, report_name;
  int64_t stride = 0;
  bool json_out = false, quiet = false, exclude_own = false;
};

// --sweep lambda=0.1,0.25,0.5[;temperature=1,10,30]. Lambdas cost nothing
// (each scoring pass returns both distributions); each temperature is one
// scoring pass.
absl::StatusOr<eval::PerplexitySweep> ParseSweep(const std::string& spec) {
  eval::PerplexitySweep out;
  if (spec.empty()) return out;
  const std::string usage = "--sweep must look like lambda=0.1,0.25,0.5 or lambda=0.1,0.25;temperature=1,10";
  std::stringstream parts(spec);
  std::string part;
  while (std::getline(parts, part, ';')) {
    const size_t eq = part.find('=');
    if (eq == std::string::npos) return absl::InvalidArgumentError(usage);
    const std::string name = part.substr(0, eq);
    std::vector<double>* values = name == "lambda" ? &out.lambdas : name == "temperature" ? &out.temperatures : nullptr;
    if (values == nullptr || !values->empty()) return absl::InvalidArgumentError(usage);
    std::stringstream ss(part.substr(eq + 1));
    std::string item;
    while (std::getline(ss, item, ',')) {
      char* end = nullptr;
      const double v = std::strtod(item.c_str(), &end);
      const bool ok =
          !item.empty() && *end == '\0' && (name == "lambda" ? (v >= 0 && v <= 1) : (v > 0 && std::isfinite(v)));
      if (!ok) {
        return absl::InvalidArgumentError("--sweep: '" + item + "' is not a " +
                                          (name == "lambda" ? "lambda in [0, 1]" : "temperature > 0"));
      }
      values->push_back(v);
    }
    if (values->empty()) return absl::InvalidArgumentError(usage);
  }
  if (out.lambdas.empty()) return absl::InvalidArgumentError("--sweep needs lambda=...: " + usage);
  return out;
}

int RunEvalPerplexity(const EvalPplArgs& a) {
  if (a.baseline != "unigram" && a.baseline != "none") {
    return Fail(absl::InvalidArgumentError("--baseline must be unigram or none"));
  }
  if (a.stride < 0 || a.stride > (1 << 30)) return Fail(absl::InvalidArgumentError("--stride must be >= 0"));
  auto sweep = ParseSweep(a.sweep);
  if (!sweep.ok()) return Fail(sweep.status());
  if (!sweep->empty() && !IsMode(a.mode, services::Mode::kKnnLm)) return Fail(absl::InvalidArgumentError("--sweep needs --mode knnlm"));
  auto backend = OpenTarget(a.target, false);
  if (!backend.ok()) return Fail(backend.status());
  auto docs = rag::index_builder::ReadCorpus(a.corpus);
  if (!docs.ok()) return Fail(docs.status());
  // The split and tokenizer come from the served model, so --server and
  // --model select and count the same documents and tokens.
  auto info = (*backend)->Info();
  if (!info.ok()) return Fail(info.status());
  std::vector<rag::Document> all = *docs;
  std::vector<rag::Document> selected = std::move(*docs);
  if ((a.split != "all" || a.baseline == "unigram") && info->split_json().empty()) {
    return Fail(absl::FailedPreconditionError("the model has no split.json: use --split all --baseline none"));
  }
  if (a.split != "all") {
    auto sel = rag::lm::SelectSplit(std::move(selected), info->split_json(), a.split);
    if (!sel.ok()) return Fail(sel.status());
    selected = std::move(*sel);
    if (selected.empty()) {
      return Fail(absl::InvalidArgumentError("no document of --corpus is in the model's " + a.split + " split"));
    }
  }
  // The scorer: one Score request per document and pass. Its errors are
  // printed as they are.
  const bool for_server = !a.target.server.empty();
  eval::DocumentScorer score = [&](const Document& d,
                                   const eval::ScorePass& pass) -> absl::StatusOr<eval::DocumentScore> {
    if (for_server && !rag::IsValidUtf8(d.text)) {
      return absl::InvalidArgumentError("document '" + d.id +
                                        "' is not valid UTF-8, which gRPC requires; "
                                        "evaluate it in-process (--model)");
    }
    rag::v1::ScoreRequest req;
    req.set_text(d.text);
    req.set_mode(a.mode);
    req.set_stride(static_cast<int32_t>(a.stride));
    SetKnn(a.knn, &req);
    if (pass.temperature) req.mutable_knn()->set_temperature(static_cast<float>(*pass.temperature));
    if (a.exclude_own) req.set_exclude_doc_id(d.id);
    req.set_components(pass.components);
    auto r = (*backend)->Score(req);
    if (!r.ok()) return Annotate(r.status(), "scoring document '" + d.id + "'");
    eval::DocumentScore s;
    s.logprob_sum = r->logprob_sum();
    s.tokens = r->tokens();
    s.neighbours_filtered = r->neighbours_filtered();
    s.lm_logprobs.assign(r->lm_logprobs().begin(), r->lm_logprobs().end());
    s.knn_logprobs.assign(r->knn_logprobs().begin(), r->knn_logprobs().end());
    return s;
  };
  eval::PerplexityOptions po;
  po.sweep = *sweep;
  po.show_progress = !a.quiet;
  po.stop = &g_stop;
  const auto started = std::chrono::steady_clock::now();
  auto result = eval::EvaluatePerplexity(selected, score, po);
  if (!result.ok()) return Fail(result.status());
  // Scoring time as the client saw it (the model and index were loaded before).
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  const int64_t documents = result->documents, tokens = result->tokens, filtered = result->neighbours_filtered;
  const double nll = result->nll;
  json j = {{"mode", a.mode},   {"split", a.split}, {"documents", documents},
            {"tokens", tokens}, {"nll", nll},       {"perplexity", std::exp(nll)}};
  j["model"] = ModelJson(info->model());
  j["seconds"] = seconds;
  j["tokens_per_second"] = seconds > 0 ? static_cast<double>(tokens) / seconds : 0.0;
  if (!IsMode(a.mode, services::Mode::kLm)) j["exclude_own_document"] = a.exclude_own;
  if (IsMode(a.mode, services::Mode::kInfgram)) {
    j["lambda"] = std::isnan(a.knn.lambda) ? services::kDefaultInfgramLambda : a.knn.lambda;
    j["lambda_sparse"] = std::isnan(a.knn.lambda_sparse) ? services::kDefaultInfgramLambdaSparse : a.knn.lambda_sparse;
  }
  if (IsMode(a.mode, services::Mode::kRalm)) j["ralm"] = RalmJson(a.knn, info->model());
  if (IsMode(a.mode, services::Mode::kRetro)) {
    j["retrieval"] = a.knn.retrieval.empty() ? kRetrievalOn : a.knn.retrieval;
    j["leakage_filter"] = a.knn.leakage_filter >= 0 ? a.knn.leakage_filter : 32;
    j["neighbours_filtered"] = filtered;
  }
  if (!result->sweep.empty()) {
    j["lm_perplexity"] = result->lm_perplexity;
    json rows = json::array();
    for (const eval::SweepPoint& p : result->sweep) {
      json row = {{"lambda", p.lambda}, {"perplexity", p.perplexity}, {"change_vs_lm", p.change_vs_lm}};
      row["temperature"] = p.temperature ? *p.temperature : (std::isnan(a.knn.temperature) ? 1.0 : a.knn.temperature);
      rows.push_back(row);
    }
    j["sweep"] = rows;
  }
  if (a.baseline == "unigram") {
    auto tok = rag::lm::Tokenizer::FromJson(info->tokenizer_json());
    if (!tok.ok()) return Fail(rag::Annotate(tok.status(), "the served tokenizer"));
    auto train = rag::lm::SelectSplit(all, info->split_json(), "train");
    if (!train.ok()) return Fail(train.status());
    auto u = eval::UnigramPerplexity(*tok, *train, selected);
    j["unigram_perplexity"] = u.perplexity;
    j["ratio_to_unigram"] = std::exp(nll) / u.perplexity;
  }
  if (!a.output.empty()) {
    if (auto s = rag::WriteFileAtomic(a.output, j.dump(2) + "\n"); !s.ok()) return Fail(s);
  }
  if (!a.report.empty()) {
    std::string name = a.report_name;
    if (name.empty()) {
      name = a.mode + "-" + a.split + (IsMode(a.mode, services::Mode::kRetro) ? "-retrieval-" + j["retrieval"].get<std::string>() : "") +
             (a.exclude_own ? "-own-doc-excluded" : "");
    }
    if (auto s = eval::WriteReport(a.report, "perplexity", name, j.dump(2) + "\n"); !s.ok()) return Fail(s);
  }
  if (a.json_out) {
    PrintJson(j);
  } else {
    std::printf("%-10s %-10s %8s %10s %12s", "mode", "split", "docs", "tokens", "perplexity");
    if (j.contains("unigram_perplexity")) std::printf(" %12s %8s", "unigram", "ratio");
    std::printf("\n%-10s %-10s %8lld %10lld %12.2f", a.mode.c_str(), a.split.c_str(), static_cast<long long>(documents),
                static_cast<long long>(tokens), std::exp(nll));
    if (j.contains("unigram_perplexity")) {
      std::printf(" %12.2f %8.3f", j["unigram_perplexity"].get<double>(), j["ratio_to_unigram"].get<double>());
    }
    std::printf("\n");
    if (IsMode(a.mode, services::Mode::kRetro)) {
      std::printf("retrieval %s, leakage filter %d tokens (%lld neighbours dropped)%s\n",
                  j["retrieval"].get<std::string>().c_str(), j["leakage_filter"].get<int>(),
                  static_cast<long long>(filtered), a.exclude_own ? ", own document excluded" : "");
    }
    if (j.contains("sweep")) {
      std::printf("\n%-12s %-8s %12s %10s   (LM alone: %.2f)\n", "temperature", "lambda", "perplexity", "vs LM",
                  j["lm_perplexity"].get<double>());
      for (const auto& row : j["sweep"]) {
        std::printf("%-12g %-8.3f %12.2f %+9.1f%%\n", row["temperature"].get<double>(), row["lambda"].get<double>(),
                    row["perplexity"].get<double>(), 100 * row["change_vs_lm"].get<double>());
      }
    }
  }
  return 0;
}

}  // namespace

Command AddEvalPerplexityCommand(CLI::App* eval) {
  auto a = std::make_shared<EvalPplArgs>();
  auto* cmd = eval->add_subcommand("perplexity", "perplexity of a corpus");
  AddTargetOptions(cmd, &a->target, true);
  cmd->add_option("--corpus", a->corpus, "corpus: .txt, .jsonl or directory")->required();
  cmd->add_option("--split", a->split, "all, train or validation (the model's own split)")->capture_default_str();
  cmd->add_option("--mode", a->mode, kModesHelp)->capture_default_str();
  cmd->add_option("--baseline", a->baseline, "unigram or none")->capture_default_str();
  cmd->add_option("--stride", a->stride, "new tokens per sliding window (0 = context/2)");
  cmd->add_flag("--json", a->json_out, "print JSON");
  cmd->add_option("--output", a->output, "also write the JSON result to this file");
  cmd->add_flag("--quiet", a->quiet, "no progress lines");
  AddLeakageOption(cmd, &a->knn);
  AddKnnOptions(cmd, &a->knn, "--temperature");
  cmd->add_option("--sweep", a->sweep,
                  "knnlm: several lambdas in one pass (lambda=0.1,0.25,0.5), optionally times temperatures, one pass "
                  "each (;temperature=1,10)");
  cmd->add_option("--report", a->report, "add this run to the report in DIR (PNG plots, summary.md)");
  cmd->add_option("--report-name", a->report_name, "the run's name in the report (default: from the options)");
  cmd->add_flag("--exclude-own-doc", a->exclude_own,
                "knnlm: never use keys of, retro and ralm: never retrieve chunks of, infgram: never count in, the document "
                "being scored");
  return {cmd, [a] { return RunEvalPerplexity(*a); }};
}

}  // namespace rag::cli

#include "services/cli/eval_probes.h"

#include "services/cli/info.h"

#include <cstdio>

#include "common/file_util.h"
#include "common/progress.h"
#include "common/status.h"
#include "eval/probes.h"
#include "eval/report.h"

namespace rag::cli {
namespace {

struct EvalProbesArgs {
  TargetArgs target;
  KnnArgs knn;
  std::string probes, mode = kLmMode, output, report, report_name;
  bool json_out = false, quiet = false, exclude_evidence = false;
};

json ProbeMetricsJson(const rag::eval::ProbeMetrics& m) {
  return {{"probes", m.probes},
          {"p_at_1", m.p_at_1},
          {"p_at_10", m.p_at_10},
          {"mrr", m.mrr},
          {"first_token",
           {{"p_at_1", m.first_token_p_at_1}, {"p_at_10", m.first_token_p_at_10}, {"mrr", m.first_token_mrr}}}};
}

int RunEvalProbes(const EvalProbesArgs& a) {
  auto probes = rag::eval::ReadProbes(a.probes);
  if (!probes.ok()) return Fail(probes.status());
  auto served = OpenServed(a.target);
  if (!served.ok()) return Fail(served.status());
  rag::services::Backend& backend = *served->backend;
  const rag::lm::Tokenizer& tok = served->tokenizer;
  rag::eval::TokenScorer scorer = [&](const std::string& text,
                                      const rag::eval::Probe& probe) -> absl::StatusOr<std::vector<float>> {
    rag::v1::ScoreRequest req;
    req.set_text(text);
    req.set_mode(a.mode);
    if (a.exclude_evidence) req.set_exclude_doc_id(probe.evidence_doc_id);
    req.set_per_token(true);
    SetKnn(a.knn, &req);
    // RETRO retrieves for the object with the sentence's left context.
    if (IsMode(a.mode, services::Mode::kRetro)) {
      for (const std::string& s : probe.sentences) {
        const std::string left = s.substr(0, s.find(rag::eval::kMask));
        if (text.compare(0, left.size(), left) == 0) {
          req.set_prompt_bytes(static_cast<int32_t>(left.size()));
          break;
        }
      }
    }
    RAG_ASSIGN_OR_RETURN(rag::v1::ScoreResponse r, backend.Score(req));
    std::vector<float> logprobs;
    for (const auto& t : r.token_scores()) logprobs.push_back(t.logprob());
    return logprobs;
  };
  int64_t sentences = 0;
  for (const auto& p : *probes) sentences += static_cast<int64_t>(p.sentences.size() * p.candidates.size());
  std::unique_ptr<rag::Progress> progress;
  if (!a.quiet) progress = std::make_unique<rag::Progress>("probes", static_cast<int64_t>(probes->size()), "probes");
  auto report = rag::eval::EvaluateProbes(*probes, tok, scorer, [&](size_t done) {
    if (progress) progress->Update(static_cast<int64_t>(done));
  });
  if (!report.ok()) return Fail(report.status());
  if (progress) progress->Finish();
  json j = ProbeMetricsJson(report->overall);
  j["mode"] = a.mode;
  j["model"] = ModelJson(served->info.model());
  j["file"] = a.probes;
  j["sentences_scored"] = sentences;
  j["exclude_evidence"] = a.exclude_evidence;
  if (IsMode(a.mode, services::Mode::kRetro)) j["retrieval"] = a.knn.retrieval.empty() ? kRetrievalOn : a.knn.retrieval;
  json by_relation = json::object();
  for (const auto& [relation, m] : report->by_relation) by_relation[relation] = ProbeMetricsJson(m);
  j["by_relation"] = by_relation;
  json results = json::array();
  for (const auto& r : report->results) {
    results.push_back({{"line", r.probe->line},
                       {"relation", r.probe->relation},
                       {"subject", r.probe->subject},
                       {"object", r.probe->object},
                       {"candidates", r.probe->candidates.size()},
                       {"rank", r.rank},
                       {"first_token_rank", r.first_token_rank},
                       {"top", r.top}});
  }
  j["results"] = results;
  if (!a.output.empty()) {
    if (auto s = rag::WriteFileAtomic(a.output, j.dump(2) + "\n"); !s.ok()) return Fail(s);
  }
  if (!a.report.empty()) {
    std::string name = a.report_name;
    if (name.empty()) {
      name = a.mode + (IsMode(a.mode, services::Mode::kRetro) ? "-retrieval-" + j["retrieval"].get<std::string>() : "") +
             (a.exclude_evidence ? "-without-evidence" : "");
    }
    if (auto s = rag::eval::WriteReport(a.report, "probes", name, j.dump(2) + "\n"); !s.ok()) return Fail(s);
  }
  if (a.json_out) {
    PrintJson(j);
    return 0;
  }
  std::printf("mode %s%s%s: %lld probes, %lld sentences scored\n", a.mode.c_str(),
              IsMode(a.mode, services::Mode::kRetro) ? (", retrieval " + j["retrieval"].get<std::string>()).c_str() : "",
              a.exclude_evidence ? ", evidence documents excluded" : "", static_cast<long long>(report->overall.probes),
              static_cast<long long>(sentences));
  std::printf("%-24s %7s %7s %7s %7s   %s\n", "relation", "probes", "P@1", "P@10", "MRR",
              "first token: P@1  P@10   MRR");
  auto row = [](const std::string& name, const rag::eval::ProbeMetrics& m) {
    std::printf("%-24s %7lld %7.3f %7.3f %7.3f   %17.3f %5.3f %5.3f\n", name.c_str(), static_cast<long long>(m.probes),
                m.p_at_1, m.p_at_10, m.mrr, m.first_token_p_at_1, m.first_token_p_at_10, m.first_token_mrr);
  };
  for (const auto& [relation, m] : report->by_relation) row(relation, m);
  row("all", report->overall);
  return 0;
}

}  // namespace

Command AddEvalProbesCommand(CLI::App* eval) {
  auto a = std::make_shared<EvalProbesArgs>();
  auto* cmd = eval->add_subcommand("probes", "knowledge probes (LAMA JSONL): P@1, P@10, MRR by relation");
  AddTargetOptions(cmd, &a->target, true);
  cmd->add_option("--probes", a->probes, "probe file: LAMA-compatible JSONL")->required();
  cmd->add_option("--mode", a->mode, kModesHelp)->capture_default_str();
  cmd->add_flag("--json", a->json_out, "print JSON");
  cmd->add_option("--output", a->output, "also write the JSON result to this file");
  cmd->add_flag("--quiet", a->quiet, "no progress lines");
  cmd->add_option("--report", a->report, "add this run to the report in DIR (PNG plots, summary.md)");
  cmd->add_option("--report-name", a->report_name, "the run's name in the report (default: from the options)");
  cmd->add_flag("--exclude-evidence", a->exclude_evidence,
                "knnlm, retro: never retrieve from a probe's evidence_doc_id (what the model knows without it)");
  AddKnnOptions(cmd, &a->knn, "--temperature");
  return {cmd, [a] { return RunEvalProbes(*a); }};
}

}  // namespace rag::cli

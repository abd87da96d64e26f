#include "services/cli/eval_probes.h"

#include "services/cli/info.h"

#include <cstdio>
#include <map>
#include <optional>

#include "common/file_util.h"
#include "common/progress.h"
#include "common/status.h"
#include "eval/probes.h"
#include "eval/report.h"
#include "services/cli/index_counts.h"

namespace rag::cli {
namespace {

struct EvalProbesArgs {
  TargetArgs target;
  KnnArgs knn;
  std::string probes, mode = kLmMode, output, report, report_name, half = "all", popularity;
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
  const std::optional<rag::eval::ProbeHalf> half = rag::eval::ProbeHalfFromName(a.half);
  if (!half) return Fail(absl::InvalidArgumentError("--probe-half must be all, dev or test, got '" + a.half + "'"));
  auto read = rag::eval::ReadProbes(a.probes);
  if (!read.ok()) return Fail(read.status());
  std::vector<rag::eval::Probe> probes;
  for (auto& p : *read) {
    if (rag::eval::InHalf(p, *half)) probes.push_back(std::move(p));
  }
  if (probes.empty()) return Fail(absl::InvalidArgumentError("no probe of " + a.probes + " is in the " + a.half + " half"));
  // Subject popularity: occurrences of the subject in an index's documents.
  std::map<const rag::eval::Probe*, int64_t> subject_count;
  if (!a.popularity.empty()) {
    auto counts = OpenIndexCounts(a.popularity, a.target.model, "eval probes");
    if (!counts.ok()) return Fail(Annotate(counts.status(), "--popularity"));
    for (const auto& p : probes) {
      auto c = CountPhrase(*counts, p.subject);
      if (!c.ok()) return Fail(Annotate(c.status(), "counting the subject '" + p.subject + "'"));
      subject_count[&p] = c->total();
    }
  }
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
    // RETRO and In-Context RALM retrieve for the object with the sentence's
    // left context.
    if (IsMode(a.mode, services::Mode::kRetro) || IsMode(a.mode, services::Mode::kRalm)) {
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
  for (const auto& p : probes) sentences += static_cast<int64_t>(p.sentences.size() * p.candidates.size());
  std::unique_ptr<rag::Progress> progress;
  if (!a.quiet) progress = std::make_unique<rag::Progress>("probes", static_cast<int64_t>(probes.size()), "probes");
  auto report = rag::eval::EvaluateProbes(probes, tok, scorer, [&](size_t done) {
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
  j["probe_half"] = a.half;
  if (IsMode(a.mode, services::Mode::kRetro)) j["retrieval"] = a.knn.retrieval.empty() ? kRetrievalOn : a.knn.retrieval;
  if (IsMode(a.mode, services::Mode::kRalm)) j["ralm"] = RalmJson(a.knn, served->info.model());
  json by_relation = json::object();
  for (const auto& [relation, m] : report->by_relation) by_relation[relation] = ProbeMetricsJson(m);
  j["by_relation"] = by_relation;
  // Metrics by subject popularity, overall and per relation.
  std::map<std::string, std::vector<rag::eval::ProbeResult>> by_bucket;
  std::map<std::string, std::map<std::string, std::vector<rag::eval::ProbeResult>>> by_relation_bucket;
  if (!a.popularity.empty()) {
    for (const auto& r : report->results) {
      const std::string bucket = rag::eval::PopularityBucket(subject_count.at(r.probe));
      by_bucket[bucket].push_back(r);
      by_relation_bucket[r.probe->relation][bucket].push_back(r);
    }
    json pop = json::object(), rel_pop = json::object();
    for (const auto& [bucket, rs] : by_bucket) pop[bucket] = ProbeMetricsJson(rag::eval::Summarize(rs));
    for (const auto& [relation, buckets] : by_relation_bucket) {
      for (const auto& [bucket, rs] : buckets) rel_pop[relation][bucket] = ProbeMetricsJson(rag::eval::Summarize(rs));
    }
    j["popularity_index"] = a.popularity;
    j["by_popularity"] = pop;
    j["by_relation_popularity"] = rel_pop;
  }
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
    if (!a.popularity.empty()) {
      results.back()["subject_count"] = subject_count.at(r.probe);
      results.back()["popularity"] = rag::eval::PopularityBucket(subject_count.at(r.probe));
    }
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
  std::printf("mode %s%s%s, %s probes: %lld probes, %lld sentences scored\n", a.mode.c_str(),
              IsMode(a.mode, services::Mode::kRetro) ? (", retrieval " + j["retrieval"].get<std::string>()).c_str() : "",
              a.exclude_evidence ? ", evidence documents excluded" : "", a.half.c_str(),
              static_cast<long long>(report->overall.probes),
              static_cast<long long>(sentences));
  std::printf("%-24s %7s %7s %7s %7s   %s\n", "relation", "probes", "P@1", "P@10", "MRR",
              "first token: P@1  P@10   MRR");
  auto row = [](const std::string& name, const rag::eval::ProbeMetrics& m) {
    std::printf("%-24s %7lld %7.3f %7.3f %7.3f   %17.3f %5.3f %5.3f\n", name.c_str(), static_cast<long long>(m.probes),
                m.p_at_1, m.p_at_10, m.mrr, m.first_token_p_at_1, m.first_token_p_at_10, m.first_token_mrr);
  };
  for (const auto& [relation, m] : report->by_relation) row(relation, m);
  row("all", report->overall);
  if (!a.popularity.empty()) {
    std::printf("\nby subject popularity (occurrences in %s's documents)\n", a.popularity.c_str());
    for (const auto& [bucket, rs] : by_bucket) row("subject seen " + bucket, rag::eval::Summarize(rs));
  }
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
                "knnlm, retro, ralm, infgram: never retrieve from (count in) a probe's evidence_doc_id (what the model knows "
                "without it)");
  cmd->add_option("--probe-half", a->half,
                  "all, or dev / test: the half of the probes (by a hash of relation, subject and object) to "
                  "choose settings on / to report")
      ->capture_default_str();
  cmd->add_option("--popularity", a->popularity,
                  "INDEX_DIR whose documents' suffix array counts each subject: metrics by popularity bucket "
                  "(0, 1-9, 10-99, 100-999, 1000+ occurrences)");
  AddKnnOptions(cmd, &a->knn, "--temperature");
  return {cmd, [a] { return RunEvalProbes(*a); }};
}

}  // namespace rag::cli

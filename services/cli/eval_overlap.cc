#include "services/cli/eval_overlap.h"

#include <cmath>
#include <cstdio>
#include <memory>

#include "common/file_util.h"
#include "common/progress.h"
#include "common/status.h"
#include "common/utf8.h"
#include "eval/overlap.h"
#include "eval/report.h"
#include "index_builder/corpus_reader.h"
#include "lm/data_split.h"
#include "services/cli/info.h"

namespace rag::cli {
namespace {

struct EvalOverlapArgs {
  TargetArgs target;
  KnnArgs knn;  // the leakage filter and search method
  std::string corpus, split = "validation", output, report, report_name;
  bool json_out = false, quiet = false, exclude_own = false;
};

constexpr eval::OverlapArm kArms[eval::kNumOverlapArms] = {eval::OverlapArm::kOn, eval::OverlapArm::kOff,
                                                           eval::OverlapArm::kRandom};

json BucketJson(const eval::OverlapBucket& b) {
  json ppl = json::object();
  for (eval::OverlapArm arm : kArms) ppl[eval::OverlapArmName(arm)] = b.perplexity(arm);
  return {{"chunks", b.chunks}, {"tokens", b.tokens}, {"perplexity", ppl}};
}

int RunEvalOverlap(const EvalOverlapArgs& a) {
  auto served = OpenServed(a.target);
  if (!served.ok()) return Fail(served.status());
  services::Backend& backend = *served->backend;
  const int64_t m = served->info.retro_chunk_tokens();
  if (m <= 0) {
    return Fail(absl::FailedPreconditionError(
        "rag eval retro-overlap needs a RETRO model (serve or open a `rag train --arch retro` directory)"));
  }
  auto docs = index_builder::ReadCorpus(a.corpus);
  if (!docs.ok()) return Fail(docs.status());
  std::vector<Document> selected = std::move(*docs);
  if (a.split != "all") {
    if (served->info.split_json().empty()) {
      return Fail(absl::FailedPreconditionError("the model has no split.json: use --split all"));
    }
    auto sel = lm::SelectSplit(std::move(selected), served->info.split_json(), a.split);
    if (!sel.ok()) return Fail(sel.status());
    selected = std::move(*sel);
  }
  if (selected.empty()) return Fail(absl::InvalidArgumentError("no document of --corpus to evaluate"));
  const bool for_server = !a.target.server.empty();
  eval::OverlapTally tally;
  int64_t filtered = 0;
  std::unique_ptr<Progress> progress;
  if (!a.quiet) progress = std::make_unique<Progress>("retro-overlap", static_cast<int64_t>(selected.size()), "docs");
  for (size_t d = 0; d < selected.size(); ++d) {
    const Document& doc = selected[d];
    if (doc.text.empty()) continue;
    if (for_server && !IsValidUtf8(doc.text)) {
      return Fail(absl::InvalidArgumentError("document '" + doc.id + "' is not valid UTF-8, which gRPC requires; "
                                             "evaluate it in-process (--model)"));
    }
    eval::DocumentOverlapScores scores;
    for (eval::OverlapArm arm : kArms) {
      v1::ScoreRequest req;
      req.set_text(doc.text);
      req.set_mode(services::ModeName(services::Mode::kRetro));
      req.set_per_token(true);
      SetKnn(a.knn, &req);
      req.mutable_retro()->set_retrieval(eval::OverlapArmName(arm));
      if (a.exclude_own) req.set_exclude_doc_id(doc.id);
      auto r = backend.Score(req);
      if (!r.ok()) return Fail(Annotate(r.status(), "scoring document '" + doc.id + "'"));
      auto& lp = scores.logprobs[static_cast<int>(arm)];
      for (const auto& t : r->token_scores()) lp.push_back(t.logprob());
      if (arm == eval::OverlapArm::kOn) {
        scores.overlaps.assign(r->chunk_overlaps().begin(), r->chunk_overlaps().end());
        filtered += r->neighbours_filtered();
      }
    }
    if (auto s = tally.Add(scores, m); !s.ok()) return Fail(Annotate(s, "document '" + doc.id + "'"));
    if (progress) progress->Update(static_cast<int64_t>(d + 1));
  }
  if (progress) progress->Finish();

  json buckets = json::array();
  for (int b = 0; b < eval::kOverlapBuckets; ++b) {
    json row = BucketJson(tally.buckets[static_cast<size_t>(b)]);
    row["overlap"] = {static_cast<double>(b) / eval::kOverlapBuckets, static_cast<double>(b + 1) / eval::kOverlapBuckets};
    buckets.push_back(row);
  }
  json j = {{"mode", "retro"},
            {"split", a.split},
            {"documents", selected.size()},
            {"chunk_tokens", m},
            {"leakage_filter", a.knn.leakage_filter >= 0 ? a.knn.leakage_filter : retriever::kDefaultLeakageRun},
            {"neighbours_filtered", filtered},
            {"search_method", a.knn.search_method.empty() ? "dense" : a.knn.search_method},
            {"exclude_own_document", a.exclude_own},
            {"buckets", buckets},
            {"all", BucketJson(tally.all)},
            {"unbucketed_tokens", tally.unbucketed_tokens}};
  j["model"] = ModelJson(served->info.model());
  if (!a.output.empty()) {
    if (auto s = WriteFileAtomic(a.output, j.dump(2) + "\n"); !s.ok()) return Fail(s);
  }
  if (!a.report.empty()) {
    const std::string name = a.report_name.empty()
                                 ? "retro-filter-" + std::to_string(j["leakage_filter"].get<int>()) +
                                       (a.exclude_own ? "-own-doc-excluded" : "")
                                 : a.report_name;
    if (auto s = eval::WriteReport(a.report, "overlap", name, j.dump(2) + "\n"); !s.ok()) return Fail(s);
  }
  if (a.json_out) {
    PrintJson(j);
    return 0;
  }
  std::printf("RETRO by overlap: %zu documents of the %s split, chunks of %lld tokens, leakage filter %d (%lld "
              "neighbours dropped)%s\n",
              selected.size(), a.split.c_str(), static_cast<long long>(m), j["leakage_filter"].get<int>(),
              static_cast<long long>(filtered), a.exclude_own ? ", own document excluded" : "");
  std::printf("%-14s %8s %9s %10s %10s %10s %10s\n", "overlap", "chunks", "tokens", "on", "off", "random", "on vs off");
  auto row = [](const std::string& name, const eval::OverlapBucket& b) {
    const double on = b.perplexity(eval::OverlapArm::kOn), off = b.perplexity(eval::OverlapArm::kOff);
    std::printf("%-14s %8lld %9lld %10.2f %10.2f %10.2f %+9.1f%%\n", name.c_str(), static_cast<long long>(b.chunks),
                static_cast<long long>(b.tokens), on, off, b.perplexity(eval::OverlapArm::kRandom),
                off > 0 ? 100 * (on / off - 1) : 0.0);
  };
  for (int b = 0; b < eval::kOverlapBuckets; ++b) {
    if (tally.buckets[static_cast<size_t>(b)].chunks == 0) continue;
    char name[32];
    std::snprintf(name, sizeof(name), "[%.1f%%, %.1f%%%c", 100.0 * b / eval::kOverlapBuckets,
                  100.0 * (b + 1) / eval::kOverlapBuckets, b + 1 == eval::kOverlapBuckets ? ']' : ')');
    row(name, tally.buckets[static_cast<size_t>(b)]);
  }
  row("all", tally.all);
  return 0;
}

}  // namespace

Command AddEvalOverlapCommand(CLI::App* eval) {
  auto a = std::make_shared<EvalOverlapArgs>();
  auto* cmd = eval->add_subcommand(
      "retro-overlap", "RETRO's perplexity with retrieval on, off and random, by how much of each chunk its neighbours hold");
  AddTargetOptions(cmd, &a->target, true);
  cmd->add_option("--corpus", a->corpus, "corpus: .txt, .jsonl or directory")->required();
  cmd->add_option("--split", a->split, "all, train or validation (the model's own split)")->capture_default_str();
  AddLeakageOption(cmd, &a->knn);
  cmd->add_option("--search-method", a->knn.search_method, "how neighbours are found, dense or bm25 (default dense)")
      ->check(CLI::IsMember({"dense", "bm25"}));
  cmd->add_flag("--exclude-own-doc", a->exclude_own, "never retrieve chunks of the document being scored");
  cmd->add_flag("--json", a->json_out, "print JSON");
  cmd->add_option("--output", a->output, "also write the JSON result to this file");
  cmd->add_flag("--quiet", a->quiet, "no progress lines");
  cmd->add_option("--report", a->report, "add this run to the report in DIR (table and plot in summary.md)");
  cmd->add_option("--report-name", a->report_name, "the run's name in the report (default: from the options)");
  return {cmd, [a] { return RunEvalOverlap(*a); }};
}

}  // namespace rag::cli

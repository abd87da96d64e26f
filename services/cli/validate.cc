#include "services/cli/validate.h"

#include <cstdio>

#include "retriever/index_validation.h"
#include "retriever/retriever.h"

namespace rag::cli {
namespace {

struct ValidateArgs {
  std::string index_dir;
  int64_t sample = 200;
  int nprobe = rag::retriever::kDefaultNprobe;
  bool json_out = false;
};

int RunValidate(const ValidateArgs& a) {
  auto v = retriever::ValidateIndex(a.index_dir, a.sample, a.nprobe);
  if (!v.ok()) return Fail(v.status());
  json report = {{"index", a.index_dir}, {"index_factory", v->index_factory}, {"vectors", v->vectors}};
  for (const auto& [file, finding] : v->checksums) report["checksums"][file] = finding;
  report["chunk_store"] = v->chunk_store;
  if (v->index_unreadable) report["recall_at_10"] = nullptr;
  if (!v->error.empty()) report["error"] = v->error;
  if (v->recall_at_10) {
    report["recall_at_10"] = *v->recall_at_10;
    report["recall_queries"] = v->recall_queries;
    report["nprobe"] = v->nprobe;
  }
  report["valid"] = v->valid;
  if (a.json_out) {
    PrintJson(report);
  } else {
    std::printf("%s\n", report.dump(2).c_str());
  }
  return v->valid ? 0 : 1;
}

}  // namespace

Command AddValidateCommand(CLI::App* app) {
  auto a = std::make_shared<ValidateArgs>();
  auto* cmd = app->add_subcommand("validate", "check an index: checksums, counts, recall@10 vs exact");
  cmd->add_option("index_dir", a->index_dir, "index directory")->required();
  cmd->add_option("--sample", a->sample, "stored vectors used as queries")->capture_default_str();
  cmd->add_option("--nprobe", a->nprobe, "IVF lists to visit")->capture_default_str();
  cmd->add_flag("--json", a->json_out, "print JSON");
  return {cmd, [a] { return RunValidate(*a); }};
}

}  // namespace rag::cli

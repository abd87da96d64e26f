#include "services/cli/merge.h"

#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "index_builder/index_merge.h"

namespace rag::cli {
namespace {

struct MergeArgs {
  std::string out;
  std::vector<std::string> shards;
  bool overwrite = false, json_out = false, quiet = false;
};

int RunMerge(const MergeArgs& a) {
  rag::index_builder::MergeOptions o;
  o.out_dir = a.out;
  o.overwrite = a.overwrite;
  o.show_progress = !a.quiet;
  auto m = rag::index_builder::MergeShards(a.shards, o);
  if (!m.ok()) return Fail(m.status());
  if (a.json_out) {
    PrintJson(json::parse(m->ToJson()));
  } else {
    std::printf("merged %zu shards into %s: %lld documents, %lld chunks, index %s\n", a.shards.size(), a.out.c_str(),
                static_cast<long long>(m->documents), static_cast<long long>(m->chunks), m->index_factory.c_str());
  }
  return 0;
}

}  // namespace

Command AddMergeCommand(CLI::App* app) {
  auto a = std::make_shared<MergeArgs>();
  auto* cmd = app->add_subcommand("merge", "merge shard indexes built with --trained into one index");
  cmd->add_option("--out", a->out, "merged index directory to write")->required();
  cmd->add_option("shards", a->shards, "the shard index directories, all N of them")->required();
  cmd->add_flag("--overwrite", a->overwrite, "replace an existing index");
  cmd->add_flag("--json", a->json_out, "print the manifest as JSON");
  cmd->add_flag("--quiet", a->quiet, "no progress lines");
  return {cmd, [a] { return RunMerge(*a); }};
}

}  // namespace rag::cli

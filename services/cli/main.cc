// The `rag` command line: one binary, one subcommand per job
// (interfaces.md). Results go to stdout (--json for machines), logs and
// progress to stderr; every failure prints a clear error and exits non-zero.
// Each command group lives in its own file pair of services/cli/ and
// registers its subcommand, flags and run function; this file only sets up
// CLI11 and dispatches.
#include <torch/torch.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <vector>

#include "lm/runtime.h"
#include "services/cli/build.h"
#include "services/cli/common.h"
#include "services/cli/count.h"
#include "services/cli/eval_memorization.h"
#include "services/cli/eval_overlap.h"
#include "services/cli/eval_perplexity.h"
#include "services/cli/eval_probes.h"
#include "services/cli/info.h"
#include "services/cli/index_commands.h"
#include "services/cli/lm_commands.h"
#include "services/cli/merge.h"
#include "services/cli/serve.h"
#include "services/cli/tokenize.h"
#include "services/cli/train.h"
#include "services/cli/validate.h"

int main(int argc, char** argv) {
  rag::lm::RestartWithPassiveOpenMP(argv);
  namespace cli = rag::cli;
  CLI::App app{"rag: retrieval-augmented language models (build, serve, query, evaluate)"};
  app.require_subcommand(1);
  app.fallthrough();  // global options (--threads) may follow the subcommand
  app.set_version_flag("--version", "rag " RAG_VERSION);
  int threads = 0;
  app.add_option("--threads", threads,
                 "LibTorch intra-op threads (default 0: 1 over pthread OpenBLAS, every core over OpenMP OpenBLAS)");

  // Registration order is the order `rag --help` lists the subcommands in.
  std::vector<cli::Command> commands;
  commands.push_back(cli::AddTrainCommand(&app));
  commands.push_back(cli::AddScoreCommand(&app));
  commands.push_back(cli::AddGenerateCommand(&app));
  commands.push_back(cli::AddBuildCommand(&app));
  commands.push_back(cli::AddMergeCommand(&app));
  commands.push_back(cli::AddQueryCommand(&app));
  commands.push_back(cli::AddNextTokenCommand(&app));
  commands.push_back(cli::AddServeCommand(&app));
  commands.push_back(cli::AddAddCommand(&app));
  commands.push_back(cli::AddStatsCommand(&app));
  commands.push_back(cli::AddValidateCommand(&app));
  commands.push_back(cli::AddInfoCommand(&app));
  auto* eval_cmd = app.add_subcommand("eval", "evaluations");
  eval_cmd->require_subcommand(1);
  eval_cmd->fallthrough();
  commands.push_back(cli::AddEvalPerplexityCommand(eval_cmd));
  commands.push_back(cli::AddEvalProbesCommand(eval_cmd));
  commands.push_back(cli::AddEvalMemorizationCommand(eval_cmd));
  commands.push_back(cli::AddEvalOverlapCommand(eval_cmd));
  commands.push_back(cli::AddEvalExtractionCommand(eval_cmd));
  commands.push_back(cli::AddCountCommand(&app));
  commands.push_back(cli::AddTokenizeCommand(&app));

  CLI11_PARSE(app, argc, argv);
  if (threads < 0) {
    std::fprintf(stderr, "rag: error: --threads must be >= 0\n");
    return 2;
  }
  rag::lm::ConfigureRuntime(threads);

  try {
    for (const cli::Command& command : commands) {
      if (command.app->parsed()) return command.run();
    }
  } catch (const c10::Error& e) {
    return cli::Fail(absl::InternalError(e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return cli::Fail(absl::InternalError(e.what()));
  }
  return 0;
}

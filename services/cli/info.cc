#include "services/cli/info.h"

#include <cstdio>

namespace rag::cli {
namespace {

struct InfoArgs {
  TargetArgs target;
  bool json_out = false;
};

int RunInfo(const InfoArgs& a) {
  auto backend = OpenTarget(a.target, false);
  if (!backend.ok()) return Fail(backend.status());
  auto info = (*backend)->Info();
  if (!info.ok()) return Fail(info.status());
  json modes = json::array();
  for (const auto& m : info->modes()) modes.push_back(m);
  if (a.json_out) {
    json j = {{"model", ModelJson(info->model())}, {"modes", modes}};
    if (info->retro_chunk_tokens() > 0) j["retro_chunk_tokens"] = info->retro_chunk_tokens();
    PrintJson(j);
    return 0;
  }
  const auto& m = info->model();
  std::printf("model         %s (%s)\n", m.architecture().c_str(), m.format().c_str());
  std::printf("parameters    %lld (stored %s, served fp32)\n", static_cast<long long>(m.parameters()),
              m.stored_dtype().c_str());
  std::printf("vocabulary    %lld, context %lld\n", static_cast<long long>(m.vocab_size()),
              static_cast<long long>(m.context()));
  std::printf("content hash  %s (tokenizer %s)\n", m.content_hash().c_str(), m.tokenizer_hash().c_str());
  std::printf("modes         %s\n", modes.dump().c_str());
  if (info->retro_chunk_tokens() > 0) {
    std::printf("RETRO chunks  %lld tokens\n", static_cast<long long>(info->retro_chunk_tokens()));
  }
  return 0;
}

}  // namespace

json ModelJson(const rag::v1::ModelIdentity& m) {
  return {{"format", m.format()},
          {"architecture", m.architecture()},
          {"parameters", m.parameters()},
          {"stored_dtype", m.stored_dtype()},
          {"content_hash", m.content_hash()},
          {"tokenizer_hash", m.tokenizer_hash()},
          {"vocab_size", m.vocab_size()},
          {"context", m.context()}};
}

Command AddInfoCommand(CLI::App* app) {
  auto a = std::make_shared<InfoArgs>();
  auto* cmd = app->add_subcommand("info", "what a model (or server) is: architecture, parameters, hashes, modes");
  AddTargetOptions(cmd, &a->target, true);
  cmd->add_flag("--json", a->json_out, "print JSON");
  return {cmd, [a] { return RunInfo(*a); }};
}

}  // namespace rag::cli

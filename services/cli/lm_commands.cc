#include "services/cli/lm_commands.h"

#include <cstdio>
#include <iostream>

#include "lm/generator.h"
#include "services/engine.h"

namespace rag::cli {
namespace {

struct ScoreArgs {
  TargetArgs target;
  KnnArgs knn;
  std::string text, text_file, mode = kLmMode, exclude_doc_id;
  int prompt_bytes = 0;
  bool json_out = false, components = false;
};

int RunScore(const ScoreArgs& a) {
  const TargetArgs& target = a.target;
  const std::string& mode = a.mode;
  const KnnArgs& knn = a.knn;
  const bool json_out = a.json_out;
  auto text = TextArg(a.text, a.text_file, "--text", !target.server.empty());
  if (!text.ok()) return Fail(text.status());
  if (text->empty()) return Fail(absl::InvalidArgumentError("--text is empty: nothing to score"));
  auto backend = OpenTarget(target, false);
  if (!backend.ok()) return Fail(backend.status());
  rag::v1::ScoreRequest req;
  req.set_text(*text);
  req.set_mode(mode);
  req.set_per_token(json_out);
  req.set_prompt_bytes(a.prompt_bytes);
  req.set_exclude_doc_id(a.exclude_doc_id);
  req.set_components(a.components);
  SetKnn(knn, &req);
  auto r = (*backend)->Score(req);
  if (!r.ok()) return Fail(r.status());
  if (json_out) {
    json per_token = json::array();
    for (int i = 0; i < r->token_scores_size(); ++i) {
      const auto& t = r->token_scores(i);
      json row = {{"token", t.id()}, {"text", rag::ToValidUtf8(t.piece())}, {"logprob", t.logprob()}};
      // The components the mode returned (null is -inf: JSON has no infinity).
      if (i < r->lm_logprobs_size()) row["lm_logprob"] = r->lm_logprobs(i);
      if (i < r->knn_logprobs_size()) row["knn_logprob"] = r->knn_logprobs(i);
      if (i < r->infgram_logprobs_size()) {
        row["infgram_logprob"] = r->infgram_logprobs(i);
        row["infgram_suffix_tokens"] = r->infgram_suffix_tokens(i);
        row["infgram_sparse"] = r->infgram_sparse(i);
      }
      per_token.push_back(std::move(row));
    }
    PrintJson({{"mode", mode},
               {"tokens", r->tokens()},
               {"nll", r->nll()},
               {"perplexity", r->perplexity()},
               {"retrievals", r->retrievals()},
               {"token_logprobs", per_token}});
  } else {
    std::printf("tokens %lld  nll %.4f  perplexity %.2f\n", static_cast<long long>(r->tokens()), r->nll(),
                r->perplexity());
  }
  return 0;
}

struct GenerateArgs {
  TargetArgs target;
  KnnArgs knn;
  std::string prompt, prompt_file, mode = kLmMode, exclude_doc_id;
  rag::lm::SamplingOptions sampling;
  bool json_out = false, show_neighbours = false;
};

int RunGenerate(GenerateArgs a) {
  auto prompt = TextArg(a.prompt, a.prompt_file, "--prompt", !a.target.server.empty());
  if (!prompt.ok()) return Fail(prompt.status());
  auto backend = OpenTarget(a.target, false);
  if (!backend.ok()) return Fail(backend.status());
  rag::v1::GenerateRequest req;
  req.set_prompt(*prompt);
  req.set_mode(a.mode);
  req.set_exclude_doc_id(a.exclude_doc_id);
  if (a.sampling.max_tokens < 1 || a.sampling.max_tokens > (1 << 30)) {
    return Fail(absl::InvalidArgumentError("--max-tokens must be >= 1"));
  }
  req.set_max_tokens(static_cast<int32_t>(a.sampling.max_tokens));
  req.mutable_sampling()->set_temperature(static_cast<float>(a.sampling.temperature));
  req.mutable_sampling()->set_top_k(static_cast<int32_t>(a.sampling.top_k));
  req.mutable_sampling()->set_top_p(static_cast<float>(a.sampling.top_p));
  req.mutable_sampling()->set_seed(a.sampling.seed);
  req.mutable_sampling()->set_repetition_penalty(static_cast<float>(a.sampling.repetition_penalty));
  req.mutable_sampling()->set_no_repeat_ngram_size(static_cast<int32_t>(a.sampling.no_repeat_ngram_size));
  SetKnn(a.knn, &req);
  json token_ids = json::array();
  auto done = (*backend)->Generate(req, [&](const rag::v1::GenerateResponse& token) {
    token_ids.push_back(token.token_id());
    if (!a.json_out && !token.end_of_text()) std::cout << token.piece() << std::flush;
    return g_stop.load() == false;
  });
  if (!done.ok()) return Fail(done.status());
  json retrievals = json::array();
  for (const auto& rv : done->retrievals()) {
    json nbs = json::array(), doc_ids = json::array();
    for (const auto& nb : rv.neighbours()) {
      // ralm puts the chunk and its continuation in front.
      nbs.push_back(IsMode(a.mode, services::Mode::kRalm) ? nb.text() + nb.continuation() : nb.text());
      doc_ids.push_back(nb.doc_id());
    }
    json r = {{"chunk", rv.chunk()}, {"neighbours", nbs}};
    if (IsMode(a.mode, services::Mode::kRalm)) {  // RETRO's sets carry neither
      r["query"] = rv.query();
      r["doc_ids"] = doc_ids;
    }
    retrievals.push_back(r);
  }
  if (a.json_out) {
    json j = {{"mode", a.mode},
              {"prompt", *prompt},
              {"text", done->text()},
              {"tokens", done->tokens()},
              {"token_ids", token_ids}};
    if (IsMode(a.mode, services::Mode::kRetro) || IsMode(a.mode, services::Mode::kRalm)) j["retrievals"] = retrievals;
    PrintJson(j);
  } else {
    std::cout << std::endl;
    if (a.show_neighbours) {
      for (const auto& rv : retrievals) {
        std::printf(IsMode(a.mode, services::Mode::kRalm) ? "  [in front of block %lld]\n" : "  [retrieved with chunk %lld]\n",
                    static_cast<long long>(rv["chunk"].get<int64_t>()));
        for (const auto& nb : rv["neighbours"]) {
          std::string t = nb.get<std::string>();
          for (char& ch : t)
            if (ch == '\n') ch = ' ';
          if (t.size() > 160) t = t.substr(0, 160) + "...";
          std::printf("    - %s\n", t.c_str());
        }
      }
    }
  }
  return 0;
}

struct NextTokenArgs {
  TargetArgs target;
  KnnArgs knn;
  std::string text, text_file, mode = kLmMode;
  int top_n = rag::services::kDefaultTopN;
  bool json_out = false;
};

int RunNextToken(const NextTokenArgs& a) {
  auto text = TextArg(a.text, a.text_file, "--text", !a.target.server.empty());
  if (!text.ok()) return Fail(text.status());
  auto backend = OpenTarget(a.target, false);
  if (!backend.ok()) return Fail(backend.status());
  rag::v1::NextTokenRequest req;
  req.set_text(*text);
  req.set_mode(a.mode);
  req.set_top_n(a.top_n);
  SetKnn(a.knn, &req);
  auto r = (*backend)->NextToken(req);
  if (!r.ok()) return Fail(r.status());
  json tokens = json::array();
  for (const auto& t : r->tokens()) {
    tokens.push_back({{"token", t.id()},
                      {"text", rag::ToValidUtf8(t.piece())},
                      {"probability", t.probability()},
                      {"logprob", t.logprob()}});
  }
  if (a.json_out) {
    PrintJson({{"mode", r->mode()}, {"tokens", tokens}});
  } else {
    for (const auto& t : tokens) {
      std::printf("%8.4f  %s\n", t["probability"].get<double>(), json(t["text"]).dump().c_str());
    }
  }
  return 0;
}

}  // namespace

Command AddScoreCommand(CLI::App* app) {
  auto a = std::make_shared<ScoreArgs>();
  auto* cmd = app->add_subcommand("score", "log-likelihood and perplexity of a text");
  AddTargetOptions(cmd, &a->target, true);
  cmd->add_option("--text", a->text, "text to score");
  cmd->add_option("--text-file", a->text_file, "file whose bytes are the text");
  cmd->add_option("--mode", a->mode, kModesHelp)->capture_default_str();
  cmd->add_flag("--json", a->json_out, "JSON with per-token log-probs");
  cmd->add_flag("--components", a->components,
                "with --json, per token the mode's parts: knnlm lm_logprob and knn_logprob; infgram lm_logprob, "
                "infgram_logprob, infgram_suffix_tokens and infgram_sparse (a null log-prob is -inf)");
  cmd->add_option("--exclude-doc-id", a->exclude_doc_id,
                  "knnlm, retro, ralm, infgram: retrieve nothing from (count nothing in) this document of the index");
  cmd->add_option("--prompt-bytes", a->prompt_bytes,
                  "retro: the text's first N bytes are a prompt laid out to end a chunk, so what follows "
                  "attends to the neighbours retrieved with it (as probes are scored)");
  AddKnnOptions(cmd, &a->knn, "--temperature");
  AddLeakageOption(cmd, &a->knn);
  return {cmd, [a] { return RunScore(*a); }};
}

Command AddGenerateCommand(CLI::App* app) {
  auto a = std::make_shared<GenerateArgs>();
  a->sampling.max_tokens = 40;
  auto* cmd = app->add_subcommand("generate", "continue a prompt");
  AddTargetOptions(cmd, &a->target, true);
  cmd->add_option("--prompt", a->prompt, "prompt text");
  cmd->add_option("--prompt-file", a->prompt_file, "file whose bytes are the prompt");
  cmd->add_option("--mode", a->mode, kModesHelp)->capture_default_str();
  cmd->add_option("--max-tokens", a->sampling.max_tokens, "tokens to generate")->capture_default_str();
  cmd->add_option("--temperature", a->sampling.temperature, "0 = greedy")->capture_default_str();
  cmd->add_option("--top-k", a->sampling.top_k, "sample from the k most likely (0 = all)")->capture_default_str();
  cmd->add_option("--top-p", a->sampling.top_p, "nucleus mass")->capture_default_str();
  cmd->add_option("--seed", a->sampling.seed, "sampling seed")->capture_default_str();
  cmd->add_option("--repetition-penalty", a->sampling.repetition_penalty,
                  "divide positive / multiply negative scores of tokens already in the prompt or output "
                  "(Hugging Face's repetition_penalty; 1 = off)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--no-repeat-ngram-size", a->sampling.no_repeat_ngram_size,
                  "never complete an n-gram already in the prompt or output (Hugging Face's "
                  "no_repeat_ngram_size; 0 = off)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_flag("--json", a->json_out, "print JSON");
  cmd->add_flag("--show-neighbours", a->show_neighbours,
                "retro: print the neighbours retrieved at each chunk; ralm: the passages put in front");
  cmd->add_option("--exclude-doc-id", a->exclude_doc_id,
                  "knnlm, retro, ralm: retrieve nothing from (infgram: count nothing in) this document of the index");
  AddKnnOptions(cmd, &a->knn, "--knn-temperature");
  return {cmd, [a] { return RunGenerate(*a); }};
}

Command AddNextTokenCommand(CLI::App* app) {
  auto a = std::make_shared<NextTokenArgs>();
  auto* cmd = app->add_subcommand("next-token", "the most likely next tokens after a text");
  AddTargetOptions(cmd, &a->target, true);
  cmd->add_option("--text", a->text, "context text (may be empty)");
  cmd->add_option("--text-file", a->text_file, "file whose bytes are the context");
  cmd->add_option("--top-n", a->top_n, "tokens to show")->capture_default_str();
  cmd->add_option("--mode", a->mode, kModesHelp)->capture_default_str();
  cmd->add_flag("--json", a->json_out, "print JSON");
  AddKnnOptions(cmd, &a->knn, "--temperature");
  return {cmd, [a] { return RunNextToken(*a); }};
}

}  // namespace rag::cli

#include "services/cli/tokenize.h"

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "common/status.h"
#include "common/utf8.h"
#include "index_builder/corpus_reader.h"
#include "lm/hf/pretrained.h"

namespace rag::cli {
namespace fs = std::filesystem;

namespace {

// A tokenizer.json of either kind: ours names its format, Hugging Face's
// has none (its "model" holds the BPE).
absl::StatusOr<lm::Tokenizer> LoadTokenizerFile(const std::string& path) {
  RAG_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  const json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_object() && j.contains("format")) {
    auto tok = lm::Tokenizer::FromJson(text);
    if (!tok.ok()) return Annotate(tok.status(), "reading " + path);
    return tok;
  }
  return lm::Tokenizer::LoadHfTokenizerJson(path);  // its errors name the file
}

absl::StatusOr<lm::Tokenizer> LoadTokenizerDir(const std::string& dir) {
  const fs::path d(dir);
  if (fs::exists(d / "tokenizer.json")) return LoadTokenizerFile((d / "tokenizer.json").string());
  if (fs::exists(d / "vocab.json") || fs::exists(d / "merges.txt")) return lm::Tokenizer::LoadHfDirectory(dir);
  // GPT-2's files under OpenAI's own names (data/gpt2/ from prepare_corpus.sh).
  if (fs::exists(d / "encoder.json") || fs::exists(d / "vocab.bpe")) {
    return lm::Tokenizer::LoadGpt2((d / "encoder.json").string(), (d / "vocab.bpe").string());
  }
  return absl::NotFoundError("'" + dir +
                             "' holds no tokenizer (looked for tokenizer.json, vocab.json + merges.txt, "
                             "encoder.json + vocab.bpe)");
}

// The ids of a --decode text: integers separated by spaces, commas or
// newlines; brackets are ignored, so `--json`'s "ids" array reads back.
absl::StatusOr<std::vector<lm::TokenId>> ParseIds(const std::string& text) {
  std::vector<lm::TokenId> ids;
  for (absl::string_view word : absl::StrSplit(text, absl::ByAnyChar(" \t\r\n,[]"), absl::SkipEmpty())) {
    lm::TokenId id = 0;
    if (!absl::SimpleAtoi(word, &id)) {
      return absl::InvalidArgumentError("--decode: '" + std::string(word) + "' is not a token id");
    }
    ids.push_back(id);
  }
  return ids;
}

struct TokenizeArgs {
  std::string model, tokenizer, text, text_file, corpus, out;
  bool have_text = false;  // --text given, possibly empty
  bool decode = false, json_out = false;
};

int RunDecode(const lm::Tokenizer& tok, const std::string& input, bool json_out) {
  auto ids = ParseIds(input);
  if (!ids.ok()) return Fail(ids.status());
  auto text = tok.Decode(*ids);
  if (!text.ok()) return Fail(Annotate(text.status(), "--decode"));
  if (json_out) {
    PrintJson({{"tokens", ids->size()}, {"text", ToValidUtf8(*text)}});
  } else {
    // The bytes as they are (a token may hold part of a UTF-8 character).
    std::fwrite(text->data(), 1, text->size(), stdout);
    std::fputc('\n', stdout);
  }
  return 0;
}

int RunEncodeText(const lm::Tokenizer& tok, const std::string& text, bool json_out) {
  const std::vector<lm::TokenId> ids = tok.Encode(text);
  if (json_out) {
    json pieces = json::array();
    for (lm::TokenId id : ids) pieces.push_back(ToValidUtf8(tok.TokenBytes(id)));
    PrintJson({{"tokens", ids.size()}, {"ids", ids}, {"pieces", pieces}});
  } else {
    std::string line;
    for (lm::TokenId id : ids) line += (line.empty() ? "" : " ") + std::to_string(id);
    std::printf("%s\n", line.c_str());
  }
  return 0;
}

int RunEncodeCorpus(const lm::Tokenizer& tok, const TokenizeArgs& a) {
  index_builder::CorpusStats stats;
  auto docs = index_builder::ReadCorpus(a.corpus, &stats);
  if (!docs.ok()) return Fail(docs.status());
  // With --out the lines are gathered and written atomically: a killed run
  // leaves no file that looks complete.
  std::string lines;
  int64_t tokens = 0;
  for (const Document& doc : *docs) {
    const std::vector<lm::TokenId> ids = tok.Encode(doc.text);
    tokens += static_cast<int64_t>(ids.size());
    const std::string line =
        json{{"id", doc.id}, {"ids", ids}}.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
    if (a.out.empty()) {
      std::cout << line;
    } else {
      lines += line;
    }
  }
  if (a.out.empty()) {
    std::cout.flush();
  } else if (auto s = WriteFileAtomic(a.out, lines); !s.ok()) {
    return Fail(Annotate(s, "writing --out"));
  }
  const json summary = {{"documents", docs->size()},
                        {"tokens", tokens},
                        {"bytes", stats.bytes},
                        {"tokenizer_hash", tok.Hash()},
                        {"out", a.out}};
  if (!a.out.empty() && a.json_out) {
    PrintJson(summary);
  } else {
    // stdout holds the documents' lines (or --out does): the summary is a log line.
    std::fprintf(stderr, "tokenize: %zu documents, %lld tokens, %zu bytes (tokenizer %s)%s%s\n", docs->size(),
                 static_cast<long long>(tokens), stats.bytes, tok.Hash().c_str(), a.out.empty() ? "" : " -> ",
                 a.out.c_str());
  }
  return 0;
}

int RunTokenize(const TokenizeArgs& a) {
  const int inputs = (a.have_text ? 1 : 0) + (a.text_file.empty() ? 0 : 1) + (a.corpus.empty() ? 0 : 1);
  if (inputs != 1) return Fail(absl::InvalidArgumentError("give one of --text, --text-file or --corpus"));
  if (a.decode && !a.corpus.empty()) {
    return Fail(absl::InvalidArgumentError("--decode reads ids from --text or --text-file, not --corpus"));
  }
  if (!a.out.empty() && a.corpus.empty()) return Fail(absl::InvalidArgumentError("--out goes with --corpus"));
  auto tok = LoadTokenizerArg(a.model, a.tokenizer);
  if (!tok.ok()) return Fail(tok.status());
  if (!a.corpus.empty()) return RunEncodeCorpus(*tok, a);
  // Any bytes: Encode never fails, and --text-file may hold invalid UTF-8.
  auto text = TextArg(a.text, a.text_file, "--text");
  if (!text.ok()) return Fail(text.status());
  return a.decode ? RunDecode(*tok, *text, a.json_out) : RunEncodeText(*tok, *text, a.json_out);
}

}  // namespace

absl::StatusOr<lm::Tokenizer> LoadTokenizerArg(const std::string& model_dir, const std::string& path) {
  if (model_dir.empty() == path.empty()) {
    return absl::InvalidArgumentError("give either --model MODEL_DIR or --tokenizer PATH");
  }
  if (!path.empty()) {
    if (!fs::exists(path)) return absl::NotFoundError("--tokenizer '" + path + "' does not exist");
    return fs::is_directory(path) ? LoadTokenizerDir(path) : LoadTokenizerFile(path);
  }
  if (!fs::is_directory(model_dir)) return absl::NotFoundError("model directory '" + model_dir + "' does not exist");
  if (lm::hf::IsHfModelDir(model_dir)) return lm::Tokenizer::LoadHfDirectory(model_dir);
  auto tok = lm::Tokenizer::Load((fs::path(model_dir) / "tokenizer.json").string());
  if (!tok.ok()) return Annotate(tok.status(), "the tokenizer of model '" + model_dir + "'");
  return tok;
}

Command AddTokenizeCommand(CLI::App* app) {
  auto a = std::make_shared<TokenizeArgs>();
  auto* cmd = app->add_subcommand("tokenize", "token ids of a text or a corpus (or --decode ids), tokenizer only");
  cmd->add_option("--model", a->model, "model directory (ours or Hugging Face's); only its tokenizer is read");
  cmd->add_option("--tokenizer", a->tokenizer,
                  "a tokenizer.json (ours or Hugging Face's), or a directory with tokenizer.json, "
                  "vocab.json + merges.txt, or encoder.json + vocab.bpe");
  auto* text_opt = cmd->add_option("--text", a->text, "text to tokenize (may be empty)");
  cmd->add_option("--text-file", a->text_file, "file whose bytes are the text");
  cmd->add_option("--corpus", a->corpus, "corpus (.jsonl, .txt or a directory): one {\"id\", \"ids\"} line a document");
  cmd->add_option("--out", a->out, "with --corpus: write the lines to this file instead of stdout");
  cmd->add_flag("--decode", a->decode, "the text is token ids (spaces or commas between them): print their text");
  cmd->add_flag("--json", a->json_out, "print JSON (--text: ids and pieces; --corpus --out: a summary)");
  return {cmd, [a, text_opt] {
            a->have_text = text_opt->count() > 0;
            return RunTokenize(*a);
          }};
}

}  // namespace rag::cli

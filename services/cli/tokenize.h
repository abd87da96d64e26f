// `rag tokenize`: a text or a whole corpus through a model's tokenizer (ours
// or a Hugging Face one), and ids back to text. Loads only the tokenizer,
// never the weights.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "lm/tokenizer.h"
#include "services/cli/common.h"

namespace rag::cli {

// The tokenizer of `--model model_dir` or `--tokenizer path` (exactly one
// non-empty). A model directory: a Hugging Face one (config.json naming a
// model_type) through Tokenizer::LoadHfDirectory, else ours, DIR/tokenizer.json.
// A path: a tokenizer.json, ours ("format": "rag-byte-bpe") or Hugging
// Face's; or a directory holding tokenizer.json, vocab.json + merges.txt, or
// GPT-2's own encoder.json + vocab.bpe. Errors: InvalidArgument for both or
// neither flag, NotFound naming what was looked for, the loaders' errors
// annotated with the path.
absl::StatusOr<lm::Tokenizer> LoadTokenizerArg(const std::string& model_dir, const std::string& path);

Command AddTokenizeCommand(CLI::App* app);

}  // namespace rag::cli

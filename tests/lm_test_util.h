// A tiny untrained LanguageModel (300-token tokenizer trained on a seeded
// synthetic corpus, `tiny` preset) for suites that need a real model
// directory's objects but no training. Header-only.
#pragma once

#include <gtest/gtest.h>

#include <memory>

#include "lm/language_model.h"
#include "tests/test_util.h"

namespace rag::testing {

inline std::unique_ptr<lm::LanguageModel> MakeTinyLanguageModel(double dropout = 0.0) {
  std::vector<std::string> texts;
  for (const auto& d : MakeCorpus(4, 1)) texts.push_back(d.text);
  lm::TokenizerTrainOptions topts;
  topts.vocab_size = 300;
  auto tok = lm::Tokenizer::Train(texts, topts);
  EXPECT_TRUE(tok.ok()) << tok.status();
  lm::TransformerConfig config = *lm::TransformerConfig::Preset("tiny");
  config.vocab_size = tok->vocab_size();
  config.dropout = dropout;
  torch::manual_seed(11);
  return std::make_unique<lm::LanguageModel>(config, std::move(*tok), lm::TransformerLM(config));
}

// A tiny untrained LanguageModel in eval mode whose 300-token tokenizer is
// trained on `docs` and whose weights come from torch seed `seed`: what the
// index, server and kNN-LM suites build their indexes with.
inline std::unique_ptr<lm::LanguageModel> MakeTinyLanguageModelFor(const std::vector<Document>& docs, uint64_t seed) {
  std::vector<std::string> texts;
  for (const auto& d : docs) texts.push_back(d.text);
  lm::TokenizerTrainOptions topts;
  topts.vocab_size = 300;
  auto tok = lm::Tokenizer::Train(texts, topts);
  EXPECT_TRUE(tok.ok()) << tok.status();
  lm::TransformerConfig config = *lm::TransformerConfig::Preset("tiny");
  config.vocab_size = tok->vocab_size();
  torch::manual_seed(seed);
  auto model = std::make_unique<lm::LanguageModel>(config, std::move(*tok), lm::TransformerLM(config));
  model->module()->eval();
  return model;
}

}  // namespace rag::testing

// `rag train --arch retro` as a library call: open the base LM and the index
// it built, precompute (or reuse the cached) neighbours of every indexed
// chunk with its own document excluded, split the index's documents by the
// base LM's split (a downloaded base has none: one is made and recorded),
// train the RetroLM (retrofitting: the base LM's decoder
// frozen, encoder + CCA trained; or all weights), and save a RETRO model
// directory (lm/retro_model.h). Resumable from the checkpoint in the output
// directory.
#pragma once

#include <atomic>
#include <string>
#include <unordered_set>

#include "absl/status/statusor.h"
#include "lm/retro_trainer.h"
#include "retriever/retriever.h"

namespace rag::index_builder {

struct RetroTrainJob {
  std::string out_dir;
  std::string index_dir;              // built with the base LM's embedder
  std::string base_dir;               // the trained LM (`--init`); its tokenizer, split and embedder
  std::string config_overrides_json;  // JSON object applied over the RETRO defaults; "" = none
  lm::RetroTrainerOptions trainer;    // freeze_decoder = retrofitting
  int nprobe = retriever::kDefaultNprobe;  // IVF lists when precomputing neighbours
  // How every training chunk's neighbours are found: dense or bm25
  // (RetroNeighbourOptions::method). Evaluate with the same search
  // (`--search-method`). Default: "dense"
  std::string neighbour_search = "dense";
  // RetroNeighbourOptions::own_document_filter: 0 = RETRO's rule (own
  // document excluded), > 0 = own document allowed, neighbours sharing a run
  // of this many tokens with the predicted chunk dropped. Default: 0
  int64_t own_document_filter = 0;
  // Ids of the index's documents to use (split by the base LM's split); empty = all.
  std::unordered_set<std::string> only_documents;
  // Ids of documents never trained on nor retrieved for prompt windows (e.g.
  // the facts a probe set asks about, so RETRO cannot learn them).
  std::unordered_set<std::string> exclude_documents;
  // Prompt windows (lm::RetroPromptWindows) drawn per document: a prompt of
  // 2..m tokens (from the start of documents of up to 2m tokens, from a
  // random token of longer ones) and its neighbours, found with the prompt
  // alone. Used when
  // trainer.prompt_windows > 0. Default: 4
  int prompts_per_document = 4;
  std::string prompt_search = "bm25";  // how prompt neighbours are found: dense or bm25
  // Fraction of prompts whose neighbours may come from their own document,
  // where the continuation stands as it will be predicted (the exact repeat
  // Brown never has across documents): an experiment in teaching the
  // cross-attention to copy, against RETRO's rule; docs/results.md found no
  // gain from 0.5 at 300 steps. Default: 0 (RETRO's rule)
  double prompt_own_document = 0.0;
  // When the base LM has no split.json (a downloaded model, not trained
  // here): the fraction of the index's documents held out of RETRO's
  // training, by seeded id hash (lm::SplitDocuments with trainer.seed); the
  // split is written to out_dir/split.json for the evaluations. Default: 0.05
  double validation_fraction = 0.05;
  bool resume = false;                // continue from out_dir/checkpoint.pt
  bool overwrite = false;             // start over even if out_dir holds a run
};

struct RetroTrainSummary {
  int64_t steps = 0;
  size_t train_documents = 0;
  size_t validation_documents = 0;
  int64_t train_chunks = 0;
  double validation_loss = 0;          // nats/token, neighbours on
  double validation_loss_no_retrieval = 0;  // the same windows, neighbours off
  size_t train_prompt_windows = 0;
  size_t validation_prompt_windows = 0;  // of validation documents and 1 in 20 training documents
  double prompt_loss = 0;                // nats/token over validation prompt continuations, neighbours on
  double prompt_loss_no_retrieval = 0;   // the same, neighbours off
  double seconds = 0;
};

// The trainer defaults for retrofitting a `preset`-sized LM (steps, batch,
// learning rate).
lm::RetroTrainerOptions RetroPresetOptions(const std::string& preset);

// Runs the job. Cancelled when `*stop` was raised (a checkpoint is saved);
// FailedPrecondition when the index was built by another model, or out_dir
// already holds a run and neither resume nor overwrite is set.
absl::StatusOr<RetroTrainSummary> TrainRetro(const RetroTrainJob& job, const std::atomic<bool>* stop = nullptr);

}  // namespace rag::index_builder

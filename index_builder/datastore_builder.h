// The kNN-LM datastore stage of `rag build --datastore`: one key per corpus
// token (the hidden state that feeds the output layer when the model
// predicts that token, from the same sliding windows the scorer uses), its
// value the token id, and the index of its document in the chunk store so
// a scored document's own keys can be excluded. Resumable: rows already
// durable are not recomputed (a document's keys are a pure function of the
// model and its tokens, so a resumed build ends identical).
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/document.h"
#include "lm/language_model.h"
#include "retriever/datastore.h"

namespace rag::index_builder {

struct DatastoreBuildOptions {
  std::string dir;              // the datastore directory (created)
  std::string index_factory;    // FAISS factory over the keys; "" = chosen from the key count
  uint64_t seed = 1234;         // document order and FAISS training sample. Default: 1234
  int64_t sync_every_tokens = 1 << 16;  // rows between durable checkpoints. Default: 65536
  bool show_progress = true;
  // A trained, empty key index to add the keys to instead of training one
  // (DatastoreFinishOptions::trained_index). Default: "" (train)
  std::string trained_index;
};

// Builds the datastore over the documents `selected` indexes into
// `documents`; doc_index[i] is the chunk-store index of
// documents[selected[i]]. Keys are written document by document in a
// random order seeded by options.seed (docs.i32 says which key is whose),
// and the FAISS index is trained and filled in the background meanwhile.
// Cancelled when `*stop` is raised (rerun to resume).
absl::StatusOr<retriever::DatastoreInfo> BuildDatastore(const std::vector<Document>& documents,
                                                        const std::vector<size_t>& selected,
                                                        const std::vector<int32_t>& doc_index,
                                                        lm::LanguageModel& model,
                                                        const DatastoreBuildOptions& options,
                                                        const std::atomic<bool>* stop = nullptr);

}  // namespace rag::index_builder

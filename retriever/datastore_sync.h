// Keeps an index's kNN-LM datastore in step with its chunk store: gives it
// the keys of documents added to the index after the build (IndexDir opens
// it, checked against the manifest). Functions over the public
// Datastore / ChunkStore API; the keys themselves come from the caller (the
// LM's hidden states), so this file needs no model. Thread-compatible: the
// caller serialises calls that add keys for the same datastore.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "retriever/chunk_store.h"
#include "retriever/datastore.h"
#include "retriever/manifest.h"

namespace rag::retriever {

// Computes the datastore keys of a document's tokens: [n, dim] float32,
// row-major, row i the hidden state that predicts tokens[i] (as the builder
// computes them).
using DocumentKeysFn = std::function<absl::StatusOr<std::vector<float>>(const std::vector<Token>& tokens)>;

// Gives `datastore` the keys of stored document `doc_id` unless it has them
// (durable when `durable`, see Datastore::AddDocumentKeys). A document
// without tokens adds nothing. NotFound when `store` lacks the document.
absl::Status AddDatastoreKeys(const ChunkStore& store, Datastore* datastore, const std::string& doc_id,
                              const DocumentKeysFn& keys, bool durable);

// At open: the keys of every document added after the build (those after
// manifest.documents - manifest.documents_added in `store`) that
// `datastore` lacks: a crash between the two appends, or a read-only
// server, which keeps them in memory only. Logs the count to stderr.
absl::Status CatchUpDatastore(const Manifest& manifest, const ChunkStore& store, Datastore* datastore,
                              const DocumentKeysFn& keys, bool durable);

}  // namespace rag::retriever

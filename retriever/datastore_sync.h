// Keeps an index's kNN-LM datastore in step with its chunk store: opens it
// only when it is the one the manifest records, and gives it the keys of
// documents added to the index after the build. Functions over the public
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

// Opens INDEX_DIR/datastore when it exists: null when it does not.
// FailedPrecondition when one of its files is not the one `manifest`
// records (a datastore copied in from another index: another model's hidden
// states) or its keys are not `dim` wide; Datastore::Open's errors
// annotated with the index directory. Documents of added.log that `store`
// does not hold are left out.
absl::StatusOr<std::unique_ptr<Datastore>> OpenIndexDatastore(const std::string& index_dir, const Manifest& manifest,
                                                              const ChunkStore& store, int dim);

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

// kNN-LM datastore (Khandelwal et al. 2020): N (key, value, doc) triples,
// key = an LM hidden state (D floats, stored as fp16), value = the next token
// id, doc = the document the position came from. DatastoreWriter builds one,
// Datastore opens it read-only and searches it. Datastore is thread-safe
// (all methods are const); DatastoreWriter is thread-compatible.
//
// Directory layout (format version 1):
//   keys.f16     header, then N x D IEEE binary16 keys, row-major
//   values.i32   header, then N int32 next-token ids
//   docs.i32     header, then N int32 document indices
//   keys.faiss   VectorIndex file over the keys (as float32); written last by
//                DatastoreWriter::Finish, so a directory without it is an
//                unfinished datastore
//
// The three data files share one 64-byte header. Integers little-endian,
// offsets in bytes:
//    0  char[8]  magic: "RAGKEYS1" (keys.f16), "RAGVALS1" (values.i32),
//                "RAGDOCS1" (docs.i32)
//    8  u32      format version, 1
//   12  u32      row width in elements: D for keys.f16, 1 for the others
//   16  i64      N, rows
//   24  u64      XXH3-64 of the payload (bytes [64, end)); 0 while the
//                datastore is being written
//   32  u64      XXH3-64 of header bytes [0, 32)
//   40  24 zero bytes (reserved)
//   64  payload: N x width elements (fp16 for keys, int32 otherwise); the
//       file is exactly 64 + N * width * element-size bytes
// The payload starts at a 64-byte offset so keys.f16 is memory-mapped and
// read in place. While the datastore is being written, N is the number of
// rows made durable by the last DatastoreWriter::Sync (a checkpoint), and
// any bytes after them are discarded by a resumed writer.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "retriever/vector_index.h"

namespace rag::retriever {

inline constexpr int kDatastoreFormatVersion = 1;
inline constexpr char kDatastoreKeysFile[] = "keys.f16";
inline constexpr char kDatastoreValuesFile[] = "values.i32";
inline constexpr char kDatastoreDocsFile[] = "docs.i32";
inline constexpr char kDatastoreIndexFile[] = "keys.faiss";
// Keys of documents added to a live index, one checksummed record per
// document (Datastore::AddDocumentKeys). Not in the manifest's checksums: it
// grows while the index is served.
inline constexpr char kDatastoreAddedFile[] = "added.log";
// Bytes before the payload in keys.f16, values.i32 and docs.i32.
inline constexpr int64_t kDatastoreHeaderBytes = 64;
// Largest key dimension accepted (a hidden state is at most a few thousand).
inline constexpr int kDatastoreMaxDim = 65536;

// IEEE 754 binary32 -> binary16, rounding to nearest, ties to even. Values
// of magnitude >= 65520 become +-inf, values below 2^-25 become +-0,
// subnormal halves are produced where they apply, NaN stays a (quiet) NaN.
uint16_t FloatToHalf(float x);
// IEEE 754 binary16 -> binary32. Exact for every half (subnormals, +-inf,
// NaN included).
float HalfToFloat(uint16_t h);

// One search result.
struct DatastoreNeighbour {
  int64_t key_id = 0;  // row of the datastore, 0 .. size() - 1
  int32_t value = 0;   // the next-token id stored with the key
  int32_t doc = 0;     // the document the key came from
  float distance = 0;  // squared L2 between the query and the key
};

// What DatastoreWriter::Finish built.
struct DatastoreInfo {
  int64_t rows = 0;
  int dim = 0;
  std::string requested_factory;  // "" = the default for the size
  std::string index_factory;      // what keys.faiss holds
  std::string factory_note;       // why it differs from the request, if it does
  int64_t train_rows = 0;         // keys in the training sample (0 for Flat)
  double index_seconds = 0;       // Finish's wall time: FAISS training, adding, saving (0 if not run)
  // File name (kDatastore*File) -> XXH3-64 of the whole file, 16 hex digits,
  // as in Manifest::checksums.
  std::map<std::string, std::string> checksums;
};

struct DatastoreFinishOptions {
  // FAISS factory for keys.faiss; "" picks VectorIndex::DefaultFactory(N, D).
  // Either way it goes through VectorIndex::AdaptFactory, so a factory too
  // big for the data is shrunk (the note says how). Default: ""
  std::string factory;
  // Seeds the choice of training rows. Default: 1234
  uint64_t seed = 1234;
  // Most keys in the training sample; 0 = max(64 * nlist, 20000).
  // Default: 0
  int64_t max_train = 0;
  // Keys converted to float32 and added to the index at a time; 0 = as many
  // as fit in 64 MiB. Bounds Finish's memory besides the training sample
  // and the index itself. Default: 0
  int64_t batch_rows = 0;
  // Progress lines (count, rate, ETA) on stderr. Default: false
  bool show_progress = false;
  // A trained, empty key index (a VectorIndex file: `rag build --train-only
  // --datastore`, shared by all shards) that the keys are added to, in
  // place of one trained here: `factory`, `seed` and `max_train` then play
  // no part, and its dim must be the datastore's (FailedPrecondition
  // otherwise, or when it is untrained or holds keys). Default: "" (train)
  std::string trained_index;
};

// The key index DatastoreWriter builds over `total` keys of `dim`
// dimensions, before training: options.factory (or
// VectorIndex::DefaultFactory(total, dim)) through VectorIndex::AdaptFactory,
// and how many keys its training sample holds (the datastore's own sample
// rule: 64 keys per IVF list, at least 20000, at most options.max_train
// when set; 0 when the index needs no training). Ignores
// options.trained_index. The one owner of these choices: DatastoreWriter
// and `rag build --train-only --datastore` both ask here.
struct DatastoreIndexPlan {
  std::unique_ptr<VectorIndex> index;
  FactoryChoice choice;
  int64_t sample_rows = 0;
};
absl::StatusOr<DatastoreIndexPlan> PlanDatastoreIndex(const DatastoreFinishOptions& options, int64_t total, int dim);

// Builds a datastore by appending rows in batches. Resumable: Sync makes the
// rows so far durable, and a writer created with resume = true goes on from
// the last Sync. Nothing is durable without Sync or Finish, and the
// destructor does not sync.
class DatastoreWriter {
 public:
  // Starts a datastore of `dim`-dimensional keys in `dir` (created if
  // missing). With resume = false the directory must hold no datastore
  // files (FailedPrecondition otherwise: remove them to start over). With
  // resume = true an unfinished datastore there is reopened: rows() is the
  // number of rows durable at its last Sync, and anything written after that
  // (a partial batch, a partial row) is truncated away; with no datastore
  // files there, it starts a new one. Resuming a finished datastore (one
  // with keys.faiss) is FailedPrecondition, a different dim
  // InvalidArgument, corrupt headers DataLoss. Resuming re-reads the stored
  // rows once to restore the running checksums.
  static absl::StatusOr<std::unique_ptr<DatastoreWriter>> Create(const std::string& dir, int dim, bool resume);
  ~DatastoreWriter();
  DatastoreWriter(const DatastoreWriter&) = delete;
  DatastoreWriter& operator=(const DatastoreWriter&) = delete;

  // Appends n rows: keys [n, dim] float32 row-major (stored as fp16),
  // values [n] and docs [n]. All-or-nothing for invalid input:
  // InvalidArgument (nothing written) for a non-finite key, a key component
  // whose magnitude fp16 cannot hold (>= 65520), or a negative value or doc.
  // FailedPrecondition after Finish or after an I/O error (the writer is
  // then unusable; resume from the last Sync with a new writer).
  absl::Status Append(const float* keys, const int32_t* values, const int32_t* docs, int64_t n);

  // A checkpoint: fsyncs the rows appended so far in the three files, then
  // records their count in the headers (and fsyncs again). A resumed writer
  // starts from the last successful Sync.
  absl::Status Sync();

  // Rows appended so far (durable or not).
  int64_t rows() const { return rows_; }
  int dim() const { return dim_; }
  const std::string& dir() const { return dir_; }

  // Overlaps building keys.faiss with the appending: a background thread,
  // at the lowest CPU priority so it only takes what the caller leaves idle,
  // trains the index once Sync has made the first rows durable and then adds
  // every synced row. `total_rows` is the row count the datastore will have
  // at Finish. The training sample is drawn (seeded) from the first
  // max(4 * sample, total_rows / 4) rows rather than from all of them, so
  // append in an order whose beginning represents the whole (e.g. documents
  // shuffled). Finish must then get the same options; it stops the thread
  // and completes whatever is left itself. The index is a pure function of
  // the rows, the options and total_rows, however the work was split, so an
  // interrupted and resumed build ends identical. FailedPrecondition after
  // Finish, after an error, or when already called; InvalidArgument for
  // bad options or total_rows < rows().
  absl::Status IndexInBackground(const DatastoreFinishOptions& options, int64_t total_rows);

  // One phrase on what the background indexing is doing ("training the
  // index", "1.2M keys indexed"); "" without IndexInBackground. Thread-safe.
  std::string IndexingStatus() const;

  // Completes the datastore: writes the payload checksums into the headers,
  // trains the index on a seeded sample of the stored keys (read back from
  // keys.f16, at most options.max_train of them), adds all keys in batches of
  // options.batch_rows (never all keys as float32 at once), and saves
  // keys.faiss atomically. The stored keys are re-read to build the index,
  // and DataLoss is returned if they no longer match the checksum. After
  // Finish (even a failed one) only a new writer can be used; a failed
  // Finish can be retried by resuming. InvalidArgument for a factory FAISS
  // cannot build for dim, or for options other than IndexInBackground's.
  absl::StatusOr<DatastoreInfo> Finish(const DatastoreFinishOptions& options = {});
  // Shorthand for Finish with those three options and the other defaults.
  absl::StatusOr<DatastoreInfo> Finish(const std::string& factory, uint64_t seed, bool show_progress);

  // Completes the datastore with a key index built elsewhere (`rag merge`:
  // the shards' keys.faiss merged), which must hold exactly rows() keys of
  // dim() dimensions in row order: writes the payload checksums into the
  // headers and saves `index` as keys.faiss. FailedPrecondition when the
  // counts or dims disagree or after IndexInBackground; the caller vouches
  // that key i of the index is row i.
  absl::StatusOr<DatastoreInfo> FinishWithIndex(const VectorIndex& index);

 private:
  struct Files;
  struct Background;
  DatastoreWriter(std::string dir, int dim, std::unique_ptr<Files> files, int64_t rows);
  // Stops the background indexing thread, if any, and waits for it.
  void StopBackground();
  // Writes the three headers with rows_ and the given payload hashes.
  absl::Status WriteHeaders(bool with_hashes);
  absl::Status FsyncAll();

  std::string dir_;
  int dim_;
  std::unique_ptr<Files> files_;
  int64_t rows_;
  bool finished_ = false;
  absl::Status broken_;  // the I/O error that made the writer unusable
  std::unique_ptr<Background> background_;
};

struct DatastoreOpenOptions {
  // Verify the payload checksums of the three data files (reads every key
  // once; for a very large datastore, false checks headers and sizes only).
  // Default: true
  bool verify_checksums = true;
  // Map keys.faiss's IVF lists instead of reading them (VectorIndex::Open's
  // mmap). Default: false
  bool mmap_index = false;
  // Which documents of added.log to load: records of a document it rejects
  // (one the index does not hold) are skipped. Null loads all. A later
  // record for the same document replaces an earlier one.
  std::function<bool(const std::string& doc_id)> keep_added;
};

// A finished datastore. keys.f16, values.i32 and docs.i32 are memory-mapped
// read-only; keys.faiss is loaded. Keys of documents added after the build
// (AddDocumentKeys) are held in memory, searched exactly next to keys.faiss,
// and kept durable in added.log. Thread-safe.
class Datastore {
 public:
  // Opens the datastore in `dir`. NotFound if there is none; FailedPrecondition
  // if it is unfinished (no keys.faiss, or headers without checksums: resume
  // its writer and Finish) or has a newer format version; DataLoss if a file
  // is truncated, corrupt, or inconsistent with the others.
  static absl::StatusOr<std::unique_ptr<Datastore>> Open(const std::string& dir,
                                                         const DatastoreOpenOptions& options = {});
  ~Datastore();
  Datastore(const Datastore&) = delete;
  Datastore& operator=(const Datastore&) = delete;

  // For each of the nq queries ([nq, dim] float32, row-major) its k nearest
  // keys, nearest first, in (*out)[q] (resized to nq). Approximate: the
  // candidates come from keys.faiss, visiting `nprobe` IVF lists (<= 0 keeps
  // the index's setting; ignored by Flat), and from the added keys (exact).
  // Fewer than k only when the index yields fewer eligible keys.
  // The top k is canonical (retriever/topk.h): equal distances are ordered
  // by (value, doc, key_id), and a tie at the k-th place is fetched whole
  // (2k, 4k, ... candidates, at most VectorIndex::kMaxK) before the cut, from
  // keys.faiss and from the added keys alike. So the kept (value, distance)
  // multiset, all the kNN-LM distribution depends on, does not depend on the
  // order keys were written or added, and N shards' lists merged by the same
  // order give one datastore's (doc and key_id are local numbers and may
  // differ).
  // `exclude_doc`: empty, or one entry per query; keys whose doc equals
  // exclude_doc[q] are never returned for query q (-1 excludes nothing).
  // The index is then over-queried the same way until k eligible keys
  // remain or it has no more.
  // `exact`: the distances of the k results are recomputed from the stored
  // fp16 keys (squared L2, as FAISS reports) and the results re-sorted by
  // them (the kNN-LM paper's option for PQ indexes); otherwise distances are
  // the index's. The cut is still made on the index's distances; among keys
  // with the k-th's index distance and value that straddle it, the exactly
  // nearest are kept. InvalidArgument for k outside [1, VectorIndex::kMaxK],
  // nq < 0, null queries, or an exclude_doc of the wrong length.
  absl::Status Search(const float* queries, int64_t nq, int k, int nprobe, const std::vector<int32_t>& exclude_doc,
                      bool exact, std::vector<std::vector<DatastoreNeighbour>>* out) const;

  // RetoMaton's pointers (Alon et al. 2022, "Neuro-Symbolic Language
  // Modeling with Automaton-augmented Retrieval"): each neighbour in `from`
  // whose value is `token` (the token that did follow) points to the key
  // after it in its document, the state reached by reading that token. Those
  // keys into *out, with their exact distances to `query` ([dim] float32,
  // squared L2 from the stored fp16 keys), nearest first in
  // DatastoreNeighbourOrder. A neighbour at its document's last key, or
  // among the added keys, points nowhere. Requires 0 <= key_id < size() for
  // every neighbour of `from` (InvalidArgument otherwise).
  absl::Status Successors(const float* query, const std::vector<DatastoreNeighbour>& from, int32_t token,
                          std::vector<DatastoreNeighbour>* out) const;

  // Adds the n keys of one document added to the index after the build:
  // keys [n, dim] float32 (rounded to fp16, as the built keys), values [n],
  // `doc` its document index. Searchable once this returns; with `durable`,
  // first appended to added.log and fsynced, so that Open brings them back
  // (without it they last as long as this object: a read-only server). The
  // new keys' ids follow the existing ones. InvalidArgument for input
  // DatastoreWriter::Append would refuse or a document already added; an
  // I/O error adds nothing.
  absl::Status AddDocumentKeys(const std::string& doc_id, const float* keys, const int32_t* values, int32_t doc,
                               int64_t n, bool durable);
  // Whether keys of `doc_id` were added (AddDocumentKeys or added.log).
  bool HasAddedDocument(const std::string& doc_id) const;

  // Number of keys, N: the built ones and the added ones.
  int64_t size() const;
  // Of which added after the build.
  int64_t added_size() const;
  int dim() const { return dim_; }
  // The factory keys.faiss was built with.
  std::string factory() const;
  // Bytes per key of the whole datastore: the four files' sizes over N
  // (fp16 key 2D + value 4 + doc 4 + the index's code and list overhead;
  // keys, values and docs are mapped, so this is also the resident size once
  // touched). 0 for an empty datastore.
  double bytes_per_key() const;

  // Key `id` as float32, dim() floats into `out`. Requires 0 <= id < size().
  void Key(int64_t id, float* out) const;
  // Value and doc of key `id`. Require 0 <= id < size().
  int32_t value(int64_t id) const;
  int32_t doc(int64_t id) const;

 private:
  struct Mapping;
  Datastore(std::string dir, int dim, int64_t rows, std::unique_ptr<Mapping> keys, std::unique_ptr<Mapping> values,
            std::unique_ptr<Mapping> docs, std::unique_ptr<VectorIndex> index, uint64_t total_bytes);
  // Squared L2 between `query` and key `id`, from the fp16 key.
  float ExactDistance(const float* query, int64_t id) const;
  // Reads added.log: loads the records `keep` accepts, stops at the first
  // torn or corrupt record (a crash mid-append: never acknowledged).
  absl::Status LoadAdded(const std::function<bool(const std::string&)>& keep);
  // Merges into each (*out)[q] the k nearest added keys not of document
  // exclude_doc[q] (exact distances; a tie at the k-th fetched whole),
  // keeping the k first in DatastoreNeighbourOrder.
  // Caller holds the added keys' lock. Fails only on an internal FAISS
  // error (or memory).
  absl::Status MergeAdded(const float* queries, int64_t nq, int k, const std::vector<int32_t>& exclude_doc,
                          std::vector<std::vector<DatastoreNeighbour>>* out) const;

  struct Added;
  std::unique_ptr<Added> added_;

  std::string dir_;
  int dim_;
  int64_t rows_;
  std::unique_ptr<Mapping> keys_, values_, docs_;
  const uint16_t* key_data_ = nullptr;
  const int32_t* value_data_ = nullptr;
  const int32_t* doc_data_ = nullptr;
  std::unique_ptr<VectorIndex> index_;
  uint64_t total_bytes_;
};

}  // namespace rag::retriever

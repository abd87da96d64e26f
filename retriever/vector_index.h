// VectorIndex: the one wrapper around a FAISS index (chunk embeddings now,
// kNN-LM datastore keys later). Vectors are float32, metric is L2, and ids
// are sequential: the i-th vector ever added has id i (the chunk id).
//
// Thread-safety: const methods (Search, Save, size, ...) may be called from
// any number of threads at once. Train, Add and Reserve mutate the index and
// need exclusive access: no other call may run on the same object meanwhile.
//
// On-disk format (version 1), written by Save and read by Open. All integers
// are little-endian; offsets in bytes:
//
//    0  char[8]  magic "RAGVIDX1"
//    8  u32      format version, 1
//   12  u32      H, the header length (= 56 + F): the FAISS payload starts at H
//   16  i32      dim
//   20  u32      F, length of the factory string
//   24  i64      ntotal, number of vectors
//   32  u64      P, payload length; the file is exactly H + P bytes
//   40  u64      XXH3-64 of the payload
//   48  char[F]  factory string (as passed to Create)
//   48+F u64     XXH3-64 of bytes [0, 48 + F): the header itself
//    H  P bytes  faiss::write_index output
//
// Why a wrapper format: FAISS's reader trusts the bytes it reads and may
// abort or try to allocate terabytes on a corrupt file. Both checksums are
// verified before FAISS sees a byte, so a truncated, bit-flipped or foreign
// file is a DataLoss status, never a crash. The payload is a plain FAISS
// file, so `tail -c +$((H+1))` recovers something FAISS's Python reader opens.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace faiss {
struct Index;
}  // namespace faiss

namespace rag::retriever {

// What AdaptFactory settled on. `note` is empty when the requested factory
// was kept as is, else one sentence saying what changed and why.
struct FactoryChoice {
  std::string factory;
  std::string note;
};

class VectorIndex {
 public:
  // Largest k Search accepts: results are nq * k floats and ids, and no
  // retrieval or kNN-LM use needs more neighbours than this.
  static constexpr int kMaxK = 4096;

  // The factory string we recommend for `n` vectors of dimension `dim`.
  //  - n < 20000: "Flat". Exact, and cheap at that size (20000 x 256 floats is
  //    20 MB, a query scans it in about a millisecond). 20000 is also where
  //    the IVF rule below first yields nlist = 512 with the 39 training
  //    points per centroid FAISS asks for (39 * 512 = 19968).
  //  - otherwise "IVF{nlist},PQ{m}": nlist is 4 * sqrt(n) rounded to the
  //    nearest power of two (FAISS's guideline is 4..16 * sqrt(n); powers of
  //    two keep shards comparable), halved while n < 39 * nlist. m is the
  //    largest of {64, 32, 16, 8} that divides dim with dim / m >= 2: at most
  //    64 bytes a vector, sub-vectors of at least two dimensions. When no
  //    such m exists (dim not a multiple of 8, or dim < 16) it is
  //    "IVF{nlist},SQ8" instead, which works for any dim.
  // Examples: (1000, 256) -> "Flat"; (1000000, 256) -> "IVF4096,PQ64";
  // (100000, 64) -> "IVF1024,PQ32".
  static std::string DefaultFactory(int64_t n, int dim);

  // Adapts `requested` to a corpus of `n` training vectors so that training
  // cannot fail for lack of data:
  //  - an "IVF{nlist}" component with n < 39 * nlist gets nlist = n / 39
  //    (FAISS's minimum points per centroid), at least 1;
  //  - a "PQ{m}[x{nbits}]" or "OPQ{m}" component with n < 39 * 2^nbits
  //    (nbits defaults to 8: 9984 points) makes the result "Flat", since PQ
  //    codebooks cannot be trained and brute force is cheap at that size;
  //  - n == 0 with any IVF component also gives "Flat".
  // InvalidArgument if dim <= 0, n < 0, or FAISS cannot build `requested`
  // for `dim` (unknown string, or e.g. "PQ7" with dim 64).
  static absl::StatusOr<FactoryChoice> AdaptFactory(const std::string& requested, int64_t n, int dim);

  // An empty L2 index built by faiss::index_factory(dim, factory).
  // InvalidArgument for dim <= 0, an unparsable factory, a dimension the
  // factory cannot handle, or an "IDMap" factory (ids here are sequential).
  static absl::StatusOr<std::unique_ptr<VectorIndex>> Create(int dim, const std::string& factory);

  // Reads a file written by Save. NotFound if `path` does not exist; DataLoss
  // if it is truncated, corrupt or not a VectorIndex file; FailedPrecondition
  // for a newer format version. The whole file is read once to verify its
  // checksums, also with `mmap`.
  // `mmap`: IVF inverted lists are mapped from the file (FAISS's
  // IO_FLAG_MMAP) instead of being read into memory; the index is then
  // read-only (Add, Train and Save give FailedPrecondition). Other index
  // types (Flat, HNSW, ...) are read into memory whatever `mmap` says.
  static absl::StatusOr<std::unique_ptr<VectorIndex>> Open(const std::string& path, bool mmap = false);

  ~VectorIndex();
  VectorIndex(const VectorIndex&) = delete;
  VectorIndex& operator=(const VectorIndex&) = delete;

  // False for an IVF / PQ / ... index that still needs Train. Flat and HNSW
  // indexes are born trained.
  bool is_trained() const;

  // How many vectors training samples: per_list for each IVF list of the
  // index, at least `minimum`.
  struct TrainingSampleRule {
    int64_t per_list;
    int64_t minimum;
  };
  // Train's rule: k-means in FAISS uses at most 256 points per centroid, and
  // PQ k-means subsamples to 256 * 256 = 65536 anyway, so a bigger sample
  // only costs time.
  static constexpr TrainingSampleRule kTrainingSample = {256, 100000};

  // The training-sample rule, its one owner: how many of `n` vectors training
  // uses. max_train > 0: min(n, max_train); otherwise
  // min(n, max(rule.per_list * nlist, rule.minimum)), nlist being this
  // index's IVF lists (0 without an IVF). Train(x, n, seed, max_train) trains
  // on TrainingSampleSize(n, max_train) rows; callers that read the sample
  // from disk ask here how many rows to read.
  int64_t TrainingSampleSize(int64_t n, int64_t max_train = 0,
                             const TrainingSampleRule& rule = kTrainingSample) const;

  // Trains on a random sample of at most `max_train` of the `n` rows of `x`
  // (n x dim floats, row-major). The sample is drawn here, deterministically
  // from `seed`, so a rebuild with the same seed gives the same index.
  // max_train == 0 means TrainingSampleSize(n) (min(n, max(256 * nlist,
  // 100000))). A no-op on an index already trained.
  // PQ's polysemous training (on by default in FAISS's factory) is turned
  // off: it only serves polysemous search, never enabled here, and it took
  // over 90% of IVF-PQ training time on this project's machine. PQ
  // codebooks train on at most 64 points per centroid for 10 k-means
  // iterations (FAISS: 256 and 25), 5x faster for a few percent more
  // distance error (the reasons are in vector_index.cc).
  // InvalidArgument if n is below what the index needs (e.g. fewer than
  // nlist points, or fewer than 256 for an 8-bit PQ): see AdaptFactory.
  absl::Status Train(const float* x, int64_t n, uint64_t seed = 1234, int64_t max_train = 0);

  // Train on rows already sampled (the caller read TrainingSampleSize rows,
  // SampleRows(n, m, seed)): the same index as Train over all n with
  // `seed`. The buffer is taken over, so an IVF-PQ index trains its PQ on a
  // subsample moved within it rather than on FAISS's copy of one: the
  // builders' training peak is the sample and the PQ residuals, nothing more.
  absl::Status TrainOnSample(std::vector<float> sample, uint64_t seed = 1234);

  // Keeps an IVF-PQ index from holding its search tables (nlist x M x 256
  // floats: 32 MiB for IVF512,PQ64), which FAISS builds at the end of
  // training for search alone. For an index that is trained, added to and
  // saved, and never searched in this process (the builders): FAISS
  // rebuilds the tables whenever the file is read, and search without them
  // computes the same terms per query. Call before Train. No-op for other
  // index types.
  void DropSearchTables();
  // Bytes of those tables held now (0 for other index types).
  int64_t search_table_bytes() const;

  // Appends n vectors (n x dim floats); they get ids size() .. size() + n - 1.
  // FailedPrecondition if the index is not trained or is read-only.
  absl::Status Add(const float* x, int64_t n);

  // Best effort: reserves room for `n` more vectors where the index type
  // allows (Flat and other flat-code indexes), to avoid regrowth during a
  // long sequence of Adds. Does nothing for other types or on failure.
  void Reserve(int64_t n);

  // For each of the nq queries (nq x dim floats), the k nearest vectors:
  // `distances` and `ids` are resized to nq * k, row-major, nearest first.
  // Distances are FAISS's squared L2. Missing results (k > size(), or an IVF
  // probe that finds too few) have id -1 and distance +inf.
  // `nprobe` is the number of IVF lists visited (clamped to nlist; <= 0 keeps
  // the index's own setting, 1 unless changed); other index types ignore it.
  // InvalidArgument for k <= 0, k > kMaxK or nq < 0; FailedPrecondition if
  // the index is not trained.
  absl::Status Search(const float* queries, int64_t nq, int k, int nprobe, std::vector<float>* distances,
                      std::vector<int64_t>* ids) const;

  // Moves every vector of `other` into this index, FAISS's own merge_from:
  // they get ids size() .. size() + other.size() - 1 in their order in
  // `other`, and `other` is left empty. The result searches exactly as one
  // index to which this index's vectors and then other's had been added
  // (`rag merge` of shards built on one trained index). FailedPrecondition,
  // with nothing moved, when the two differ in dim or factory, when their
  // trained state differs (TrainedStateHash: a shard trained on its own),
  // when either is read-only or untrained, or when FAISS cannot merge the
  // index type (e.g. HNSW, IndexRefine).
  absl::Status MergeFrom(VectorIndex& other);

  // XXH3-64 of the index's trained state alone: the FAISS serialization of
  // a copy with every vector removed. Equal for two indexes made by adding
  // vectors to copies of one trained index, whatever was added; different
  // (in practice) for indexes trained separately. Holds a copy of the index
  // while it runs. Internal on FAISS failure.
  absl::StatusOr<uint64_t> TrainedStateHash() const;

  // Writes the index to `path` atomically (a temporary file next to it,
  // fsync, rename): readers see the old file or the new one. Concurrent
  // Saves to the same path from one process are safe; the last rename wins.
  absl::Status Save(const std::string& path) const;

  int64_t size() const;
  int dim() const;
  // The factory string given to Create (or stored in the file for Open).
  std::string factory() const;
  // True for an index opened with mmap.
  bool read_only() const { return read_only_; }

  // The FAISS version compiled against, e.g. "1.7.3".
  static std::string FaissVersion();

  // While alive, FAISS's long loops on the calling thread (the k-means
  // iterations of Train) stop once `*cancel` is true, and Train or Add then
  // returns Cancelled. Per thread: other threads are unaffected. Lets a
  // background build be stopped without waiting for its training to end.
  class CancelScope {
   public:
    explicit CancelScope(const std::atomic<bool>* cancel);
    ~CancelScope();
    CancelScope(const CancelScope&) = delete;
    CancelScope& operator=(const CancelScope&) = delete;

   private:
    const std::atomic<bool>* previous_;
  };

  // The m distinct row numbers of [0, n), sorted, that Train samples with
  // `seed` (Floyd's algorithm on std::mt19937_64: O(m) memory whatever n
  // is). Callers that keep vectors on disk read just these rows and get the
  // index training on all n would give.
  static std::vector<int64_t> SampleRows(int64_t n, int64_t m, uint64_t seed);

 private:
  VectorIndex(std::unique_ptr<faiss::Index> index, std::string factory, bool read_only);
  // FailedPrecondition if read-only; InvalidArgument if untrained and n is
  // below nlist.
  absl::Status CheckTrainable(int64_t n) const;
  // FAISS's own training on n rows of x, on every core.
  absl::Status TrainInFaiss(const float* x, int64_t n);
  // TrainOnSample after its checks.
  absl::Status TrainOwnedSample(std::vector<float> sample, uint64_t seed);

  std::unique_ptr<faiss::Index> index_;
  std::string factory_;
  bool read_only_ = false;
  // Serialises searches that can only set nprobe by mutating the index
  // (an IVF under an IndexRefine, which FAISS 1.7.3 gives no search
  // parameters). All other searches run without it.
  mutable std::mutex nprobe_mu_;
};

// Exact (brute-force) k nearest neighbours by squared L2 of the nq queries
// ([nq, dim] floats) among n vectors the caller holds ([n, dim] floats, no
// index): FAISS's flat distance computation, |q|^2 + |x|^2 - 2 q.x with one
// BLAS product, clamped at 0. `exclude_label` (nq entries) may be null
// (nothing excluded); otherwise `labels` (n entries) must be given too, and
// vector i is never returned for query q when labels[i] == exclude_label[q]
// (so -1 excludes nothing for labels >= 0). `distances` and `ids` are resized to nq * k, row-major,
// nearest first, ties by the lower id; missing results (k > n, or excluded)
// have id -1 and distance +inf. Memory: nq * n floats.
// InvalidArgument for dim <= 0, k outside [1, VectorIndex::kMaxK],
// nq < 0, n < 0, or null data (labels null with exclude_label given).
absl::Status ExactSearchL2(const float* queries, int64_t nq, const float* vectors, int64_t n, int dim, int k,
                           const int32_t* labels, const int32_t* exclude_label, std::vector<float>* distances,
                           std::vector<int64_t>* ids);

// Fraction of the exact top-k ids (ignoring -1 padding) that also appear in
// the approximate top-k, averaged over the queries that have at least one
// exact id. Both vectors are nq x k, row-major. Returns 0 when no query
// counts, and NaN if either vector is shorter than nq * k.
double RecallAtK(const std::vector<int64_t>& approx, const std::vector<int64_t>& exact, int64_t nq, int k);

}  // namespace rag::retriever

// Datastore (retriever/datastore.h), the read side: opening and verifying
// the files, key access and Search. The keys added while served are in
// datastore_added.cc.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <utility>
#include <vector>

#include "common/binary_file.h"
#include "common/stage_timer.h"
#include "common/status.h"
#include "retriever/datastore.h"
#include "retriever/internal/added_log.h"
#include "retriever/internal/datastore_format.h"
#include "retriever/internal/posix_io.h"
#include "retriever/topk.h"
#include "retriever/vector_index.h"

namespace rag::retriever {

using internal::DecodeHeader;
using internal::ErrnoStatus;
using internal::FileKind;
using internal::FileSize;
using internal::HalfTable;
using internal::HalvesToFloats;
using internal::Header;
using internal::kHeaderBytes;
using internal::kKinds;
using internal::OpenFile;
using internal::PathIn;
using internal::PayloadBytes;

namespace {
namespace fs = std::filesystem;
}  // namespace

struct Datastore::Mapping {
  void* addr = MAP_FAILED;
  size_t length = 0;
  ~Mapping() {
    if (addr != MAP_FAILED) ::munmap(addr, length);
  }
  const unsigned char* bytes() const { return static_cast<const unsigned char*>(addr); }
};

Datastore::Datastore(std::string dir, int dim, int64_t rows, std::unique_ptr<Mapping> keys,
                     std::unique_ptr<Mapping> values, std::unique_ptr<Mapping> docs, std::unique_ptr<VectorIndex> index,
                     uint64_t total_bytes)
    : dir_(std::move(dir)),
      dim_(dim),
      rows_(rows),
      keys_(std::move(keys)),
      values_(std::move(values)),
      docs_(std::move(docs)),
      index_(std::move(index)),
      total_bytes_(total_bytes) {
  key_data_ = reinterpret_cast<const uint16_t*>(keys_->bytes() + kHeaderBytes);
  value_data_ = reinterpret_cast<const int32_t*>(values_->bytes() + kHeaderBytes);
  doc_data_ = reinterpret_cast<const int32_t*>(docs_->bytes() + kHeaderBytes);
  added_ = std::make_unique<Added>();
  added_->path = PathIn(dir_, kDatastoreAddedFile);
}

Datastore::~Datastore() = default;

absl::StatusOr<std::unique_ptr<Datastore>> Datastore::Open(const std::string& dir,
                                                           const DatastoreOpenOptions& options) {
  const std::string context = "opening datastore '" + dir + "'";
  std::error_code ec;
  const std::string index_path = PathIn(dir, kDatastoreIndexFile);
  if (!fs::exists(PathIn(dir, kDatastoreKeysFile), ec) && !fs::exists(index_path, ec)) {
    return absl::NotFoundError(context + ": no datastore there (no " + kDatastoreKeysFile + ")");
  }

  Header headers[3];
  std::unique_ptr<Mapping> maps[3];
  uint64_t total_bytes = 0;
  for (int i = 0; i < 3; ++i) {
    const FileKind& kind = *kKinds[i];
    const std::string path = PathIn(dir, kind.name);
    auto fd = OpenFile(path, O_RDONLY);
    if (!fd.ok()) {
      if (absl::IsNotFound(fd.status())) return absl::DataLossError(context + ": " + kind.name + " is missing");
      return Annotate(fd.status(), context);
    }
    RAG_ASSIGN_OR_RETURN(const int64_t size, FileSize(fd->get(), path));
    unsigned char buf[kHeaderBytes] = {};
    const ssize_t got = ::pread(fd->get(), buf, kHeaderBytes, 0);
    if (got < 0) return ErrnoStatus(context + ": reading '" + path + "'", errno);
    auto header = DecodeHeader(kind, buf, static_cast<size_t>(got), path);
    if (!header.ok()) return Annotate(header.status(), context);
    headers[i] = *header;
    if (headers[i].payload_hash == 0) {
      return absl::FailedPreconditionError(context + ": the datastore is unfinished (" + kind.name +
                                           " has no checksum); resume its writer and call Finish");
    }
    const int64_t payload = PayloadBytes(kind, headers[i].width, headers[i].rows);
    if (payload < 0) return absl::DataLossError(context + ": '" + path + "' header has an impossible row count");
    const int64_t expected = static_cast<int64_t>(kHeaderBytes) + payload;
    if (size != expected) {
      return absl::DataLossError(context + ": '" + path + "' has " + std::to_string(size) + " bytes, its header says " +
                                 std::to_string(expected) + (size < expected ? " (truncated)" : " (trailing bytes)"));
    }
    if (i > 0 && headers[i].rows != headers[0].rows) {
      return absl::DataLossError(context + ": " + kind.name + " has " + std::to_string(headers[i].rows) + " rows, " +
                                 kDatastoreKeysFile + " " + std::to_string(headers[0].rows));
    }
    auto map = std::make_unique<Mapping>();
    map->length = static_cast<size_t>(size);
    map->addr = ::mmap(nullptr, map->length, PROT_READ, MAP_SHARED, fd->get(), 0);
    if (map->addr == MAP_FAILED) return ErrnoStatus(context + ": mapping '" + path + "'", errno);
    if (options.verify_checksums) {
      ::madvise(map->addr, map->length, MADV_SEQUENTIAL);
      if (Checksum64(map->bytes() + kHeaderBytes, static_cast<size_t>(payload)) != headers[i].payload_hash) {
        return absl::DataLossError(context + ": '" + path + "' data checksum mismatch (corrupt file)");
      }
      ::madvise(map->addr, map->length, MADV_NORMAL);
    }
    if (i == 0) ::madvise(map->addr, map->length, MADV_RANDOM);  // exact re-ranking reads scattered rows
    total_bytes += static_cast<uint64_t>(size);
    maps[i] = std::move(map);
  }

  if (!fs::exists(index_path, ec)) {
    return absl::FailedPreconditionError(context + ": the datastore is unfinished (no " + kDatastoreIndexFile +
                                         "); resume its writer and call Finish");
  }
  auto index = VectorIndex::Open(index_path, options.mmap_index);
  if (!index.ok()) return Annotate(index.status(), context);
  const int dim = static_cast<int>(headers[0].width);
  if ((*index)->dim() != dim || (*index)->size() != headers[0].rows) {
    return absl::DataLossError(context + ": " + kDatastoreIndexFile + " has " + std::to_string((*index)->size()) +
                               " vectors of dim " + std::to_string((*index)->dim()) + ", the datastore " +
                               std::to_string(headers[0].rows) + " keys of dim " + std::to_string(dim));
  }
  total_bytes += static_cast<uint64_t>(fs::file_size(index_path, ec));
  std::unique_ptr<Datastore> ds(new Datastore(dir, dim, headers[0].rows, std::move(maps[0]), std::move(maps[1]),
                                              std::move(maps[2]), std::move(index).value(), total_bytes));
  RAG_RETURN_IF_ERROR(Annotate(ds->LoadAdded(options.keep_added), context));
  return ds;
}

int64_t Datastore::size() const { return rows_ + added_size(); }

std::string Datastore::factory() const { return index_->factory(); }

double Datastore::bytes_per_key() const {
  return rows_ == 0 ? 0.0 : static_cast<double>(total_bytes_) / static_cast<double>(rows_);
}

void Datastore::Key(int64_t id, float* out) const {
  assert(id >= 0 && id < size());
  const size_t d = static_cast<size_t>(dim_);
  if (id >= rows_) {
    std::shared_lock<std::shared_mutex> lock(added_->mu);
    std::memcpy(out, added_->keys.data() + static_cast<size_t>(id - rows_) * d, d * sizeof(float));
    return;
  }
  HalvesToFloats(key_data_ + static_cast<size_t>(id) * d, d, out);
}

int32_t Datastore::value(int64_t id) const {
  assert(id >= 0 && id < size());
  if (id >= rows_) {
    std::shared_lock<std::shared_mutex> lock(added_->mu);
    return added_->values[static_cast<size_t>(id - rows_)];
  }
  return value_data_[id];
}

int32_t Datastore::doc(int64_t id) const {
  assert(id >= 0 && id < size());
  if (id >= rows_) {
    std::shared_lock<std::shared_mutex> lock(added_->mu);
    return added_->docs[static_cast<size_t>(id - rows_)];
  }
  return doc_data_[id];
}

float Datastore::ExactDistance(const float* query, int64_t id) const {
  const float* table = HalfTable();
  const uint16_t* key = key_data_ + static_cast<size_t>(id) * static_cast<size_t>(dim_);
  double sum = 0;
  for (int j = 0; j < dim_; ++j) {
    const double diff = static_cast<double>(query[j]) - static_cast<double>(table[key[j]]);
    sum += diff * diff;
  }
  return static_cast<float>(sum);
}

absl::Status Datastore::Search(const float* queries, int64_t nq, int k, int nprobe,
                               const std::vector<int32_t>& exclude_doc, bool exact,
                               std::vector<std::vector<DatastoreNeighbour>>* out) const {
  const std::string context = "searching datastore '" + dir_ + "'";
  if (k < 1 || k > VectorIndex::kMaxK) {
    return absl::InvalidArgumentError(context + ": k must be in [1, " + std::to_string(VectorIndex::kMaxK) + "], got " +
                                      std::to_string(k));
  }
  if (nq < 0) return absl::InvalidArgumentError(context + ": negative number of queries");
  if (queries == nullptr && nq > 0) return absl::InvalidArgumentError(context + ": null queries");
  if (!exclude_doc.empty() && static_cast<int64_t>(exclude_doc.size()) != nq) {
    return absl::InvalidArgumentError(context + ": exclude_doc has " + std::to_string(exclude_doc.size()) +
                                      " entries for " + std::to_string(nq) + " queries (expected 0 or one per query)");
  }
  out->assign(static_cast<size_t>(nq), {});
  const int64_t limit = std::min<int64_t>(rows_, VectorIndex::kMaxK);
  std::shared_lock<std::shared_mutex> added_lock(added_->mu);
  const bool has_added = !added_->values.empty();
  if (nq == 0 || (limit == 0 && !has_added)) return absl::OkStatus();
  const size_t d = static_cast<size_t>(dim_);
  auto excluded_doc = [&](int64_t q) { return exclude_doc.empty() ? -1 : exclude_doc[static_cast<size_t>(q)]; };
  bool any_exclusion = false;
  for (int64_t q = 0; q < nq && !any_exclusion; ++q) any_exclusion = excluded_doc(q) >= 0;

  // Fetch k + 1 (2k when excluding) and double, searching again only the
  // queries whose top k is not settled yet (retriever/topk.h): fewer than k
  // eligible keys, or the k-th distance tied with the last one fetched,
  // while the index may hold more and kMaxK allows. Why k + 1: with k the
  // k-th is always the last one fetched, so every query was searched twice.
  const size_t kk = static_cast<size_t>(k);
  std::vector<int64_t> pending(limit > 0 ? static_cast<size_t>(nq) : 0);
  for (size_t q = 0; q < pending.size(); ++q) pending[q] = static_cast<int64_t>(q);
  int64_t fetch = any_exclusion ? 2 * static_cast<int64_t>(k) : static_cast<int64_t>(k) + 1;
  std::vector<float> batch_queries;
  std::vector<float> distances;
  std::vector<int64_t> ids;
  while (!pending.empty()) {
    const int64_t f = std::min(fetch, limit);
    const int64_t np = static_cast<int64_t>(pending.size());
    const float* qptr = queries;
    if (np != nq) {
      batch_queries.resize(static_cast<size_t>(np) * d);
      for (int64_t i = 0; i < np; ++i) {
        std::memcpy(batch_queries.data() + static_cast<size_t>(i) * d,
                    queries + static_cast<size_t>(pending[static_cast<size_t>(i)]) * d, d * sizeof(float));
      }
      qptr = batch_queries.data();
    }
    RAG_RETURN_IF_ERROR(Annotate(index_->Search(qptr, np, static_cast<int>(f), nprobe, &distances, &ids), context));
    const StageTimer reading(Stage::kDatastore);  // the neighbours' values, docs and exact distances
    std::vector<int64_t> still_pending;
    for (int64_t i = 0; i < np; ++i) {
      const int64_t q = pending[static_cast<size_t>(i)];
      const int32_t excluded = excluded_doc(q);
      std::vector<DatastoreNeighbour> kept;
      kept.reserve(static_cast<size_t>(f));
      int64_t found = 0;
      float last = 0;
      // The values and docs sit at random rows of two mapped files: ask
      // for all their cache lines first, then read them (a cache miss each
      // otherwise, a sixth of kNN-LM scoring time at k = 1024).
      for (int64_t j = 0; j < f; ++j) {
        const int64_t id = ids[static_cast<size_t>(i * f + j)];
        if (id < 0 || id >= rows_) continue;
        __builtin_prefetch(value_data_ + id);
        __builtin_prefetch(doc_data_ + id);
      }
      for (int64_t j = 0; j < f; ++j) {
        const int64_t id = ids[static_cast<size_t>(i * f + j)];
        if (id < 0) continue;
        if (id >= rows_) {
          return absl::DataLossError(context + ": the index returned key " + std::to_string(id) + " of " +
                                     std::to_string(rows_));
        }
        ++found;
        last = std::max(last, distances[static_cast<size_t>(i * f + j)]);
        const int32_t doc = doc_data_[id];
        if (excluded >= 0 && doc == excluded) continue;
        kept.push_back({id, value_data_[id], doc, last});
      }
      // FAISS returns nearest first, ties in id order: re-order canonically.
      std::sort(kept.begin(), kept.end(), DatastoreNeighbourOrder());
      // found < f: the index (e.g. the probed IVF lists) has nothing more.
      if (MustFetchMore(kept, kk, last, found == f && f < limit)) {
        still_pending.push_back(q);
        continue;
      }
      const float* query = queries + static_cast<size_t>(q) * d;
      if (exact && kept.size() > kk) {
        // Keys with the k-th's index distance and value straddle the cut:
        // which of them are kept changes the exact distances returned (PQ
        // gives different keys one code), so the cut takes the exactly
        // nearest of them (then doc, key), the same ones in every shard.
        const DatastoreNeighbour& kth = kept[kk - 1];
        auto same = [&](const DatastoreNeighbour& nb) { return nb.distance == kth.distance && nb.value == kth.value; };
        size_t lo = kk - 1, hi = kk;
        while (lo > 0 && same(kept[lo - 1])) --lo;
        while (hi < kept.size() && same(kept[hi])) ++hi;
        if (hi > kk) {
          for (size_t j = lo; j < hi; ++j) kept[j].distance = ExactDistance(query, kept[j].key_id);
          std::sort(kept.begin() + static_cast<std::ptrdiff_t>(lo), kept.begin() + static_cast<std::ptrdiff_t>(hi),
                    DatastoreNeighbourOrder());
        }
      }
      KeepFirst(&kept, kk);
      if (exact) {
        for (DatastoreNeighbour& nb : kept) nb.distance = ExactDistance(query, nb.key_id);
        std::sort(kept.begin(), kept.end(), DatastoreNeighbourOrder());
      }
      (*out)[static_cast<size_t>(q)] = std::move(kept);
    }
    pending = std::move(still_pending);
    fetch = 2 * f;
  }
  // Keys added after the build: few, so searched exactly, and merged in.
  if (has_added) RAG_RETURN_IF_ERROR(Annotate(MergeAdded(queries, nq, k, exclude_doc, out), context));
  return absl::OkStatus();
}

absl::Status Datastore::Successors(const float* query, const std::vector<DatastoreNeighbour>& from, int32_t token,
                                   std::vector<DatastoreNeighbour>* out) const {
  out->clear();
  const int64_t total = size();
  for (const DatastoreNeighbour& nb : from) {
    if (nb.key_id < 0 || nb.key_id >= total) {
      return absl::InvalidArgumentError("datastore '" + dir_ + "': pointer from key " + std::to_string(nb.key_id) +
                                        " of " + std::to_string(total));
    }
    // Built keys are stored document by document, position by position
    // (index_builder/datastore_builder.cc): the next row of the same
    // document is the next position.
    const int64_t next = nb.key_id + 1;
    if (nb.value != token || next >= rows_ || doc_data_[next] != doc_data_[nb.key_id]) continue;
    out->push_back({next, value_data_[next], doc_data_[next], ExactDistance(query, next)});
  }
  std::sort(out->begin(), out->end(), DatastoreNeighbourOrder());
  return absl::OkStatus();
}

}  // namespace rag::retriever

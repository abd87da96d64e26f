// Datastore (retriever/datastore.h): keys of documents added to a served
// index, kept durable in added.log (retriever/internal/added_log.h), held
// in memory and searched exactly (ExactSearchL2) next to keys.faiss.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/file_util.h"
#include "common/status.h"
#include "retriever/datastore.h"
#include "retriever/internal/added_log.h"
#include "retriever/internal/datastore_format.h"
#include "retriever/internal/posix_io.h"
#include "retriever/topk.h"
#include "retriever/vector_index.h"

namespace rag::retriever {

using internal::Fd;
using internal::FsyncFd;
using internal::HalfTable;
using internal::kMaxAddedIdBytes;
using internal::OpenFile;
using internal::PwriteAll;

namespace {
namespace fs = std::filesystem;
}  // namespace

absl::Status Datastore::LoadAdded(const std::function<bool(const std::string&)>& keep) {
  std::error_code ec;
  if (!fs::exists(added_->path, ec)) return absl::OkStatus();
  RAG_ASSIGN_OR_RETURN(std::string log, ReadFile(added_->path));
  size_t at = 0;
  const std::vector<internal::AddedRecord> records = internal::ParseAddedLog(log, dim_, &at);
  const size_t d = static_cast<size_t>(dim_);
  if (at < log.size()) {
    std::fprintf(stderr, "datastore: ignoring %zu bytes at the end of %s (an append cut short)\n", log.size() - at,
                 added_->path.c_str());
  }
  added_->valid_bytes = static_cast<int64_t>(at);
  std::unordered_map<std::string, size_t> last;
  for (size_t i = 0; i < records.size(); ++i) last[records[i].id] = i;
  const float* table = HalfTable();
  for (size_t i = 0; i < records.size(); ++i) {
    const internal::AddedRecord& r = records[i];
    if (last[r.id] != i || (keep && !keep(r.id))) continue;
    const auto* halves = reinterpret_cast<const unsigned char*>(log.data() + r.keys_at);
    const size_t n = static_cast<size_t>(r.n);
    for (size_t j = 0; j < n * d; ++j) {
      uint16_t half;
      std::memcpy(&half, halves + 2 * j, 2);
      added_->keys.push_back(table[half]);
    }
    for (size_t j = 0; j < n; ++j) {
      int32_t v;
      std::memcpy(&v, halves + 2 * n * d + 4 * j, 4);
      added_->values.push_back(v);
      added_->docs.push_back(r.doc);
    }
    added_->doc_ids.insert(r.id);
  }
  return absl::OkStatus();
}

absl::Status Datastore::AddDocumentKeys(const std::string& doc_id, const float* keys, const int32_t* values,
                                        int32_t doc, int64_t n, bool durable) {
  const std::string context = "adding the keys of document '" + doc_id + "' to datastore '" + dir_ + "'";
  if (doc_id.empty() || doc_id.size() > kMaxAddedIdBytes) {
    return absl::InvalidArgumentError(context + ": the document id must have 1 to 1 MiB bytes");
  }
  if (n < 0 || (n > 0 && (keys == nullptr || values == nullptr))) {
    return absl::InvalidArgumentError(context + ": bad key count or null data");
  }
  if (doc < 0) return absl::InvalidArgumentError(context + ": negative document index");
  const size_t d = static_cast<size_t>(dim_);
  std::vector<uint16_t> halves(static_cast<size_t>(n) * d);
  for (size_t i = 0; i < halves.size(); ++i) {
    if (!std::isfinite(keys[i]) || std::fabs(keys[i]) >= internal::kHalfOverflow) {
      return absl::InvalidArgumentError(context + ": key component " + std::to_string(i) +
                                        " is not finite or too large for fp16");
    }
    halves[i] = FloatToHalf(keys[i]);
  }
  for (int64_t i = 0; i < n; ++i) {
    if (values[i] < 0) return absl::InvalidArgumentError(context + ": negative value");
  }
  std::lock_guard<std::mutex> write_lock(added_->write_mu);
  if (HasAddedDocument(doc_id)) return absl::InvalidArgumentError(context + ": its keys were added already");
  if (durable) {
    const std::string record =
        internal::EncodeAddedRecord(static_cast<uint32_t>(dim_), doc_id, n, doc, halves.data(), values);
    if (added_->fd.get() < 0) {
      std::error_code ec;
      const bool existed = fs::exists(added_->path, ec);
      RAG_ASSIGN_OR_RETURN(added_->fd, OpenFile(added_->path, O_WRONLY | O_CREAT));
      if (!existed) {
        // The new file's name must survive a crash too.
        RAG_ASSIGN_OR_RETURN(Fd dir_fd, OpenFile(dir_, O_RDONLY | O_DIRECTORY));
        RAG_RETURN_IF_ERROR(Annotate(FsyncFd(dir_fd.get(), dir_), context));
      }
    }
    const int fd = added_->fd.get();
    // Overwrites whatever a torn append left after the last whole record.
    absl::Status s = PwriteAll(fd, record.data(), record.size(), added_->valid_bytes, added_->path);
    if (s.ok()) s = FsyncFd(fd, added_->path);
    if (!s.ok()) {
      (void)::ftruncate(fd, static_cast<off_t>(added_->valid_bytes));
      return Annotate(s, context);
    }
    added_->valid_bytes += static_cast<int64_t>(record.size());
  }
  const float* table = HalfTable();
  std::unique_lock<std::shared_mutex> lock(added_->mu);
  for (uint16_t h : halves) added_->keys.push_back(table[h]);
  added_->values.insert(added_->values.end(), values, values + n);
  added_->docs.insert(added_->docs.end(), static_cast<size_t>(n), doc);
  added_->doc_ids.insert(doc_id);
  return absl::OkStatus();
}

bool Datastore::HasAddedDocument(const std::string& doc_id) const {
  std::shared_lock<std::shared_mutex> lock(added_->mu);
  return added_->doc_ids.count(doc_id) > 0;
}

int64_t Datastore::added_size() const {
  std::shared_lock<std::shared_mutex> lock(added_->mu);
  return static_cast<int64_t>(added_->values.size());
}

absl::Status Datastore::MergeAdded(const float* queries, int64_t nq, int k, const std::vector<int32_t>& exclude_doc,
                                   std::vector<std::vector<DatastoreNeighbour>>* out) const {
  const int64_t n = static_cast<int64_t>(added_->values.size());
  if (n == 0 || nq == 0) return absl::OkStatus();
  // Exact squared L2 of every query to every added key, by one matrix
  // product (a scalar loop cost 50 ms per probe sentence with a few thousand
  // added keys); excluded documents' keys never come back. ExactSearchL2
  // breaks equal distances by insertion order, so a query whose k-th added
  // key may tie with one not returned is searched again with twice as many
  // (retriever/topk.h); its added candidates then hold every key as near as
  // their k-th, and the merge with the index's candidates (tie-complete the
  // same way) is cut in the canonical order.
  const size_t kk = static_cast<size_t>(k);
  const size_t d = static_cast<size_t>(dim_);
  const int64_t limit = std::min<int64_t>(n, VectorIndex::kMaxK);
  std::vector<int64_t> pending(static_cast<size_t>(nq));
  for (size_t q = 0; q < pending.size(); ++q) pending[q] = static_cast<int64_t>(q);
  std::vector<float> batch_queries;
  std::vector<int32_t> batch_exclude;
  std::vector<float> dist;
  std::vector<int64_t> idx;
  for (int64_t fetch = k; !pending.empty(); fetch *= 2) {
    const int64_t f = std::min(fetch, limit);
    const int64_t np = static_cast<int64_t>(pending.size());
    const float* qptr = queries;
    const int32_t* eptr = exclude_doc.empty() ? nullptr : exclude_doc.data();
    if (np != nq) {
      batch_queries.resize(static_cast<size_t>(np) * d);
      batch_exclude.clear();
      for (int64_t i = 0; i < np; ++i) {
        const size_t q = static_cast<size_t>(pending[static_cast<size_t>(i)]);
        std::memcpy(batch_queries.data() + static_cast<size_t>(i) * d, queries + q * d, d * sizeof(float));
        if (eptr != nullptr) batch_exclude.push_back(exclude_doc[q]);
      }
      qptr = batch_queries.data();
      if (eptr != nullptr) eptr = batch_exclude.data();
    }
    const absl::Status s = ExactSearchL2(qptr, np, added_->keys.data(), n, dim_, static_cast<int>(f),
                                         added_->docs.data(), eptr, &dist, &idx);
    if (!s.ok()) return s;
    std::vector<int64_t> still_pending;
    for (int64_t i = 0; i < np; ++i) {
      const int64_t qi = pending[static_cast<size_t>(i)];
      std::vector<DatastoreNeighbour> added;
      float last = 0;
      for (int64_t j = 0; j < f; ++j) {
        const size_t at = static_cast<size_t>(i * f + j);
        if (idx[at] < 0) break;  // excluded keys come back as -1, after the rest
        const size_t a = static_cast<size_t>(idx[at]);
        added.push_back({rows_ + static_cast<int64_t>(a), added_->values[a], added_->docs[a], dist[at]});
        last = std::max(last, dist[at]);
      }
      std::sort(added.begin(), added.end(), DatastoreNeighbourOrder());
      if (MustFetchMore(added, kk, last, static_cast<int64_t>(added.size()) == f && f < limit)) {
        still_pending.push_back(qi);
        continue;
      }
      std::vector<DatastoreNeighbour>& kept = (*out)[static_cast<size_t>(qi)];
      kept.insert(kept.end(), added.begin(), added.end());
      std::sort(kept.begin(), kept.end(), DatastoreNeighbourOrder());
      KeepFirst(&kept, kk);
    }
    pending = std::move(still_pending);
  }
  return absl::OkStatus();
}

}  // namespace rag::retriever

// DatastoreWriter (retriever/datastore.h): creating or resuming the three
// data files, appending, checkpoints, and Finish (checksums, then keys.faiss
// through internal::KeyIndexer).
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "common/binary_file.h"
#include "common/file_util.h"
#include "common/progress.h"
#include "common/status.h"
#include "retriever/datastore.h"
#include "retriever/internal/datastore_format.h"
#include "retriever/internal/key_indexer.h"
#include "retriever/internal/posix_io.h"
#include "retriever/vector_index.h"

namespace rag::retriever {

using internal::BackgroundIndexer;
using internal::DecodeHeader;
using internal::EncodeHeader;
using internal::ErrnoStatus;
using internal::Fd;
using internal::FileKind;
using internal::FileSize;
using internal::FsyncFd;
using internal::Header;
using internal::kDocsKind;
using internal::KeyIndexer;
using internal::kHeaderBytes;
using internal::kKeysKind;
using internal::kKinds;
using internal::kValuesKind;
using internal::OpenFile;
using internal::PathIn;
using internal::PayloadBytes;
using internal::PreadAll;
using internal::PwriteAll;

namespace {

namespace fs = std::filesystem;

// Keys converted per write in Append: 2 MiB of fp16.
constexpr int64_t kAppendChunkHalves = int64_t{1} << 20;

}  // namespace

struct DatastoreWriter::Files {
  std::string path[3];
  Fd fd[3];
  std::unique_ptr<StreamingChecksum> hash[3];
};

// The indexer's thread while rows are appended.
struct DatastoreWriter::Background : BackgroundIndexer {
  using BackgroundIndexer::BackgroundIndexer;
};

namespace {

// Writes a fresh file of `kind` holding only a header for 0 rows, fsynced.
absl::Status CreateEmptyFile(const FileKind& kind, uint32_t width, const std::string& path) {
  RAG_ASSIGN_OR_RETURN(Fd fd, OpenFile(path, O_WRONLY | O_CREAT | O_TRUNC));
  Header h;
  h.width = width;
  unsigned char buf[kHeaderBytes];
  EncodeHeader(kind, h, buf);
  RAG_RETURN_IF_ERROR(PwriteAll(fd.get(), buf, kHeaderBytes, 0, path));
  return FsyncFd(fd.get(), path);
}

// Feeds bytes [kHeaderBytes, kHeaderBytes + len) of `fd` to `state`.
absl::Status HashPayload(int fd, int64_t len, StreamingChecksum* state, const std::string& path) {
  std::vector<char> buf(std::min<int64_t>(len, int64_t{4} << 20));
  int64_t off = 0;
  while (off < len) {
    const size_t want = static_cast<size_t>(std::min<int64_t>(len - off, static_cast<int64_t>(buf.size())));
    RAG_RETURN_IF_ERROR(PreadAll(fd, buf.data(), want, static_cast<int64_t>(kHeaderBytes) + off, path));
    state->Update(buf.data(), want);
    off += static_cast<int64_t>(want);
  }
  return absl::OkStatus();
}

}  // namespace

DatastoreWriter::DatastoreWriter(std::string dir, int dim, std::unique_ptr<Files> files, int64_t rows)
    : dir_(std::move(dir)), dim_(dim), files_(std::move(files)), rows_(rows) {}

DatastoreWriter::~DatastoreWriter() { StopBackground(); }

absl::StatusOr<std::unique_ptr<DatastoreWriter>> DatastoreWriter::Create(const std::string& dir, int dim, bool resume) {
  const std::string context = "datastore '" + dir + "'";
  if (dim <= 0 || dim > kDatastoreMaxDim) {
    return absl::InvalidArgumentError(context + ": dim must be in [1, " + std::to_string(kDatastoreMaxDim) + "], got " +
                                      std::to_string(dim));
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError(context + ": creating the directory: " + ec.message());

  auto files = std::make_unique<Files>();
  for (int i = 0; i < 3; ++i) {
    files->path[i] = PathIn(dir, kKinds[i]->name);
    RAG_ASSIGN_OR_RETURN(StreamingChecksum hash, StreamingChecksum::Create());
    files->hash[i] = std::make_unique<StreamingChecksum>(std::move(hash));
  }
  const std::string index_path = PathIn(dir, kDatastoreIndexFile);
  const bool index_exists = fs::exists(index_path, ec);
  const bool keys_exist = fs::exists(files->path[0], ec);
  const bool any_exist = index_exists || keys_exist || fs::exists(files->path[1], ec) || fs::exists(files->path[2], ec);

  if (!resume && any_exist) {
    return absl::FailedPreconditionError(context + " already holds datastore files; resume it or remove them");
  }
  if (resume && index_exists) {
    return absl::FailedPreconditionError(context + " is already finished (" + kDatastoreIndexFile +
                                         " exists); open it with Datastore::Open");
  }

  int64_t rows = 0;
  if (!keys_exist) {
    // New datastore. keys.f16 appears last, by rename, so a resumed writer
    // that finds it knows the other two were completely created.
    RAG_RETURN_IF_ERROR(Annotate(CreateEmptyFile(kValuesKind, 1, files->path[1]), context));
    RAG_RETURN_IF_ERROR(Annotate(CreateEmptyFile(kDocsKind, 1, files->path[2]), context));
    const std::string tmp = files->path[0] + ".tmp";
    RAG_RETURN_IF_ERROR(Annotate(CreateEmptyFile(kKeysKind, static_cast<uint32_t>(dim), tmp), context));
    RAG_RETURN_IF_ERROR(Annotate(DurableRename(tmp, files->path[0]), context));
    for (int i = 0; i < 3; ++i) {
      RAG_ASSIGN_OR_RETURN(files->fd[i], OpenFile(files->path[i], O_RDWR));
    }
  } else {
    // Resume: the durable row count is the smallest in the three headers
    // (Sync fsyncs the data before any header says it is there).
    Header headers[3];
    rows = std::numeric_limits<int64_t>::max();
    for (int i = 0; i < 3; ++i) {
      auto fd = OpenFile(files->path[i], O_RDWR);
      if (!fd.ok()) {
        if (absl::IsNotFound(fd.status())) {
          return absl::DataLossError(context + ": " + kKinds[i]->name + " is missing");
        }
        return Annotate(fd.status(), context);
      }
      files->fd[i] = std::move(fd).value();
      unsigned char buf[kHeaderBytes] = {};
      const ssize_t got = ::pread(files->fd[i].get(), buf, kHeaderBytes, 0);
      if (got < 0) return ErrnoStatus(context + ": reading '" + files->path[i] + "'", errno);
      RAG_ASSIGN_OR_RETURN(headers[i], DecodeHeader(*kKinds[i], buf, static_cast<size_t>(got), files->path[i]));
      rows = std::min(rows, headers[i].rows);
    }
    if (headers[0].width != static_cast<uint32_t>(dim)) {
      return absl::InvalidArgumentError(context + " has keys of dim " + std::to_string(headers[0].width) +
                                        ", asked to resume with dim " + std::to_string(dim));
    }
    for (int i = 0; i < 3; ++i) {
      const int64_t payload = PayloadBytes(*kKinds[i], headers[i].width, rows);
      RAG_ASSIGN_OR_RETURN(int64_t size, FileSize(files->fd[i].get(), files->path[i]));
      if (payload < 0 || size < static_cast<int64_t>(kHeaderBytes) + payload) {
        return absl::DataLossError(context + ": '" + files->path[i] + "' is shorter (" + std::to_string(size) +
                                   " bytes) than its last checkpoint of " + std::to_string(rows) + " rows");
      }
      // Drop whatever was written after the checkpoint, partial rows included.
      if (::ftruncate(files->fd[i].get(), static_cast<off_t>(kHeaderBytes) + payload) != 0) {
        return ErrnoStatus(context + ": truncating '" + files->path[i] + "'", errno);
      }
      RAG_RETURN_IF_ERROR(Annotate(HashPayload(files->fd[i].get(), payload, files->hash[i].get(), files->path[i]),
                                   context + ": re-reading the stored rows"));
    }
  }
  return std::unique_ptr<DatastoreWriter>(new DatastoreWriter(dir, dim, std::move(files), rows));
}

absl::Status DatastoreWriter::Append(const float* keys, const int32_t* values, const int32_t* docs, int64_t n) {
  const std::string context = "appending to datastore '" + dir_ + "'";
  if (finished_) return absl::FailedPreconditionError(context + ": the writer is finished");
  if (!broken_.ok()) {
    return absl::FailedPreconditionError(context + ": the writer failed earlier (" + broken_.ToString() +
                                         "); resume from the last Sync with a new writer");
  }
  if (n < 0) return absl::InvalidArgumentError(context + ": negative row count " + std::to_string(n));
  if (n == 0) return absl::OkStatus();
  if (keys == nullptr || values == nullptr || docs == nullptr) {
    return absl::InvalidArgumentError(context + ": null keys, values or docs");
  }
  const size_t d = static_cast<size_t>(dim_);
  // Check the whole batch before writing any of it.
  for (int64_t i = 0; i < n; ++i) {
    const float* row = keys + static_cast<size_t>(i) * d;
    for (size_t j = 0; j < d; ++j) {
      if (!(std::fabs(row[j]) < internal::kHalfOverflow)) {  // also catches NaN
        return absl::InvalidArgumentError(context + ": key of row " + std::to_string(i) + " has component " +
                                          std::to_string(j) + " = " + std::to_string(row[j]) +
                                          ", which fp16 cannot hold (finite, |x| < 65520)");
      }
    }
    if (values[i] < 0 || docs[i] < 0) {
      return absl::InvalidArgumentError(context + ": row " + std::to_string(i) + " has value " +
                                        std::to_string(values[i]) + " and doc " + std::to_string(docs[i]) +
                                        "; both must be >= 0");
    }
  }

  absl::Status s = [&]() -> absl::Status {
    // Keys: converted and written a chunk of whole rows at a time.
    const int64_t chunk_rows = std::max<int64_t>(1, kAppendChunkHalves / dim_);
    std::vector<uint16_t> halves(static_cast<size_t>(std::min(chunk_rows, n)) * d);
    for (int64_t r = 0; r < n; r += chunk_rows) {
      const int64_t m = std::min(chunk_rows, n - r);
      const size_t count = static_cast<size_t>(m) * d;
      const float* src = keys + static_cast<size_t>(r) * d;
      for (size_t j = 0; j < count; ++j) halves[j] = FloatToHalf(src[j]);
      const int64_t offset = kDatastoreHeaderBytes + (rows_ + r) * static_cast<int64_t>(d) * 2;
      RAG_RETURN_IF_ERROR(PwriteAll(files_->fd[0].get(), halves.data(), count * 2, offset, files_->path[0]));
      files_->hash[0]->Update(halves.data(), count * 2);
    }
    const size_t bytes = static_cast<size_t>(n) * sizeof(int32_t);
    const int64_t offset = kDatastoreHeaderBytes + rows_ * static_cast<int64_t>(sizeof(int32_t));
    RAG_RETURN_IF_ERROR(PwriteAll(files_->fd[1].get(), values, bytes, offset, files_->path[1]));
    files_->hash[1]->Update(values, bytes);
    RAG_RETURN_IF_ERROR(PwriteAll(files_->fd[2].get(), docs, bytes, offset, files_->path[2]));
    files_->hash[2]->Update(docs, bytes);
    return absl::OkStatus();
  }();
  if (!s.ok()) {
    // The files and running checksums are now out of step: only a resume
    // from the last Sync can go on.
    broken_ = s;
    return Annotate(s, context);
  }
  rows_ += n;
  return absl::OkStatus();
}

absl::Status DatastoreWriter::FsyncAll() {
  for (int i = 0; i < 3; ++i) RAG_RETURN_IF_ERROR(FsyncFd(files_->fd[i].get(), files_->path[i]));
  return absl::OkStatus();
}

absl::Status DatastoreWriter::WriteHeaders(bool with_hashes) {
  for (int i = 0; i < 3; ++i) {
    Header h;
    h.width = i == 0 ? static_cast<uint32_t>(dim_) : 1u;
    h.rows = rows_;
    h.payload_hash = with_hashes ? files_->hash[i]->Digest() : 0;
    unsigned char buf[kHeaderBytes];
    EncodeHeader(*kKinds[i], h, buf);
    RAG_RETURN_IF_ERROR(PwriteAll(files_->fd[i].get(), buf, kHeaderBytes, 0, files_->path[i]));
  }
  return absl::OkStatus();
}

absl::Status DatastoreWriter::Sync() {
  const std::string context = "syncing datastore '" + dir_ + "'";
  if (finished_) return absl::FailedPreconditionError(context + ": the writer is finished");
  if (!broken_.ok())
    return absl::FailedPreconditionError(context + ": the writer failed earlier: " + broken_.ToString());
  // Data first, then the headers that vouch for it.
  absl::Status s = FsyncAll();
  if (s.ok()) s = WriteHeaders(/*with_hashes=*/false);
  if (s.ok()) s = FsyncAll();
  if (!s.ok()) {
    broken_ = s;
    return Annotate(s, context);
  }
  if (background_ != nullptr) background_->Synced(rows_);
  return absl::OkStatus();
}

absl::Status DatastoreWriter::IndexInBackground(const DatastoreFinishOptions& options, int64_t total_rows) {
  const std::string context = "indexing datastore '" + dir_ + "' in the background";
  if (finished_) return absl::FailedPreconditionError(context + ": the writer is finished");
  if (!broken_.ok())
    return absl::FailedPreconditionError(context + ": the writer failed earlier: " + broken_.ToString());
  if (background_ != nullptr) return absl::FailedPreconditionError(context + ": already started");
  if (options.max_train < 0 || options.batch_rows < 0) {
    return absl::InvalidArgumentError(context + ": negative max_train or batch_rows");
  }
  if (total_rows < rows_) {
    return absl::InvalidArgumentError(context + ": total_rows " + std::to_string(total_rows) + " is below the " +
                                      std::to_string(rows_) + " rows already written");
  }
  auto indexer =
      KeyIndexer::Create(options, total_rows, /*prefix_sample=*/true, dim_, files_->fd[0].get(), files_->path[0]);
  if (!indexer.ok()) return Annotate(indexer.status(), context);
  // A resumed writer's rows are durable.
  background_ = std::make_unique<Background>(options, std::move(indexer).value(), rows_);
  return absl::OkStatus();
}

std::string DatastoreWriter::IndexingStatus() const {
  if (background_ == nullptr) return "";
  return background_->Describe();
}

void DatastoreWriter::StopBackground() {
  if (background_ != nullptr) background_->Stop();
}

absl::StatusOr<DatastoreInfo> DatastoreWriter::Finish(const DatastoreFinishOptions& options) {
  const std::string context = "finishing datastore '" + dir_ + "'";
  if (finished_) return absl::FailedPreconditionError(context + ": the writer is already finished");
  if (!broken_.ok())
    return absl::FailedPreconditionError(context + ": the writer failed earlier: " + broken_.ToString());
  if (options.max_train < 0 || options.batch_rows < 0) {
    return absl::InvalidArgumentError(context + ": negative max_train or batch_rows");
  }
  if (background_ != nullptr && !internal::SameFinishOptions(options, background_->options())) {
    return absl::InvalidArgumentError(context + ": the options differ from those given to IndexInBackground");
  }
  finished_ = true;
  const auto started = std::chrono::steady_clock::now();
  const int64_t n = rows_;

  // 1. Checksums into the headers.
  {
    absl::Status s = FsyncAll();
    if (s.ok()) s = WriteHeaders(/*with_hashes=*/true);
    if (s.ok()) s = FsyncAll();
    RAG_RETURN_IF_ERROR(Annotate(s, context));
  }
  const uint64_t keys_payload_hash = files_->hash[0]->Digest();

  // 2. The indexer: the background one, stopped where it got to, or a new one.
  std::unique_ptr<KeyIndexer> indexer;
  if (background_ != nullptr) {
    StopBackground();
    RAG_RETURN_IF_ERROR(Annotate(background_->status(), context + " (background indexing)"));
    indexer = background_->TakeIndexer();
  } else {
    auto created = KeyIndexer::Create(options, n, /*prefix_sample=*/false, dim_, files_->fd[0].get(), files_->path[0]);
    if (!created.ok()) return Annotate(created.status(), context);
    indexer = std::move(created).value();
  }
  DatastoreInfo info;
  info.rows = n;
  info.dim = dim_;
  info.requested_factory = options.factory;
  info.index_factory = indexer->choice().factory;
  info.factory_note = indexer->choice().note;

  // 3. Training on a seeded sample, unless done in the background.
  if (!indexer->trained()) {
    Progress progress("datastore: training '" + info.index_factory + "'", 1, "runs");
    if (options.show_progress) progress.Update(0);
    RAG_RETURN_IF_ERROR(Annotate(indexer->Train(n), context));
    if (options.show_progress) {
      progress.Update(1, "on " + HumanCount(static_cast<double>(indexer->train_rows())) + " keys");
      progress.Finish("on " + HumanCount(static_cast<double>(indexer->train_rows())) + " keys");
    }
  }
  info.train_rows = indexer->train_rows();

  // 4. Adding the keys not yet added, a batch at a time, re-reading
  // keys.f16: the reads also re-check the payload against its checksum.
  {
    Progress progress("datastore: indexing keys", n, "keys");
    if (options.show_progress) progress.Update(indexer->added());
    for (int64_t r = indexer->added(); r < n;) {
      r = std::min(n, r + std::max<int64_t>(1, n / 100));
      RAG_RETURN_IF_ERROR(Annotate(indexer->AddUpTo(r), context));
      if (options.show_progress) progress.Update(r);
    }
    if (options.show_progress) progress.Finish();
    if (indexer->payload_hash() != keys_payload_hash) {
      return absl::DataLossError(context + ": '" + files_->path[0] +
                                 "' changed on disk while it was written (checksum mismatch on re-reading)");
    }
  }

  // 5. keys.faiss last: its presence marks the datastore finished.
  const std::string index_path = PathIn(dir_, kDatastoreIndexFile);
  RAG_RETURN_IF_ERROR(Annotate(indexer->index().Save(index_path), context));
  for (const char* name : {kDatastoreKeysFile, kDatastoreValuesFile, kDatastoreDocsFile, kDatastoreIndexFile}) {
    auto hex = HashFileHex(PathIn(dir_, name));
    if (!hex.ok()) return Annotate(hex.status(), context);
    info.checksums[name] = *hex;
  }
  info.index_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return info;
}

absl::StatusOr<DatastoreInfo> DatastoreWriter::FinishWithIndex(const VectorIndex& index) {
  const std::string context = "finishing datastore '" + dir_ + "' with a given index";
  if (finished_) return absl::FailedPreconditionError(context + ": the writer is already finished");
  if (!broken_.ok())
    return absl::FailedPreconditionError(context + ": the writer failed earlier: " + broken_.ToString());
  if (background_ != nullptr) return absl::FailedPreconditionError(context + ": it is indexing in the background");
  if (index.size() != rows_ || index.dim() != dim_) {
    return absl::FailedPreconditionError(context + ": the index holds " + std::to_string(index.size()) +
                                         " keys of dim " + std::to_string(index.dim()) + ", the datastore " +
                                         std::to_string(rows_) + " of dim " + std::to_string(dim_));
  }
  finished_ = true;
  absl::Status s = FsyncAll();
  if (s.ok()) s = WriteHeaders(/*with_hashes=*/true);
  if (s.ok()) s = FsyncAll();
  RAG_RETURN_IF_ERROR(Annotate(s, context));
  // keys.faiss last: its presence marks the datastore finished.
  RAG_RETURN_IF_ERROR(Annotate(index.Save(PathIn(dir_, kDatastoreIndexFile)), context));
  DatastoreInfo info;
  info.rows = rows_;
  info.dim = dim_;
  info.index_factory = index.factory();
  for (const char* name : {kDatastoreKeysFile, kDatastoreValuesFile, kDatastoreDocsFile, kDatastoreIndexFile}) {
    auto hex = HashFileHex(PathIn(dir_, name));
    if (!hex.ok()) return Annotate(hex.status(), context);
    info.checksums[name] = *hex;
  }
  return info;
}

absl::StatusOr<DatastoreIndexPlan> PlanDatastoreIndex(const DatastoreFinishOptions& options, int64_t total, int dim) {
  return internal::PlanDatastoreIndexImpl(options, total, dim);
}

absl::StatusOr<DatastoreInfo> DatastoreWriter::Finish(const std::string& factory, uint64_t seed, bool show_progress) {
  DatastoreFinishOptions options;
  options.factory = factory;
  options.seed = seed;
  options.show_progress = show_progress;
  return Finish(options);
}

}  // namespace rag::retriever

#include "retriever/datastore.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <torch/torch.h>
#include <xxhash.h>

#include <algorithm>
#include <cassert>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <mutex>
#include <random>
#include <shared_mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "common/file_util.h"
#include "common/progress.h"
#include "common/status.h"
#include "retriever/vector_index.h"

namespace rag::retriever {

// The payloads are the host's int32 and uint16 arrays, written and mapped as
// they are: the format is little-endian, so the host must be too.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the datastore format assumes a little-endian host");

namespace {

namespace fs = std::filesystem;

constexpr uint32_t kFormatVersion = kDatastoreFormatVersion;
constexpr size_t kHeaderBytes = static_cast<size_t>(kDatastoreHeaderBytes);
constexpr size_t kHashedHeaderBytes = 32;  // the header checksum covers [0, 32)
constexpr size_t kHeaderEnd = 40;          // then zeros up to kHeaderBytes
constexpr int64_t kMinPointsPerCentroid = 39;
constexpr int64_t kDefaultMaxTrain = 20000;
// Default Finish batch: this many bytes of float32 keys.
constexpr int64_t kAddBatchBytes = int64_t{64} << 20;
// Keys converted per write in Append: 2 MiB of fp16.
constexpr int64_t kAppendChunkHalves = int64_t{1} << 20;
// Smallest float magnitude that rounds to inf in fp16 (65504 + half an ulp).
constexpr float kHalfOverflow = 65520.0f;

// Which of the three data files, and what its header must say.
struct FileKind {
  const char* name;
  char magic[8];
  size_t element_bytes;
};
constexpr FileKind kKeysKind = {kDatastoreKeysFile, {'R', 'A', 'G', 'K', 'E', 'Y', 'S', '1'}, 2};
constexpr FileKind kValuesKind = {kDatastoreValuesFile, {'R', 'A', 'G', 'V', 'A', 'L', 'S', '1'}, 4};
constexpr FileKind kDocsKind = {kDatastoreDocsFile, {'R', 'A', 'G', 'D', 'O', 'C', 'S', '1'}, 4};

void PutU32(unsigned char* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<unsigned char>((v >> (8 * i)) & 0xff);
}
void PutU64(unsigned char* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<unsigned char>((v >> (8 * i)) & 0xff);
}
uint32_t GetU32(const unsigned char* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
uint64_t GetU64(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

struct Header {
  uint32_t version = kFormatVersion;
  uint32_t width = 0;
  int64_t rows = 0;
  uint64_t payload_hash = 0;
};

void EncodeHeader(const FileKind& kind, const Header& h, unsigned char out[kHeaderBytes]) {
  std::memset(out, 0, kHeaderBytes);
  std::memcpy(out, kind.magic, sizeof(kind.magic));
  PutU32(out + 8, h.version);
  PutU32(out + 12, h.width);
  PutU64(out + 16, static_cast<uint64_t>(h.rows));
  PutU64(out + 24, h.payload_hash);
  PutU64(out + 32, XXH3_64bits(out, kHashedHeaderBytes));
}

// Parses and checks a header read from `path` (`got` bytes of it).
absl::StatusOr<Header> DecodeHeader(const FileKind& kind, const unsigned char* p, size_t got, const std::string& path) {
  auto data_loss = [&](const std::string& why) { return absl::DataLossError("'" + path + "': " + why); };
  if (got >= sizeof(kind.magic) && std::memcmp(p, kind.magic, sizeof(kind.magic)) != 0) {
    return data_loss(std::string("not a datastore ") + kind.name + " file (bad magic)");
  }
  if (got < kHeaderBytes) return data_loss("truncated header (" + std::to_string(got) + " bytes)");
  if (GetU64(p + kHashedHeaderBytes) != XXH3_64bits(p, kHashedHeaderBytes)) {
    return data_loss("header checksum mismatch (corrupt file)");
  }
  for (size_t i = kHeaderEnd; i < kHeaderBytes; ++i) {
    if (p[i] != 0) return data_loss("reserved header bytes are not zero (corrupt file)");
  }
  Header h;
  h.version = GetU32(p + 8);
  h.width = GetU32(p + 12);
  h.rows = static_cast<int64_t>(GetU64(p + 16));
  h.payload_hash = GetU64(p + 24);
  if (h.version != kFormatVersion) {
    return absl::FailedPreconditionError("'" + path + "': datastore format version " + std::to_string(h.version) +
                                         ", this build reads version " + std::to_string(kFormatVersion));
  }
  if (h.rows < 0) return data_loss("negative row count in header");
  if (h.width == 0 || h.width > static_cast<uint32_t>(kDatastoreMaxDim)) {
    return data_loss("row width " + std::to_string(h.width) + " in header");
  }
  if (kind.element_bytes == 4 && h.width != 1)
    return data_loss("row width " + std::to_string(h.width) + ", expected 1");
  return h;
}

// Payload bytes of `rows` rows, or -1 when that overflows a file size.
int64_t PayloadBytes(const FileKind& kind, uint32_t width, int64_t rows) {
  const int64_t row_bytes = static_cast<int64_t>(width) * static_cast<int64_t>(kind.element_bytes);
  if (rows > (std::numeric_limits<int64_t>::max() - static_cast<int64_t>(kHeaderBytes)) / row_bytes) return -1;
  return rows * row_bytes;
}

absl::Status ErrnoStatus(const std::string& what, int err) {
  std::string msg = what + ": " + std::strerror(err);
  if (err == ENOENT) return absl::NotFoundError(msg);
  if (err == EACCES || err == EPERM) return absl::PermissionDeniedError(msg);
  if (err == ENOSPC || err == EDQUOT) return absl::ResourceExhaustedError(msg);
  return absl::InternalError(msg);
}

absl::Status PwriteAll(int fd, const void* data, size_t size, int64_t offset, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::pwrite(fd, p, size, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return ErrnoStatus("writing '" + path + "'", n < 0 ? errno : EIO);
    p += n;
    size -= static_cast<size_t>(n);
    offset += n;
  }
  return absl::OkStatus();
}

// Reads exactly `size` bytes; DataLoss if the file ends first.
absl::Status PreadAll(int fd, void* data, size_t size, int64_t offset, const std::string& path) {
  char* p = static_cast<char*>(data);
  while (size > 0) {
    const ssize_t n = ::pread(fd, p, size, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return ErrnoStatus("reading '" + path + "'", errno);
    if (n == 0) return absl::DataLossError("'" + path + "' is shorter than expected (truncated)");
    p += n;
    size -= static_cast<size_t>(n);
    offset += n;
  }
  return absl::OkStatus();
}

// An owned file descriptor.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      if (fd_ >= 0) ::close(fd_);
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  int get() const { return fd_; }

 private:
  int fd_ = -1;
};

using HashState = std::unique_ptr<XXH3_state_t, decltype(&XXH3_freeState)>;

absl::StatusOr<HashState> NewHashState() {
  HashState s(XXH3_createState(), &XXH3_freeState);
  if (s == nullptr || XXH3_64bits_reset(s.get()) != XXH_OK) {
    return absl::ResourceExhaustedError("cannot allocate a hash state");
  }
  return s;
}

// Every half as a float: bulk conversion is a table lookup.
const float* HalfTable() {
  static const float* table = [] {
    auto* t = new float[65536];
    for (uint32_t h = 0; h < 65536; ++h) t[h] = HalfToFloat(static_cast<uint16_t>(h));
    return t;
  }();
  return table;
}

void HalvesToFloats(const uint16_t* in, size_t n, float* out) {
  const float* table = HalfTable();
  for (size_t i = 0; i < n; ++i) out[i] = table[in[i]];
}

// nlist of the first "IVF<n>" component of a factory string, 0 if none.
int64_t NlistOfFactory(const std::string& factory) {
  size_t pos = factory.find("IVF");
  if (pos == std::string::npos) return 0;
  int64_t nlist = 0;
  for (size_t i = pos + 3; i < factory.size() && std::isdigit(static_cast<unsigned char>(factory[i])); ++i) {
    nlist = nlist * 10 + (factory[i] - '0');
    if (nlist > (int64_t{1} << 40)) break;
  }
  return nlist;
}

std::string PathIn(const std::string& dir, const char* name) { return (fs::path(dir) / name).string(); }

absl::StatusOr<Fd> OpenFile(const std::string& path, int flags) {
  const int fd = ::open(path.c_str(), flags | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus("opening '" + path + "'", errno);
  return Fd(fd);
}

absl::Status FsyncFd(int fd, const std::string& path) {
  if (::fsync(fd) != 0) return ErrnoStatus("fsync '" + path + "'", errno);
  return absl::OkStatus();
}

absl::StatusOr<int64_t> FileSize(int fd, const std::string& path) {
  struct stat st;
  if (::fstat(fd, &st) != 0) return ErrnoStatus("stat '" + path + "'", errno);
  if (!S_ISREG(st.st_mode)) return absl::InvalidArgumentError("'" + path + "' is not a regular file");
  return static_cast<int64_t>(st.st_size);
}

}  // namespace

// --- fp16 ---

uint16_t FloatToHalf(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t abs = bits & 0x7fffffffu;
  if (abs >= 0x7f800000u) {  // inf or NaN
    if (abs == 0x7f800000u) return static_cast<uint16_t>(sign | 0x7c00u);
    // NaN: keep the top payload bits, force the quiet bit so it stays a NaN.
    return static_cast<uint16_t>(sign | 0x7e00u | ((abs >> 13) & 0x3ffu));
  }
  if (abs >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520 rounds to inf
  const uint32_t exp = abs >> 23;
  if (abs >= 0x38800000u) {  // >= 2^-14: a normal half
    const uint32_t mant = abs & 0x7fffffu;
    uint32_t h = ((exp - 112u) << 10) | (mant >> 13);
    const uint32_t rem = mant & 0x1fffu;
    // A carry out of the mantissa correctly bumps the exponent.
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
    return static_cast<uint16_t>(sign | h);
  }
  // Subnormal half: the value is mant * 2^(exp - 150) = h * 2^-24 with
  // h = mant >> (126 - exp). Below 2^-25 (exp < 102) everything rounds to 0.
  if (exp < 102) return sign;
  const uint32_t mant = (abs & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126u - exp;  // 14 .. 24
  uint32_t h = mant >> shift;
  const uint32_t rem = mant & ((1u << shift) - 1u);
  const uint32_t half = 1u << (shift - 1u);
  if (rem > half || (rem == half && (h & 1u))) ++h;  // may become the smallest normal, 0x0400
  return static_cast<uint16_t>(sign | h);
}

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {
    // Subnormal: normalise the mantissa.
    uint32_t e = 113;
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      --e;
    }
    bits = sign | (e << 23) | ((mant & 0x3ffu) << 13);
  }
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

// --- DatastoreWriter ---

struct DatastoreWriter::Files {
  std::string path[3];
  Fd fd[3];
  HashState hash[3] = {HashState(nullptr, &XXH3_freeState), HashState(nullptr, &XXH3_freeState),
                       HashState(nullptr, &XXH3_freeState)};
};

namespace {

constexpr const FileKind* kKinds[3] = {&kKeysKind, &kValuesKind, &kDocsKind};

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
absl::Status HashPayload(int fd, int64_t len, XXH3_state_t* state, const std::string& path) {
  std::vector<char> buf(std::min<int64_t>(len, int64_t{4} << 20));
  int64_t off = 0;
  while (off < len) {
    const size_t want = static_cast<size_t>(std::min<int64_t>(len - off, static_cast<int64_t>(buf.size())));
    RAG_RETURN_IF_ERROR(PreadAll(fd, buf.data(), want, static_cast<int64_t>(kHeaderBytes) + off, path));
    XXH3_64bits_update(state, buf.data(), want);
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
    RAG_ASSIGN_OR_RETURN(files->hash[i], NewHashState());
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
      if (!(std::fabs(row[j]) < kHalfOverflow)) {  // also catches NaN
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
      XXH3_64bits_update(files_->hash[0].get(), halves.data(), count * 2);
    }
    const size_t bytes = static_cast<size_t>(n) * sizeof(int32_t);
    const int64_t offset = kDatastoreHeaderBytes + rows_ * static_cast<int64_t>(sizeof(int32_t));
    RAG_RETURN_IF_ERROR(PwriteAll(files_->fd[1].get(), values, bytes, offset, files_->path[1]));
    XXH3_64bits_update(files_->hash[1].get(), values, bytes);
    RAG_RETURN_IF_ERROR(PwriteAll(files_->fd[2].get(), docs, bytes, offset, files_->path[2]));
    XXH3_64bits_update(files_->hash[2].get(), docs, bytes);
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
    h.payload_hash = with_hashes ? XXH3_64bits_digest(files_->hash[i].get()) : 0;
    unsigned char buf[kHeaderBytes];
    EncodeHeader(*kKinds[i], h, buf);
    RAG_RETURN_IF_ERROR(PwriteAll(files_->fd[i].get(), buf, kHeaderBytes, 0, files_->path[i]));
  }
  return absl::OkStatus();
}

namespace {

// Builds keys.faiss from the rows of keys.f16: the factory is chosen for
// `total` rows, training uses a seeded sample of the first train_from()
// rows, and rows are then added in order, a batch at a time, hashing the
// payload as it is read so the caller can check the file still holds what
// was appended. Not thread-safe, except added(), which may be polled.
class KeyIndexer {
 public:
  // `prefix_sample`: sample the training rows from a prefix of the rows
  // (background indexing, which cannot wait for all of them) instead of
  // from all `total`.
  static absl::StatusOr<std::unique_ptr<KeyIndexer>> Create(const DatastoreFinishOptions& options, int64_t total,
                                                            bool prefix_sample, int dim, int keys_fd,
                                                            std::string keys_path) {
    auto k = std::unique_ptr<KeyIndexer>(new KeyIndexer(options, dim, keys_fd, std::move(keys_path)));
    const std::string requested = options.factory.empty() ? VectorIndex::DefaultFactory(total, dim) : options.factory;
    const int64_t trainable = options.max_train > 0 ? std::min(total, options.max_train) : total;
    RAG_ASSIGN_OR_RETURN(k->choice_, VectorIndex::AdaptFactory(requested, trainable, dim));
    RAG_ASSIGN_OR_RETURN(k->index_, VectorIndex::Create(dim, k->choice_.factory));
    RAG_ASSIGN_OR_RETURN(k->payload_hash_, NewHashState());
    if (!k->index_->is_trained()) {
      // 64 keys per IVF list (FAISS wants 39 to 256) and at least 20k, which
      // also covers PQ's 256 codewords per sub-quantizer: training then
      // costs a fixed ~20 s instead of growing with nlist, which matters
      // because the datastore build is measured against the bare forward pass.
      const int64_t nlist = NlistOfFactory(k->choice_.factory);
      const int64_t cap = options.max_train > 0 ? options.max_train : std::max(64 * nlist, kDefaultMaxTrain);
      k->sample_ = std::min(total, cap);
      k->train_from_ = prefix_sample ? std::min(total, std::max(4 * k->sample_, total / 4)) : total;
    }
    const int64_t batch =
        options.batch_rows > 0 ? options.batch_rows : std::max<int64_t>(1, kAddBatchBytes / (4 * int64_t{dim}));
    k->batch_ = batch;
    k->index_->Reserve(total);
    return k;
  }

  bool trained() const { return index_->is_trained(); }
  // Rows that must be written before Train can run.
  int64_t train_from() const { return train_from_; }
  int64_t train_rows() const { return trained_rows_; }
  int64_t added() const { return added_.load(); }
  const FactoryChoice& choice() const { return choice_; }
  uint64_t payload_hash() const { return XXH3_64bits_digest(payload_hash_.get()); }
  const VectorIndex& index() const { return *index_; }

  // Trains on the sample, from the first min(train_from(), rows) rows.
  absl::Status Train(int64_t rows) {
    if (trained()) return absl::OkStatus();
    const int64_t from = std::min(train_from_, rows);
    const int64_t m = std::min(sample_, from);
    const size_t d = static_cast<size_t>(dim_);
    std::vector<float> sample(static_cast<size_t>(m) * d);
    std::vector<uint16_t> row(d);
    const std::vector<int64_t> picked = VectorIndex::SampleRows(from, m, options_.seed);
    for (size_t i = 0; i < picked.size(); ++i) {
      RAG_RETURN_IF_ERROR(PreadAll(keys_fd_, row.data(), d * 2, RowOffset(picked[i]), keys_path_));
      HalvesToFloats(row.data(), d, sample.data() + i * d);
    }
    absl::Status s = index_->Train(sample.data(), m, options_.seed, m);
    if (!s.ok()) {
      // An interrupted FAISS training can leave a half-trained coarse
      // quantizer that a retry would keep: start the next try afresh.
      auto fresh = VectorIndex::Create(dim_, choice_.factory);
      if (fresh.ok()) index_ = std::move(fresh).value();
      return s;
    }
    trained_rows_ = m;
    return absl::OkStatus();
  }

  // Adds rows [added(), rows), a batch at a time; stops between batches
  // (Cancelled) once `*cancel` is true.
  absl::Status AddUpTo(int64_t rows, const std::atomic<bool>* cancel = nullptr) {
    const size_t d = static_cast<size_t>(dim_);
    while (added_.load() < rows) {
      if (cancel != nullptr && cancel->load()) return absl::CancelledError("indexing keys: cancelled");
      const int64_t r = added_.load();
      const int64_t m = std::min(batch_, rows - r);
      const size_t count = static_cast<size_t>(m) * d;
      halves_.resize(count);
      floats_.resize(count);
      RAG_RETURN_IF_ERROR(PreadAll(keys_fd_, halves_.data(), count * 2, RowOffset(r), keys_path_));
      HalvesToFloats(halves_.data(), count, floats_.data());
      RAG_RETURN_IF_ERROR(index_->Add(floats_.data(), m));
      XXH3_64bits_update(payload_hash_.get(), halves_.data(), count * 2);
      added_.store(r + m);
    }
    return absl::OkStatus();
  }

 private:
  KeyIndexer(const DatastoreFinishOptions& options, int dim, int keys_fd, std::string keys_path)
      : options_(options), dim_(dim), keys_fd_(keys_fd), keys_path_(std::move(keys_path)) {}
  int64_t RowOffset(int64_t row) const { return kDatastoreHeaderBytes + row * int64_t{dim_} * 2; }

  DatastoreFinishOptions options_;
  int dim_;
  int keys_fd_;
  std::string keys_path_;
  FactoryChoice choice_;
  std::unique_ptr<VectorIndex> index_;
  HashState payload_hash_{nullptr, &XXH3_freeState};
  int64_t sample_ = 0, train_from_ = 0, trained_rows_ = 0, batch_ = 1;
  std::atomic<int64_t> added_{0};
  std::vector<uint16_t> halves_;
  std::vector<float> floats_;
};

bool SameFinishOptions(const DatastoreFinishOptions& a, const DatastoreFinishOptions& b) {
  return a.factory == b.factory && a.seed == b.seed && a.max_train == b.max_train && a.batch_rows == b.batch_rows;
}

// The calling thread gives way to every other runnable thread of normal
// priority (Linux nice values are per thread). Best effort.
void LowestThreadPriority() { ::setpriority(PRIO_PROCESS, static_cast<id_t>(::syscall(SYS_gettid)), 19); }

}  // namespace

// The indexer and the thread that runs it while rows are appended.
struct DatastoreWriter::Background {
  DatastoreFinishOptions options;
  std::unique_ptr<KeyIndexer> indexer;
  std::thread thread;
  std::atomic<bool> cancel{false};
  std::atomic<bool> training{false};
  mutable std::mutex mu;
  std::condition_variable cv;
  int64_t synced = 0;   // rows durable (written and fsynced) so far; guarded by mu
  absl::Status status;  // the thread's error; guarded by mu

  void Run() {
    LowestThreadPriority();
    absl::Status s = [&]() -> absl::Status {
      // Wait for `rows` synced rows; false once cancelled.
      auto wait_for = [&](int64_t rows, int64_t* available) {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return cancel.load() || synced >= rows; });
        *available = synced;
        return !cancel.load();
      };
      int64_t available = 0;
      if (!indexer->trained()) {
        if (!wait_for(indexer->train_from(), &available)) return absl::OkStatus();
        training = true;
        absl::Status trained;
        {
          // Only training is interrupted inside FAISS (KeyIndexer::Train
          // then starts over); adds stop between batches, so none is half done.
          VectorIndex::CancelScope scope(&cancel);
          trained = indexer->Train(available);
        }
        training = false;
        if (!trained.ok()) return trained;
      }
      while (wait_for(indexer->added() + 1, &available)) {
        absl::Status added = indexer->AddUpTo(available, &cancel);
        if (!added.ok()) return added;
      }
      return absl::OkStatus();
    }();
    // Cancelled work is simply picked up again by Finish.
    if (!s.ok() && !absl::IsCancelled(s)) {
      std::lock_guard<std::mutex> lock(mu);
      status = s;
    }
  }
};

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
  if (background_ != nullptr) {
    {
      std::lock_guard<std::mutex> lock(background_->mu);
      background_->synced = rows_;
    }
    background_->cv.notify_all();
  }
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
  auto bg = std::make_unique<Background>();
  bg->options = options;
  auto indexer = KeyIndexer::Create(options, total_rows, /*prefix_sample=*/true, dim_, files_->fd[0].get(),
                                    files_->path[0]);
  if (!indexer.ok()) return Annotate(indexer.status(), context);
  bg->indexer = std::move(indexer).value();
  bg->synced = rows_;  // a resumed writer's rows are durable
  Background* raw = bg.get();
  bg->thread = std::thread([raw] { raw->Run(); });
  background_ = std::move(bg);
  return absl::OkStatus();
}

std::string DatastoreWriter::IndexingStatus() const {
  if (background_ == nullptr) return "";
  const KeyIndexer& k = *background_->indexer;
  if (background_->training.load()) return "training the index";
  if (!k.trained()) return "index trains after " + HumanCount(static_cast<double>(k.train_from())) + " keys";
  return HumanCount(static_cast<double>(k.added())) + " keys indexed";
}

void DatastoreWriter::StopBackground() {
  if (background_ == nullptr || !background_->thread.joinable()) return;
  {
    std::lock_guard<std::mutex> lock(background_->mu);
    background_->cancel = true;
  }
  background_->cv.notify_all();
  background_->thread.join();
}

absl::StatusOr<DatastoreInfo> DatastoreWriter::Finish(const DatastoreFinishOptions& options) {
  const std::string context = "finishing datastore '" + dir_ + "'";
  if (finished_) return absl::FailedPreconditionError(context + ": the writer is already finished");
  if (!broken_.ok())
    return absl::FailedPreconditionError(context + ": the writer failed earlier: " + broken_.ToString());
  if (options.max_train < 0 || options.batch_rows < 0) {
    return absl::InvalidArgumentError(context + ": negative max_train or batch_rows");
  }
  if (background_ != nullptr && !SameFinishOptions(options, background_->options)) {
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
  const uint64_t keys_payload_hash = XXH3_64bits_digest(files_->hash[0].get());

  // 2. The indexer: the background one, stopped where it got to, or a new one.
  std::unique_ptr<KeyIndexer> indexer;
  if (background_ != nullptr) {
    StopBackground();
    {
      std::lock_guard<std::mutex> lock(background_->mu);
      RAG_RETURN_IF_ERROR(Annotate(background_->status, context + " (background indexing)"));
    }
    indexer = std::move(background_->indexer);
  } else {
    auto created =
        KeyIndexer::Create(options, n, /*prefix_sample=*/false, dim_, files_->fd[0].get(), files_->path[0]);
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

absl::StatusOr<DatastoreInfo> DatastoreWriter::Finish(const std::string& factory, uint64_t seed, bool show_progress) {
  DatastoreFinishOptions options;
  options.factory = factory;
  options.seed = seed;
  options.show_progress = show_progress;
  return Finish(options);
}

// --- Datastore ---

struct Datastore::Mapping {
  void* addr = MAP_FAILED;
  size_t length = 0;
  ~Mapping() {
    if (addr != MAP_FAILED) ::munmap(addr, length);
  }
  const unsigned char* bytes() const { return static_cast<const unsigned char*>(addr); }
};

// added.log: one record per document, each
//   "RAGADD01" | u32 dim | u32 id bytes | i64 n | i32 doc | u32 0 | id |
//   n*dim fp16 keys | n int32 values | u64 XXH3 of the record's bytes before it
// written with one pwrite and an fsync before AddDocumentKeys returns. A
// record cut short by a crash fails its length or checksum: Open stops
// there, and the next append overwrites it.
constexpr char kAddedMagic[8] = {'R', 'A', 'G', 'A', 'D', 'D', '0', '1'};
constexpr size_t kAddedHeaderBytes = 32;
constexpr uint32_t kMaxAddedIdBytes = 1 << 20;

struct Datastore::Added {
  mutable std::shared_mutex mu;  // guards the vectors and doc_ids
  std::vector<float> keys;       // [n, dim], fp16-rounded
  std::vector<int32_t> values, docs;
  std::unordered_set<std::string> doc_ids;
  std::mutex write_mu;     // serializes appends to added.log
  std::string path;
  int64_t valid_bytes = 0;  // whole records at the start of added.log
  Fd fd;                    // opened by the first durable add
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
      if (XXH3_64bits(map->bytes() + kHeaderBytes, static_cast<size_t>(payload)) != headers[i].payload_hash) {
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

absl::Status Datastore::LoadAdded(const std::function<bool(const std::string&)>& keep) {
  std::error_code ec;
  if (!fs::exists(added_->path, ec)) return absl::OkStatus();
  RAG_ASSIGN_OR_RETURN(std::string log, ReadFile(added_->path));
  struct Record {
    std::string id;
    int64_t n;
    int32_t doc;
    size_t keys_at;
  };
  std::vector<Record> records;
  size_t at = 0;
  const size_t d = static_cast<size_t>(dim_);
  while (log.size() - at >= kAddedHeaderBytes) {
    const char* h = log.data() + at;
    uint32_t dim = 0, id_bytes = 0;
    int64_t n = 0;
    int32_t doc = 0;
    std::memcpy(&dim, h + 8, 4);
    std::memcpy(&id_bytes, h + 12, 4);
    std::memcpy(&n, h + 16, 8);
    std::memcpy(&doc, h + 24, 4);
    if (std::memcmp(h, kAddedMagic, 8) != 0 || dim != static_cast<uint32_t>(dim_) || id_bytes == 0 ||
        id_bytes > kMaxAddedIdBytes || n < 0 || n > (int64_t{1} << 32) || doc < 0) {
      break;
    }
    const size_t body = id_bytes + static_cast<size_t>(n) * (d * 2 + 4);
    if (log.size() - at - kAddedHeaderBytes < body + 8) break;
    uint64_t sum = 0;
    std::memcpy(&sum, h + kAddedHeaderBytes + body, 8);
    if (XXH3_64bits(h, kAddedHeaderBytes + body) != sum) break;
    records.push_back({std::string(h + kAddedHeaderBytes, id_bytes), n, doc, at + kAddedHeaderBytes + id_bytes});
    at += kAddedHeaderBytes + body + 8;
  }
  if (at < log.size()) {
    std::fprintf(stderr, "datastore: ignoring %zu bytes at the end of %s (an append cut short)\n", log.size() - at,
                 added_->path.c_str());
  }
  added_->valid_bytes = static_cast<int64_t>(at);
  std::unordered_map<std::string, size_t> last;
  for (size_t i = 0; i < records.size(); ++i) last[records[i].id] = i;
  const float* table = HalfTable();
  for (size_t i = 0; i < records.size(); ++i) {
    const Record& r = records[i];
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
    if (!std::isfinite(keys[i]) || std::fabs(keys[i]) >= 65520.0f) {
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
    std::string record(kAddedHeaderBytes, '\0');
    const uint32_t dim = static_cast<uint32_t>(dim_), id_bytes = static_cast<uint32_t>(doc_id.size());
    std::memcpy(record.data(), kAddedMagic, 8);
    std::memcpy(record.data() + 8, &dim, 4);
    std::memcpy(record.data() + 12, &id_bytes, 4);
    std::memcpy(record.data() + 16, &n, 8);
    std::memcpy(record.data() + 24, &doc, 4);
    record += doc_id;
    record.append(reinterpret_cast<const char*>(halves.data()), halves.size() * 2);
    record.append(reinterpret_cast<const char*>(values), static_cast<size_t>(n) * 4);
    const uint64_t sum = XXH3_64bits(record.data(), record.size());
    record.append(reinterpret_cast<const char*>(&sum), 8);
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

int64_t Datastore::size() const { return rows_ + added_size(); }

int64_t Datastore::added_size() const {
  std::shared_lock<std::shared_mutex> lock(added_->mu);
  return static_cast<int64_t>(added_->values.size());
}

void Datastore::MergeAdded(const float* queries, int64_t nq, int k, const std::vector<int32_t>& exclude_doc,
                           std::vector<std::vector<DatastoreNeighbour>>* out) const {
  const int64_t n = static_cast<int64_t>(added_->values.size());
  if (n == 0 || nq == 0) return;
  // Squared L2 of every query to every added key as |q|^2 + |k|^2 - 2 q.k:
  // one matrix product (a scalar loop cost 50 ms per probe sentence with a
  // few thousand added keys).
  torch::NoGradGuard no_grad;
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
  auto q = torch::from_blob(const_cast<float*>(queries), {nq, dim_}, f32);
  auto keys = torch::from_blob(const_cast<float*>(added_->keys.data()), {n, dim_}, f32);
  auto d2 = (q * q).sum(1, true) + (keys * keys).sum(1).unsqueeze(0) - 2 * torch::mm(q, keys.t());  // [nq, n]
  d2 = d2.clamp_min(0);
  if (!exclude_doc.empty()) {
    auto docs = torch::from_blob(const_cast<int32_t*>(added_->docs.data()), {1, n}, torch::kInt32);
    auto excluded = torch::from_blob(const_cast<int32_t*>(exclude_doc.data()), {nq, 1}, torch::kInt32);
    d2 = d2.masked_fill(docs.eq(excluded), std::numeric_limits<float>::infinity());
  }
  const int64_t take = std::min<int64_t>(k, n);
  auto [dist, idx] = d2.topk(take, /*dim=*/1, /*largest=*/false, /*sorted=*/true);
  dist = dist.contiguous();
  idx = idx.contiguous();
  const float* dp = dist.data_ptr<float>();
  const int64_t* ip = idx.data_ptr<int64_t>();
  const auto nearer = [](const DatastoreNeighbour& a, const DatastoreNeighbour& b) {
    return a.distance < b.distance || (a.distance == b.distance && a.key_id < b.key_id);
  };
  for (int64_t qi = 0; qi < nq; ++qi) {
    std::vector<DatastoreNeighbour>& kept = (*out)[static_cast<size_t>(qi)];
    for (int64_t j = 0; j < take; ++j) {
      const float d = dp[qi * take + j];
      if (!std::isfinite(d)) break;
      const size_t i = static_cast<size_t>(ip[qi * take + j]);
      kept.push_back({rows_ + static_cast<int64_t>(i), added_->values[i], added_->docs[i], d});
    }
    std::sort(kept.begin(), kept.end(), nearer);
    if (static_cast<int>(kept.size()) > k) kept.resize(static_cast<size_t>(k));
  }
}

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

  // Over-retrieve when excluding: 2k, 4k, ... until each query has k
  // eligible keys, the index has no more for it, or kMaxK is reached. Only
  // the queries still short are searched again.
  std::vector<int64_t> pending(limit > 0 ? static_cast<size_t>(nq) : 0);
  for (size_t q = 0; q < pending.size(); ++q) pending[q] = static_cast<int64_t>(q);
  int64_t fetch = any_exclusion ? 2 * static_cast<int64_t>(k) : k;
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
    std::vector<int64_t> still_pending;
    for (int64_t i = 0; i < np; ++i) {
      const int64_t q = pending[static_cast<size_t>(i)];
      const int32_t excluded = excluded_doc(q);
      std::vector<DatastoreNeighbour> kept;
      kept.reserve(static_cast<size_t>(k));
      int64_t found = 0;
      // The k values and docs sit at random rows of two mapped files: ask
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
        if (static_cast<int>(kept.size()) >= k) continue;
        const int32_t doc = doc_data_[id];
        if (excluded >= 0 && doc == excluded) continue;
        kept.push_back({id, value_data_[id], doc, distances[static_cast<size_t>(i * f + j)]});
      }
      // found < f: the index (e.g. the probed IVF lists) has nothing more.
      if (static_cast<int>(kept.size()) >= k || found < f || f >= limit) {
        if (exact) {
          const float* query = queries + static_cast<size_t>(q) * d;
          for (DatastoreNeighbour& nb : kept) nb.distance = ExactDistance(query, nb.key_id);
          std::stable_sort(kept.begin(), kept.end(), [](const DatastoreNeighbour& a, const DatastoreNeighbour& b) {
            return a.distance < b.distance || (a.distance == b.distance && a.key_id < b.key_id);
          });
        }
        (*out)[static_cast<size_t>(q)] = std::move(kept);
      } else {
        still_pending.push_back(q);
      }
    }
    pending = std::move(still_pending);
    fetch = 2 * f;
  }
  // Keys added after the build: few, so searched exactly, and merged in.
  if (has_added) MergeAdded(queries, nq, k, exclude_doc, out);
  return absl::OkStatus();
}

}  // namespace rag::retriever

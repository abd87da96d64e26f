#include "retriever/datastore.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cassert>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <random>
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

std::string Hex(uint64_t h) {
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(h));
  return buf;
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

DatastoreWriter::~DatastoreWriter() = default;

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
  return absl::OkStatus();
}

absl::StatusOr<DatastoreInfo> DatastoreWriter::Finish(const DatastoreFinishOptions& options) {
  const std::string context = "finishing datastore '" + dir_ + "'";
  if (finished_) return absl::FailedPreconditionError(context + ": the writer is already finished");
  if (!broken_.ok())
    return absl::FailedPreconditionError(context + ": the writer failed earlier: " + broken_.ToString());
  if (options.max_train < 0 || options.batch_rows < 0) {
    return absl::InvalidArgumentError(context + ": negative max_train or batch_rows");
  }
  finished_ = true;
  const auto started = std::chrono::steady_clock::now();
  const int64_t n = rows_;
  const size_t d = static_cast<size_t>(dim_);

  // 1. Checksums into the headers.
  {
    absl::Status s = FsyncAll();
    if (s.ok()) s = WriteHeaders(/*with_hashes=*/true);
    if (s.ok()) s = FsyncAll();
    RAG_RETURN_IF_ERROR(Annotate(s, context));
  }
  const uint64_t keys_payload_hash = XXH3_64bits_digest(files_->hash[0].get());

  // 2. The index factory.
  DatastoreInfo info;
  info.rows = n;
  info.dim = dim_;
  info.requested_factory = options.factory;
  const std::string requested = options.factory.empty() ? VectorIndex::DefaultFactory(n, dim_) : options.factory;
  const int64_t trainable = options.max_train > 0 ? std::min(n, options.max_train) : n;
  auto adapted = VectorIndex::AdaptFactory(requested, trainable, dim_);
  if (!adapted.ok()) return Annotate(adapted.status(), context);
  const FactoryChoice choice = std::move(adapted).value();
  info.index_factory = choice.factory;
  info.factory_note = choice.note;
  auto created = VectorIndex::Create(dim_, choice.factory);
  if (!created.ok()) return Annotate(created.status(), context);
  std::unique_ptr<VectorIndex> index = std::move(created).value();

  const int keys_fd = files_->fd[0].get();
  const std::string& keys_path = files_->path[0];
  const int64_t row_bytes = static_cast<int64_t>(d) * 2;

  // 3. Training on a seeded sample, read row by row from keys.f16.
  if (!index->is_trained()) {
    const int64_t nlist = NlistOfFactory(choice.factory);
    // 64 keys per IVF list (FAISS wants 39 to 256) and at least 20k, which
    // also covers PQ's 256 codewords per sub-quantizer: training then costs
    // a fixed ~20 s instead of growing with nlist, which matters because
    // the datastore build is measured against the bare forward pass.
    const int64_t cap = options.max_train > 0 ? options.max_train : std::max(64 * nlist, kDefaultMaxTrain);
    const int64_t m = std::min(n, cap);
    Progress progress("datastore: training '" + choice.factory + "'", m, "keys");
    if (options.show_progress) progress.Update(0);
    std::vector<float> sample(static_cast<size_t>(m) * d);
    {
      std::vector<uint16_t> row(d);
      const std::vector<int64_t> rows = VectorIndex::SampleRows(n, m, options.seed);
      for (size_t i = 0; i < rows.size(); ++i) {
        RAG_RETURN_IF_ERROR(Annotate(PreadAll(keys_fd, row.data(), static_cast<size_t>(row_bytes),
                                              kDatastoreHeaderBytes + rows[i] * row_bytes, keys_path),
                                     context));
        HalvesToFloats(row.data(), d, sample.data() + i * d);
      }
    }
    RAG_RETURN_IF_ERROR(Annotate(index->Train(sample.data(), m, options.seed, m), context));
    info.train_rows = m;
    if (options.show_progress) {
      progress.Update(m);
      progress.Finish();
    }
  }

  // 4. Adding every key, a batch at a time, re-reading keys.f16 from its
  // first byte: the same pass checks the payload and hashes the whole file.
  {
    RAG_ASSIGN_OR_RETURN(HashState file_hash, NewHashState());
    RAG_ASSIGN_OR_RETURN(HashState payload_hash, NewHashState());
    unsigned char header[kHeaderBytes];
    RAG_RETURN_IF_ERROR(Annotate(PreadAll(keys_fd, header, kHeaderBytes, 0, keys_path), context));
    XXH3_64bits_update(file_hash.get(), header, kHeaderBytes);

    const int64_t batch =
        options.batch_rows > 0 ? options.batch_rows : std::max<int64_t>(1, kAddBatchBytes / (4 * dim_));
    index->Reserve(n);
    std::vector<uint16_t> halves(static_cast<size_t>(std::min(batch, n)) * d);
    std::vector<float> floats(halves.size());
    Progress progress("datastore: indexing keys", n, "keys");
    if (options.show_progress) progress.Update(0);
    for (int64_t r = 0; r < n; r += batch) {
      const int64_t m = std::min(batch, n - r);
      const size_t count = static_cast<size_t>(m) * d;
      RAG_RETURN_IF_ERROR(Annotate(
          PreadAll(keys_fd, halves.data(), count * 2, kDatastoreHeaderBytes + r * row_bytes, keys_path), context));
      XXH3_64bits_update(file_hash.get(), halves.data(), count * 2);
      XXH3_64bits_update(payload_hash.get(), halves.data(), count * 2);
      HalvesToFloats(halves.data(), count, floats.data());
      RAG_RETURN_IF_ERROR(Annotate(index->Add(floats.data(), m), context));
      if (options.show_progress) progress.Update(r + m);
    }
    if (options.show_progress) progress.Finish();
    if (XXH3_64bits_digest(payload_hash.get()) != keys_payload_hash) {
      return absl::DataLossError(context + ": '" + keys_path +
                                 "' changed on disk while it was written (checksum mismatch on re-reading)");
    }
    info.checksums[kDatastoreKeysFile] = Hex(XXH3_64bits_digest(file_hash.get()));
  }

  // 5. keys.faiss last: its presence marks the datastore finished.
  const std::string index_path = PathIn(dir_, kDatastoreIndexFile);
  RAG_RETURN_IF_ERROR(Annotate(index->Save(index_path), context));
  for (const char* name : {kDatastoreValuesFile, kDatastoreDocsFile, kDatastoreIndexFile}) {
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
  return std::unique_ptr<Datastore>(new Datastore(dir, dim, headers[0].rows, std::move(maps[0]), std::move(maps[1]),
                                                  std::move(maps[2]), std::move(index).value(), total_bytes));
}

std::string Datastore::factory() const { return index_->factory(); }

double Datastore::bytes_per_key() const {
  return rows_ == 0 ? 0.0 : static_cast<double>(total_bytes_) / static_cast<double>(rows_);
}

void Datastore::Key(int64_t id, float* out) const {
  assert(id >= 0 && id < rows_);
  HalvesToFloats(key_data_ + static_cast<size_t>(id) * static_cast<size_t>(dim_), static_cast<size_t>(dim_), out);
}

int32_t Datastore::value(int64_t id) const {
  assert(id >= 0 && id < rows_);
  return value_data_[id];
}

int32_t Datastore::doc(int64_t id) const {
  assert(id >= 0 && id < rows_);
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
  if (nq == 0 || limit == 0) return absl::OkStatus();
  const size_t d = static_cast<size_t>(dim_);
  auto excluded_doc = [&](int64_t q) { return exclude_doc.empty() ? -1 : exclude_doc[static_cast<size_t>(q)]; };
  bool any_exclusion = false;
  for (int64_t q = 0; q < nq && !any_exclusion; ++q) any_exclusion = excluded_doc(q) >= 0;

  // Over-retrieve when excluding: 2k, 4k, ... until each query has k
  // eligible keys, the index has no more for it, or kMaxK is reached. Only
  // the queries still short are searched again.
  std::vector<int64_t> pending(static_cast<size_t>(nq));
  for (int64_t q = 0; q < nq; ++q) pending[static_cast<size_t>(q)] = q;
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
  return absl::OkStatus();
}

}  // namespace rag::retriever

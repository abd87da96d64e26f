#include "retriever/vector_index.h"

#include <faiss/IVFlib.h>
#include <faiss/Index.h>
#include <faiss/clone_index.h>
#include <faiss/IndexFlatCodes.h>
#include <faiss/IndexIVF.h>
#include <faiss/IndexIVFPQ.h>
#include <faiss/IndexPQ.h>
#include <faiss/IndexPreTransform.h>
#include <faiss/IndexRefine.h>
#include <faiss/impl/AuxIndexStructures.h>
#include <faiss/impl/FaissException.h>
#include <faiss/impl/io.h>
#include <faiss/index_factory.h>
#include <faiss/index_io.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <mutex>
#include <new>
#include <random>
#include <regex>
#include <unordered_set>

#include "common/binary_file.h"
#include "common/file_util.h"
#include "common/stage_timer.h"
#include "common/status.h"
#include "retriever/internal/faiss_calls.h"
#include "retriever/internal/posix_io.h"

namespace rag::retriever {
namespace {

using internal::CoreOf;
using internal::CurrentExceptionToStatus;
using internal::ErrnoStatus;
using internal::FaissThreads;
using internal::NlistOf;
using internal::t_cancel;

constexpr Magic kIndexMagic = {'R', 'A', 'G', 'V', 'I', 'D', 'X', '1'};
constexpr uint32_t kFormatVersion = 1;
constexpr size_t kFixedHeaderBytes = 48;  // Up to the factory string.
constexpr size_t kHeaderHashBytes = 8;
// A factory string is a few dozen characters; anything longer in a header is
// corruption, and bounding it keeps a bad length from allocating much.
constexpr uint32_t kMaxFactoryBytes = 4096;
// FAISS warns below 39 training points per k-means centroid.
constexpr int64_t kMinPointsPerCentroid = 39;

std::string EncodeHeader(int dim, int64_t ntotal, const std::string& factory, uint64_t payload_len,
                         uint64_t payload_hash) {
  std::string h;
  AppendMagic(&h, kIndexMagic);
  AppendU32(&h, kFormatVersion);
  AppendU32(&h, static_cast<uint32_t>(kFixedHeaderBytes + factory.size() + kHeaderHashBytes));
  AppendI32(&h, dim);
  AppendU32(&h, static_cast<uint32_t>(factory.size()));
  AppendI64(&h, ntotal);
  AppendU64(&h, payload_len);
  AppendU64(&h, payload_hash);
  h += factory;
  AppendU64(&h, Checksum64(h));
  return h;
}

// FAISS's one, process-wide interrupt hook, asked from inside its loops on
// the thread running them: here it answers for that thread's CancelScope.
struct ThreadCancelCallback : faiss::InterruptCallback {
  bool want_interrupt() override { return t_cancel != nullptr && t_cancel->load(); }
};

// Builds `factory` for `dim`; InvalidArgument with FAISS's reason if it
// cannot.
absl::StatusOr<std::unique_ptr<faiss::Index>> BuildIndex(int dim, const std::string& factory) {
  if (dim <= 0) return absl::InvalidArgumentError("dimension must be positive, got " + std::to_string(dim));
  if (factory.empty()) return absl::InvalidArgumentError("empty factory string");
  try {
    return std::unique_ptr<faiss::Index>(faiss::index_factory(dim, factory.c_str(), faiss::METRIC_L2));
  } catch (...) {
    return CurrentExceptionToStatus(absl::StatusCode::kInvalidArgument,
                                    "factory '" + factory + "' with dimension " + std::to_string(dim));
  }
}

std::vector<std::string> SplitComponents(const std::string& factory) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    size_t comma = factory.find(',', start);
    parts.push_back(factory.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return parts;
}

std::string JoinComponents(const std::vector<std::string>& parts) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (i > 0) out += ',';
    out += parts[i];
  }
  return out;
}

// Closes a FILE* on scope exit.
struct FileCloser {
  void operator()(FILE* f) const {
    if (f != nullptr) std::fclose(f);
  }
};
using FilePtr = std::unique_ptr<FILE, FileCloser>;

// A FAISS writer that appends to a FILE* and hashes what it writes, so Save
// streams the index once without holding a copy in memory.
struct HashingFileWriter : faiss::IOWriter {
  FILE* f;
  StreamingChecksum* state;
  uint64_t bytes = 0;
  HashingFileWriter(FILE* file, StreamingChecksum* s) : f(file), state(s) {}
  size_t operator()(const void* ptr, size_t size, size_t nitems) override {
    size_t written = std::fwrite(ptr, size, nitems, f);
    state->Update(ptr, size * written);
    bytes += size * written;
    return written;
  }
};

}  // namespace

VectorIndex::VectorIndex(std::unique_ptr<faiss::Index> index, std::string factory, bool read_only)
    : index_(std::move(index)), factory_(std::move(factory)), read_only_(read_only) {}

VectorIndex::~VectorIndex() = default;

std::string VectorIndex::DefaultFactory(int64_t n, int dim) {
  if (n < 20000) return "Flat";
  int64_t nlist = int64_t{1} << static_cast<int>(std::lround(std::log2(4.0 * std::sqrt(static_cast<double>(n)))));
  while (nlist > 1 && n < kMinPointsPerCentroid * nlist) nlist /= 2;
  int m = 0;
  for (int candidate : {64, 32, 16, 8}) {
    if (dim % candidate == 0 && dim / candidate >= 2) {
      m = candidate;
      break;
    }
  }
  if (m == 0) return "IVF" + std::to_string(nlist) + ",SQ8";
  return "IVF" + std::to_string(nlist) + ",PQ" + std::to_string(m);
}

absl::StatusOr<FactoryChoice> VectorIndex::AdaptFactory(const std::string& requested, int64_t n, int dim) {
  if (n < 0) return absl::InvalidArgumentError("corpus size must be >= 0, got " + std::to_string(n));
  RAG_RETURN_IF_ERROR(BuildIndex(dim, requested).status());

  static const std::regex kIvf(R"(^IVF(\d+)(.*)$)");
  static const std::regex kPq(R"(^(O?PQ)(\d+)(?:x(\d+))?(.*)$)");
  std::vector<std::string> parts = SplitComponents(requested);
  int ivf_part = -1;
  int64_t nlist = 0;
  int64_t pq_min_points = 0;
  std::string pq_name;
  for (size_t i = 0; i < parts.size(); ++i) {
    std::smatch m;
    if (ivf_part < 0 && std::regex_match(parts[i], m, kIvf)) {
      ivf_part = static_cast<int>(i);
      nlist = std::stoll(m[1].str());
    } else if (std::regex_match(parts[i], m, kPq)) {
      int nbits = m[3].matched ? std::stoi(m[3].str()) : 8;
      if (nbits < 1 || nbits > 16) continue;  // FAISS accepted it; leave it to FAISS.
      int64_t need = kMinPointsPerCentroid << nbits;
      if (need > pq_min_points) {
        pq_min_points = need;
        pq_name = parts[i];
      }
    }
  }

  FactoryChoice choice{requested, ""};
  if (pq_min_points > 0 && n < pq_min_points) {
    choice.factory = "Flat";
    choice.note = pq_name + " in '" + requested + "' needs at least " + std::to_string(pq_min_points) +
                  " training vectors (39 per PQ centroid) but there are " + std::to_string(n) +
                  "; using exact 'Flat', which is cheap at this size.";
    return choice;
  }
  if (ivf_part >= 0 && n < kMinPointsPerCentroid * nlist) {
    if (n == 0) {
      choice.factory = "Flat";
      choice.note = "'" + requested + "' cannot be trained on an empty corpus; using exact 'Flat'.";
      return choice;
    }
    int64_t new_nlist = std::max<int64_t>(1, n / kMinPointsPerCentroid);
    std::smatch m;
    std::regex_match(parts[ivf_part], m, kIvf);
    parts[ivf_part] = "IVF" + std::to_string(new_nlist) + m[2].str();
    choice.factory = JoinComponents(parts);
    choice.note = "IVF" + std::to_string(nlist) + " needs at least " + std::to_string(kMinPointsPerCentroid * nlist) +
                  " training vectors (39 per list) but there are " + std::to_string(n) + "; using IVF" +
                  std::to_string(new_nlist) + " ('" + choice.factory + "').";
    RAG_RETURN_IF_ERROR(Annotate(BuildIndex(dim, choice.factory).status(), "adapted factory from '" + requested + "'"));
  }
  return choice;
}

absl::StatusOr<std::unique_ptr<VectorIndex>> VectorIndex::Create(int dim, const std::string& factory) {
  if (factory.find("IDMap") != std::string::npos) {
    return absl::InvalidArgumentError("factory '" + factory +
                                      "': IDMap is not supported, ids are sequential (the i-th vector added has id i)");
  }
  RAG_ASSIGN_OR_RETURN(std::unique_ptr<faiss::Index> index, BuildIndex(dim, factory));
  return std::unique_ptr<VectorIndex>(new VectorIndex(std::move(index), factory, /*read_only=*/false));
}

bool VectorIndex::is_trained() const { return index_->is_trained; }
int64_t VectorIndex::size() const { return static_cast<int64_t>(index_->ntotal); }
int VectorIndex::dim() const { return index_->d; }
std::string VectorIndex::factory() const { return factory_; }

std::string VectorIndex::FaissVersion() {
  return std::to_string(FAISS_VERSION_MAJOR) + "." + std::to_string(FAISS_VERSION_MINOR) + "." +
         std::to_string(FAISS_VERSION_PATCH);
}

VectorIndex::CancelScope::CancelScope(const std::atomic<bool>* cancel) : previous_(t_cancel) {
  static std::once_flag installed;
  std::call_once(installed, [] { faiss::InterruptCallback::instance.reset(new ThreadCancelCallback()); });
  t_cancel = cancel;
}

VectorIndex::CancelScope::~CancelScope() { t_cancel = previous_; }

absl::Status VectorIndex::Add(const float* x, int64_t n) {
  const std::string context = "adding to index '" + factory_ + "'";
  if (n < 0) return absl::InvalidArgumentError(context + ": negative n");
  if (x == nullptr && n > 0) return absl::InvalidArgumentError(context + ": null data");
  if (read_only_) return absl::FailedPreconditionError(context + ": index is read-only (opened with mmap)");
  if (!index_->is_trained) return absl::FailedPreconditionError(context + ": index is not trained; call Train first");
  if (n == 0) return absl::OkStatus();
  FaissThreads threads;
  try {
    index_->add(n, x);
  } catch (...) {
    return CurrentExceptionToStatus(absl::StatusCode::kInternal, context);
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> VectorIndex::TrainedStateHash() const {
  const std::string context = "hashing the trained state of index '" + factory_ + "'";
  if (read_only_) return absl::FailedPreconditionError(context + ": index is read-only (opened with mmap)");
  try {
    std::unique_ptr<faiss::Index> empty(faiss::clone_index(index_.get()));
    empty->reset();
    faiss::VectorIOWriter writer;
    faiss::write_index(empty.get(), &writer);
    return Checksum64(writer.data.data(), writer.data.size());
  } catch (...) {
    return CurrentExceptionToStatus(absl::StatusCode::kInternal, context);
  }
}

absl::Status VectorIndex::MergeFrom(VectorIndex& other) {
  const std::string context = "merging index '" + other.factory_ + "' into '" + factory_ + "'";
  if (&other == this) return absl::InvalidArgumentError(context + ": an index cannot be merged into itself");
  if (read_only_ || other.read_only_) {
    return absl::FailedPreconditionError(context + ": an index opened with mmap is read-only");
  }
  if (dim() != other.dim()) {
    return absl::FailedPreconditionError(context + ": dim " + std::to_string(dim()) + " vs " +
                                         std::to_string(other.dim()));
  }
  if (factory_ != other.factory_) return absl::FailedPreconditionError(context + ": the factories differ");
  if (!is_trained() || !other.is_trained()) return absl::FailedPreconditionError(context + ": index is not trained");
  RAG_ASSIGN_OR_RETURN(uint64_t mine, TrainedStateHash());
  RAG_ASSIGN_OR_RETURN(uint64_t theirs, other.TrainedStateHash());
  if (mine != theirs) {
    return absl::FailedPreconditionError(context +
                                         ": the indexes were trained separately (their coarse quantizers or "
                                         "codebooks differ); build shards on one `rag build --train-only` index");
  }
  if (other.size() == 0) return absl::OkStatus();
  FaissThreads threads;
  try {
    // An IVF stores each vector's id in its list, so the moved ones are
    // shifted past ours; flat-code indexes number vectors by position and
    // take no shift (FAISS refuses one).
    const faiss::Index::idx_t shift = NlistOf(index_.get()) > 0 ? index_->ntotal : 0;
    index_->check_compatible_for_merge(*other.index_);
    index_->merge_from(*other.index_, shift);
  } catch (...) {
    return CurrentExceptionToStatus(absl::StatusCode::kFailedPrecondition, context);
  }
  return absl::OkStatus();
}

void VectorIndex::Reserve(int64_t n) {
  if (n <= 0 || read_only_) return;
  auto* flat = dynamic_cast<faiss::IndexFlatCodes*>(index_.get());
  if (flat == nullptr) return;
  try {
    flat->codes.reserve(static_cast<size_t>(flat->ntotal + n) * flat->code_size);
  } catch (...) {
    // Best effort: Add will grow the vector itself, or report the failure.
  }
}

absl::Status VectorIndex::Search(const float* queries, int64_t nq, int k, int nprobe, std::vector<float>* distances,
                                 std::vector<int64_t>* ids) const {
  const StageTimer timer(Stage::kSearch);
  const std::string context = "searching index '" + factory_ + "'";
  if (k <= 0 || k > kMaxK) {
    return absl::InvalidArgumentError(context + ": k must be in [1, " + std::to_string(kMaxK) + "], got " +
                                      std::to_string(k));
  }
  if (nq < 0) return absl::InvalidArgumentError(context + ": negative number of queries");
  if (queries == nullptr && nq > 0) return absl::InvalidArgumentError(context + ": null queries");
  if (!index_->is_trained) return absl::FailedPreconditionError(context + ": index is not trained");
  const size_t total = static_cast<size_t>(nq) * static_cast<size_t>(k);
  distances->assign(total, std::numeric_limits<float>::infinity());
  ids->assign(total, -1);
  if (nq == 0) return absl::OkStatus();

  static_assert(sizeof(faiss::Index::idx_t) == sizeof(int64_t), "FAISS ids must be 64-bit");
  auto* out_ids = reinterpret_cast<faiss::Index::idx_t*>(ids->data());
  FaissThreads threads;
  try {
    // nprobe goes in through SearchParameters so that concurrent searches
    // never write to the shared index. FAISS 1.7.3 forwards parameters
    // through IndexPreTransform to IndexIVF, but not through IndexRefine.
    const faiss::Index* top = index_.get();
    const auto* pre = dynamic_cast<const faiss::IndexPreTransform*>(top);
    const faiss::Index* inner = pre != nullptr ? pre->index : top;
    const auto* ivf = dynamic_cast<const faiss::IndexIVF*>(inner);
    if (nprobe <= 0 || NlistOf(top) == 0) {
      index_->search(nq, queries, k, distances->data(), out_ids);
    } else if (ivf != nullptr) {
      faiss::SearchParametersIVF ivf_params;
      ivf_params.nprobe = std::min<size_t>(static_cast<size_t>(nprobe), ivf->nlist);
      faiss::SearchParametersPreTransform pre_params;
      pre_params.index_params = &ivf_params;
      const faiss::SearchParameters* params =
          pre != nullptr ? static_cast<const faiss::SearchParameters*>(&pre_params) : &ivf_params;
      index_->search(nq, queries, k, distances->data(), out_ids, params);
    } else {
      // An IVF FAISS cannot reach with parameters (e.g. under IndexRefine):
      // set nprobe on it, holding the lock so searches do not race on it.
      std::lock_guard<std::mutex> lock(nprobe_mu_);
      faiss::IndexIVF* nested = faiss::ivflib::try_extract_index_ivf(index_.get());
      nested->nprobe = std::min<size_t>(static_cast<size_t>(nprobe), nested->nlist);
      index_->search(nq, queries, k, distances->data(), out_ids);
    }
  } catch (...) {
    return CurrentExceptionToStatus(absl::StatusCode::kInternal, context);
  }
  // FAISS pads with FLT_MAX on some paths and +inf on others: make it one.
  for (size_t i = 0; i < total; ++i) {
    if ((*ids)[i] < 0) (*distances)[i] = std::numeric_limits<float>::infinity();
  }
  return absl::OkStatus();
}

absl::Status VectorIndex::Save(const std::string& path) const {
  const std::string context = "saving index '" + path + "'";
  if (read_only_) {
    // Its lists live in the mapped file; FAISS would write a reference to
    // that file, not the data.
    return absl::FailedPreconditionError(context +
                                         ": index was opened with mmap and is read-only; copy the file "
                                         "or open it without mmap to save it");
  }
  static std::atomic<uint64_t> save_counter{0};
  const std::string tmp = path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(save_counter.fetch_add(1));
  auto fail = [&](absl::Status s) {
    std::remove(tmp.c_str());
    return Annotate(s, context);
  };

  FilePtr file(std::fopen(tmp.c_str(), "wb"));
  if (file == nullptr) return Annotate(ErrnoStatus("creating '" + tmp + "'", errno), context);
  const std::string placeholder = EncodeHeader(dim(), size(), factory_, 0, 0);
  if (std::fwrite(placeholder.data(), 1, placeholder.size(), file.get()) != placeholder.size()) {
    return fail(ErrnoStatus("writing '" + tmp + "'", errno));
  }
  absl::StatusOr<StreamingChecksum> state = StreamingChecksum::Create();
  if (!state.ok()) return fail(state.status());
  uint64_t payload_len = 0;
  try {
    HashingFileWriter writer(file.get(), &*state);
    writer.name = tmp;
    faiss::write_index(index_.get(), &writer);
    payload_len = writer.bytes;
  } catch (...) {
    return fail(CurrentExceptionToStatus(absl::StatusCode::kInternal, "writing FAISS data to '" + tmp + "'"));
  }
  const std::string header = EncodeHeader(dim(), size(), factory_, payload_len, state->Digest());
  if (std::fseek(file.get(), 0, SEEK_SET) != 0 ||
      std::fwrite(header.data(), 1, header.size(), file.get()) != header.size() || std::fflush(file.get()) != 0) {
    return fail(ErrnoStatus("writing '" + tmp + "'", errno));
  }
  if (std::fclose(file.release()) != 0) return fail(ErrnoStatus("closing '" + tmp + "'", errno));
  absl::Status renamed = DurableRename(tmp, path);
  if (!renamed.ok()) return fail(renamed);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<VectorIndex>> VectorIndex::Open(const std::string& path, bool mmap) {
  const std::string context = "loading index '" + path + "'";
  auto data_loss = [&](const std::string& why) { return absl::DataLossError(context + ": " + why); };

  FilePtr file(std::fopen(path.c_str(), "rb"));
  if (file == nullptr) return Annotate(ErrnoStatus("opening", errno), context);
  struct stat st;
  if (::fstat(::fileno(file.get()), &st) != 0) return Annotate(ErrnoStatus("stat", errno), context);
  if (!S_ISREG(st.st_mode)) return absl::InvalidArgumentError(context + ": not a regular file");
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);

  // Header: fixed part, factory string, header checksum.
  const std::string truncated = "file is truncated (" + std::to_string(file_size) + " bytes)";
  unsigned char fixed[kFixedHeaderBytes] = {};
  const size_t head = std::fread(fixed, 1, kFixedHeaderBytes, file.get());
  if (head >= kMagicBytes && !HasMagic(fixed, head, kIndexMagic)) {
    return data_loss("not a VectorIndex file (bad magic; expected a file written by VectorIndex::Save)");
  }
  if (head < kFixedHeaderBytes || file_size < kFixedHeaderBytes + kHeaderHashBytes) return data_loss(truncated);
  const uint32_t version = GetU32(fixed + 8);
  const uint32_t header_len = GetU32(fixed + 12);
  const int32_t dim = GetI32(fixed + 16);
  const uint32_t factory_len = GetU32(fixed + 20);
  const int64_t ntotal = GetI64(fixed + 24);
  const uint64_t payload_len = GetU64(fixed + 32);
  const uint64_t payload_hash = GetU64(fixed + 40);
  if (factory_len > kMaxFactoryBytes)
    return data_loss("corrupt header (factory length " + std::to_string(factory_len) + ")");
  if (file_size < kFixedHeaderBytes + factory_len + kHeaderHashBytes) return data_loss(truncated);
  std::string rest(factory_len + kHeaderHashBytes, '\0');
  if (std::fread(rest.data(), 1, rest.size(), file.get()) != rest.size()) return data_loss(truncated);
  {
    absl::StatusOr<StreamingChecksum> s = StreamingChecksum::Create();
    if (!s.ok()) return Annotate(s.status(), context);
    s->Update(fixed, kFixedHeaderBytes);
    s->Update(rest.data(), factory_len);
    if (s->Digest() != GetU64(rest.data() + factory_len)) return data_loss("header checksum mismatch (corrupt file)");
  }
  if (version != kFormatVersion) {
    return absl::FailedPreconditionError(context + ": format version " + std::to_string(version) +
                                         ", this build reads version " + std::to_string(kFormatVersion));
  }
  if (header_len != kFixedHeaderBytes + factory_len + kHeaderHashBytes || dim <= 0 || ntotal < 0) {
    return data_loss("inconsistent header");
  }
  if (file_size != header_len + payload_len) {
    return data_loss(file_size < header_len + payload_len
                         ? truncated + ", header says " + std::to_string(header_len + payload_len)
                         : "trailing bytes after the index data (" + std::to_string(file_size) +
                               " bytes, header says " + std::to_string(header_len + payload_len) + ")");
  }
  const std::string factory = rest.substr(0, factory_len);

  // Payload checksum, streamed so a large index is never held twice.
  {
    absl::StatusOr<StreamingChecksum> s = StreamingChecksum::Create();
    if (!s.ok()) return Annotate(s.status(), context);
    std::vector<char> buf(1 << 20);
    uint64_t left = payload_len;
    while (left > 0) {
      size_t want = static_cast<size_t>(std::min<uint64_t>(left, buf.size()));
      size_t got = std::fread(buf.data(), 1, want, file.get());
      if (got != want) {
        if (std::ferror(file.get())) return Annotate(ErrnoStatus("reading", errno), context);
        return data_loss(truncated);
      }
      s->Update(buf.data(), got);
      left -= got;
    }
    if (s->Digest() != payload_hash) return data_loss("index data checksum mismatch (corrupt file)");
  }

  // The bytes are what Save wrote: hand them to FAISS. FileIOReader on our
  // FILE* lets FAISS's mmap reader map the file (its offsets are absolute).
  if (std::fseek(file.get(), static_cast<long>(header_len), SEEK_SET) != 0) {
    return Annotate(ErrnoStatus("seeking", errno), context);
  }
  std::unique_ptr<faiss::Index> index;
  try {
    faiss::FileIOReader reader(file.get());
    reader.name = path;
    index.reset(faiss::read_index(&reader, mmap ? faiss::IO_FLAG_MMAP : 0));
  } catch (...) {
    return CurrentExceptionToStatus(absl::StatusCode::kDataLoss, context);
  }
  // FAISS must have consumed exactly the payload. With mmap it does not read
  // the lists, it seeks past them: a payload too short for its lists would
  // otherwise map past the end of the file and crash the first search.
  const long end = std::ftell(file.get());
  if (end < 0 || static_cast<uint64_t>(end) != file_size) {
    return data_loss("FAISS data ends at byte " + std::to_string(end) + " but the file has " +
                     std::to_string(file_size));
  }
  if (index->d != dim || static_cast<int64_t>(index->ntotal) != ntotal) {
    return data_loss("header says dim " + std::to_string(dim) + " and " + std::to_string(ntotal) +
                     " vectors, FAISS data has dim " + std::to_string(index->d) + " and " +
                     std::to_string(index->ntotal));
  }
  if (index->metric_type != faiss::METRIC_L2) return data_loss("index metric is not L2");
  // Only an IVF index actually maps anything; others were read into memory
  // and stay writable.
  const bool read_only = mmap && NlistOf(index.get()) > 0;
  return std::unique_ptr<VectorIndex>(new VectorIndex(std::move(index), factory, read_only));
}

}  // namespace rag::retriever

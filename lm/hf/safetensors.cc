#include "lm/hf/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "common/file_util.h"
#include "common/status.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors data is little-endian; this reader maps it as is");

namespace rag::lm::hf {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// A header larger than this is not a model's (GPT-NeoX-20B's is ~100 KB).
constexpr uint64_t kMaxHeaderBytes = 100u << 20;

struct DtypeInfo {
  const char* name;
  Dtype dtype;
  size_t bytes;
};
constexpr DtypeInfo kDtypes[] = {
    {"F64", Dtype::kF64, 8}, {"F32", Dtype::kF32, 4}, {"F16", Dtype::kF16, 2},  {"BF16", Dtype::kBF16, 2},
    {"I64", Dtype::kI64, 8}, {"I32", Dtype::kI32, 4}, {"I16", Dtype::kI16, 2},  {"I8", Dtype::kI8, 1},
    {"U8", Dtype::kU8, 1},   {"BOOL", Dtype::kBool, 1},
};

absl::Status Bad(const std::string& path, const std::string& what) {
  return absl::DataLossError("safetensors file '" + path + "': " + what);
}

}  // namespace

const char* DtypeName(Dtype dtype) {
  for (const auto& d : kDtypes) {
    if (d.dtype == dtype) return d.name;
  }
  return "?";
}

size_t DtypeBytes(Dtype dtype) {
  for (const auto& d : kDtypes) {
    if (d.dtype == dtype) return d.bytes;
  }
  return 0;
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) munmap(map_, map_bytes_);
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const std::string why = std::strerror(errno);
    if (errno == ENOENT) return absl::NotFoundError("safetensors file '" + path + "' does not exist");
    return absl::UnavailableError("cannot open safetensors file '" + path + "': " + why);
  }
  struct stat st {};
  if (fstat(fd, &st) != 0) {
    ::close(fd);
    return absl::UnavailableError("cannot stat safetensors file '" + path + "'");
  }
  const size_t size = static_cast<size_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    return Bad(path, "truncated (" + std::to_string(size) + " bytes; the header length alone takes 8)");
  }
  void* map = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);  // the mapping keeps the file
  if (map == MAP_FAILED) return absl::UnavailableError("cannot map safetensors file '" + path + "'");
  f->map_ = map;
  f->map_bytes_ = size;
  const auto* base = static_cast<const uint8_t*>(map);

  uint64_t header_bytes = 0;
  std::memcpy(&header_bytes, base, 8);
  if (header_bytes > kMaxHeaderBytes || header_bytes > size - 8) {
    return Bad(path, "header length " + std::to_string(header_bytes) + " runs past the end of the file (" +
                         std::to_string(size) + " bytes): truncated or not safetensors");
  }
  json header;
  try {
    header = json::parse(reinterpret_cast<const char*>(base + 8), reinterpret_cast<const char*>(base + 8 + header_bytes));
  } catch (const json::exception& e) {
    return Bad(path, std::string("header is not JSON: ") + e.what());
  }
  if (!header.is_object()) return Bad(path, "header is not a JSON object");
  const uint8_t* data = base + 8 + header_bytes;
  const uint64_t data_bytes = size - 8 - header_bytes;

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& t = it.value();
    if (name == "__metadata__") {
      if (!t.is_object()) return Bad(path, "__metadata__ is not an object");
      for (auto m = t.begin(); m != t.end(); ++m) {
        if (m.value().is_string()) f->metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = "tensor '" + name + "'";
    if (!t.is_object() || !t.contains("dtype") || !t.contains("shape") || !t.contains("data_offsets") ||
        !t["dtype"].is_string() || !t["shape"].is_array() || !t["data_offsets"].is_array() ||
        t["data_offsets"].size() != 2) {
      return Bad(path, where + " lacks a dtype, shape or [begin, end] data_offsets");
    }
    TensorView v;
    v.name = name;
    const std::string dtype = t["dtype"].get<std::string>();
    bool known = false;
    for (const auto& d : kDtypes) {
      if (dtype == d.name) v.dtype = d.dtype, known = true;
    }
    if (!known) {
      return absl::InvalidArgumentError("safetensors file '" + path + "': " + where + " has dtype '" + dtype +
                                        "', which is not supported (F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL)");
    }
    uint64_t numel = 1;
    for (const json& d : t["shape"]) {
      if (!d.is_number_integer() || d.get<int64_t>() < 0) return Bad(path, where + " has a negative or non-integer dimension");
      v.shape.push_back(d.get<int64_t>());
      numel *= static_cast<uint64_t>(v.shape.back());
    }
    const json& off = t["data_offsets"];
    if (!off[0].is_number_unsigned() || !off[1].is_number_unsigned()) return Bad(path, where + " has non-integer data_offsets");
    const uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
    if (begin > end || end > data_bytes) {
      return Bad(path, where + " spans bytes [" + std::to_string(begin) + ", " + std::to_string(end) +
                           ") of a data section of " + std::to_string(data_bytes) + ": truncated file or bad offsets");
    }
    if (end - begin != numel * DtypeBytes(v.dtype)) {
      return Bad(path, where + " holds " + std::to_string(end - begin) + " bytes but its shape and dtype need " +
                           std::to_string(numel * DtypeBytes(v.dtype)));
    }
    v.data = data + begin;
    v.bytes = end - begin;
    f->names_.push_back(name);
    f->tensors_.emplace(name, std::move(v));
  }
  return f;
}

absl::StatusOr<TensorView> SafetensorsFile::Get(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) return absl::NotFoundError("safetensors file '" + path_ + "' has no tensor '" + name + "'");
  return it->second;
}

absl::StatusOr<std::unique_ptr<SafetensorsWeights>> SafetensorsWeights::Open(const std::string& model_dir) {
  auto w = std::make_unique<SafetensorsWeights>();
  w->dir_ = model_dir;
  const fs::path dir(model_dir);
  const fs::path single = dir / "model.safetensors";
  const fs::path index = dir / "model.safetensors.index.json";
  if (fs::exists(single)) {
    RAG_ASSIGN_OR_RETURN(auto f, SafetensorsFile::Open(single.string()));
    for (const auto& name : f->names()) w->owner_[name] = f.get();
    w->files_.push_back(std::move(f));
    return w;
  }
  if (!fs::exists(index)) {
    return absl::NotFoundError("'" + model_dir + "' holds neither model.safetensors nor model.safetensors.index.json");
  }
  RAG_ASSIGN_OR_RETURN(std::string text, ReadFile(index.string()));
  json map;
  try {
    map = json::parse(text).at("weight_map");
  } catch (const json::exception& e) {
    return absl::DataLossError("'" + index.string() + "' is not a safetensors index (no \"weight_map\" object): " + e.what());
  }
  if (!map.is_object()) return absl::DataLossError("'" + index.string() + "': \"weight_map\" is not an object");
  std::map<std::string, const SafetensorsFile*> by_file;
  for (auto it = map.begin(); it != map.end(); ++it) {
    if (!it.value().is_string()) return absl::DataLossError("'" + index.string() + "': weight_map entry '" + it.key() + "' is not a file name");
    const std::string shard = it.value().get<std::string>();
    if (shard.empty() || shard.find('/') != std::string::npos || shard == "..") {
      return absl::DataLossError("'" + index.string() + "' names shard '" + shard + "', which is not a file of the directory");
    }
    auto found = by_file.find(shard);
    if (found == by_file.end()) {
      RAG_ASSIGN_OR_RETURN(auto f, SafetensorsFile::Open((dir / shard).string()));
      found = by_file.emplace(shard, f.get()).first;
      w->files_.push_back(std::move(f));
    }
    if (!found->second->Has(it.key())) {
      return absl::DataLossError("'" + index.string() + "' maps tensor '" + it.key() + "' to '" + shard +
                                 "', which does not hold it");
    }
    w->owner_[it.key()] = found->second;
  }
  return w;
}

std::vector<std::string> SafetensorsWeights::names() const {
  std::vector<std::string> out;
  for (const auto& [name, file] : owner_) out.push_back(name);
  return out;
}

absl::StatusOr<TensorView> SafetensorsWeights::Get(const std::string& name) const {
  auto it = owner_.find(name);
  if (it == owner_.end()) return absl::NotFoundError("model directory '" + dir_ + "' has no tensor '" + name + "'");
  return it->second->Get(name);
}

std::vector<std::string> SafetensorsWeights::files() const {
  std::vector<std::string> out;
  for (const auto& f : files_) out.push_back(f->path());
  return out;
}

}  // namespace rag::lm::hf

// Reads safetensors files, the Hugging Face weights format: an 8-byte
// little-endian header length N, N bytes of JSON giving each tensor's dtype,
// shape and [begin, end) byte offsets counted from the end of the header
// (plus an optional "__metadata__" object of strings), then the raw
// little-endian tensor data. A file is mapped read-only and tensors are
// views into the mapping, so a loader copies each weight once, straight into
// its parameter. A set of shards (model-0000N-of-0000M.safetensors listed by
// model.safetensors.index.json) reads as one. No LibTorch here.
// Thread-safe: const methods may be called from any number of threads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace rag::lm::hf {

enum class Dtype { kF64, kF32, kF16, kBF16, kI64, kI32, kI16, kI8, kU8, kBool };

// "F32", "BF16", ... as the format spells them.
const char* DtypeName(Dtype dtype);
size_t DtypeBytes(Dtype dtype);

// One tensor of a mapped file. `data` stays valid while its file is open.
struct TensorView {
  std::string name;
  Dtype dtype = Dtype::kF32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t bytes = 0;  // product of shape times DtypeBytes(dtype)

  int64_t numel() const;
};

class SafetensorsFile {
 public:
  // Maps `path` and validates its header: every tensor's dtype known, its
  // shape non-negative, its bytes equal to shape x dtype size and within the
  // file. Errors name the file (and the tensor): NotFound for a missing file,
  // DataLoss for a truncated file, a header that is not JSON or offsets past
  // the end, InvalidArgument for an unknown dtype.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  // Tensor names in header order.
  const std::vector<std::string>& names() const { return names_; }
  bool Has(const std::string& name) const { return tensors_.count(name) > 0; }
  // NotFound naming the file and the tensor when absent.
  absl::StatusOr<TensorView> Get(const std::string& name) const;
  // The header's "__metadata__" strings (e.g. {"format": "pt"}).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  SafetensorsFile() = default;

  std::string path_;
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
  std::vector<std::string> names_;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

// The weights of a model directory: model.safetensors, or the shards that
// model.safetensors.index.json's "weight_map" names (each shard opened once).
class SafetensorsWeights {
 public:
  // NotFound when the directory holds neither file; the errors of
  // SafetensorsFile::Open for a bad shard; DataLoss when the index is not
  // JSON, names a shard outside the directory, or maps a tensor to a shard
  // that lacks it.
  static absl::StatusOr<std::unique_ptr<SafetensorsWeights>> Open(const std::string& model_dir);

  // Every tensor name, sorted.
  std::vector<std::string> names() const;
  bool Has(const std::string& name) const { return owner_.count(name) > 0; }
  // NotFound naming the directory and the tensor when absent.
  absl::StatusOr<TensorView> Get(const std::string& name) const;
  // The files read, in the order opened.
  std::vector<std::string> files() const;

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const SafetensorsFile*> owner_;
};

}  // namespace rag::lm::hf

#include "retriever/manifest.h"

#include <ctime>
#include <filesystem>
#include <stdexcept>
#include <nlohmann/json.hpp>

#include "common/file_util.h"
#include "common/self_checksum.h"
#include "common/status.h"

namespace rag::retriever {

std::string NowUtc() {
  std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

namespace {
using nlohmann::json;

// nlohmann converts a float to an integer without a range check (undefined
// behaviour for 1e33, found by fuzz_manifest): counts must be integers.
int64_t Integer(const json& j, const char* key) {
  const json& v = j.at(key);
  if (!v.is_number_integer()) throw std::invalid_argument(std::string("\"") + key + "\" must be an integer");
  return v.get<int64_t>();
}

int64_t IntegerOr(const json& j, const char* key, int64_t fallback) {
  return j.contains(key) ? Integer(j, key) : fallback;
}
}  // namespace

std::string Manifest::ToJson() const {
  json j;
  j["format_version"] = format_version;
  j["created_by"] = created_by;
  j["created_at"] = created_at;
  j["shard_id"] = shard_id;
  if (shard_count != 1) j["shard_count"] = shard_count;
  j["corpus"] = {{"path", corpus_path}, {"documents", documents}, {"tokens", tokens}, {"bytes", bytes},
                {"documents_added", documents_added}};
  j["chunking"] = {{"chunk_tokens", chunk_tokens}, {"continuation_tokens", continuation_tokens}, {"chunks", chunks}};
  j["model"] = {{"content_hash", model_hash}, {"tokenizer_hash", tokenizer_hash},
                {"embedder", embedder},       {"embedder_hash", embedder_hash}, {"dim", dim}};
  if (!model_architecture.empty()) {
    j["model"]["architecture"] = model_architecture;
    j["model"]["parameters"] = model_parameters;
  }
  j["faiss"] = {{"requested_factory", requested_factory}, {"index_factory", index_factory},
                {"note", factory_note}, {"version", faiss_version}, {"vectors", vectors}};
  if (!trained_index_hash.empty()) j["faiss"]["trained_index_hash"] = trained_index_hash;
  if (datastore_keys > 0) {
    j["datastore"] = {{"keys", datastore_keys}, {"index_factory", datastore_factory}, {"split", datastore_split}};
    if (!datastore_trained_index_hash.empty()) j["datastore"]["trained_index_hash"] = datastore_trained_index_hash;
  }
  j["checksums"] = checksums;
  AddSelfChecksum(&j);
  return j.dump(2) + "\n";
}

absl::StatusOr<Manifest> Manifest::FromJson(const std::string& json_text) {
  json j = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return absl::DataLossError("manifest is not a JSON object");
  Manifest m;
  try {
    m.format_version = static_cast<int>(Integer(j, "format_version"));
    if (m.format_version > kManifestFormatVersion) {
      return absl::FailedPreconditionError("index format version " + std::to_string(m.format_version) +
                                           " is newer than this rag reads (" +
                                           std::to_string(kManifestFormatVersion) + "); upgrade rag");
    }
    if (m.format_version < 1) return absl::DataLossError("manifest has an invalid format_version");
    // Older manifests have no self-checksum; a present one must match.
    if (j.contains(kSelfChecksumKey) && !TakeSelfChecksumMatches(&j)) {
      return absl::DataLossError("manifest is corrupt: its self_checksum does not match its content");
    }
    m.created_by = j.value("created_by", "");
    m.created_at = j.value("created_at", "");
    m.shard_id = static_cast<int>(IntegerOr(j, "shard_id", 0));
    m.shard_count = static_cast<int>(IntegerOr(j, "shard_count", 1));
    if (m.shard_count < 1 || m.shard_id < 0 || m.shard_id >= m.shard_count) {
      return absl::DataLossError("manifest has shard_id " + std::to_string(m.shard_id) + " of shard_count " +
                                 std::to_string(m.shard_count));
    }
    const json& c = j.at("corpus");
    m.corpus_path = c.value("path", "");
    m.documents = Integer(c, "documents");
    m.tokens = Integer(c, "tokens");
    m.bytes = IntegerOr(c, "bytes", 0);
    m.documents_added = IntegerOr(c, "documents_added", 0);
    const json& ch = j.at("chunking");
    m.chunk_tokens = static_cast<int>(Integer(ch, "chunk_tokens"));
    m.continuation_tokens = static_cast<int>(Integer(ch, "continuation_tokens"));
    m.chunks = Integer(ch, "chunks");
    const json& mo = j.at("model");
    m.model_hash = mo.at("content_hash").get<std::string>();
    m.tokenizer_hash = mo.at("tokenizer_hash").get<std::string>();
    m.model_architecture = mo.value("architecture", "");
    m.model_parameters = IntegerOr(mo, "parameters", 0);
    m.embedder = mo.value("embedder", "");
    m.embedder_hash = mo.at("embedder_hash").get<std::string>();
    m.dim = static_cast<int>(Integer(mo, "dim"));
    const json& f = j.at("faiss");
    m.requested_factory = f.value("requested_factory", "");
    m.index_factory = f.at("index_factory").get<std::string>();
    m.factory_note = f.value("note", "");
    m.faiss_version = f.value("version", "");
    m.vectors = Integer(f, "vectors");
    m.trained_index_hash = f.value("trained_index_hash", "");
    m.checksums = j.at("checksums").get<std::map<std::string, std::string>>();
    if (j.contains("datastore")) {
      const json& ds = j.at("datastore");
      m.datastore_keys = Integer(ds, "keys");
      m.datastore_factory = ds.value("index_factory", "");
      m.datastore_split = ds.value("split", "all");
      m.datastore_trained_index_hash = ds.value("trained_index_hash", "");
    }
  } catch (const json::exception& e) {
    return absl::DataLossError(std::string("manifest is malformed: ") + e.what());
  } catch (const std::invalid_argument& e) {
    return absl::DataLossError(std::string("manifest is malformed: ") + e.what());
  }
  if (m.dim < 1 || m.chunks < 0 || m.vectors != m.chunks || m.chunk_tokens < 1) {
    return absl::DataLossError("manifest is inconsistent (dim, chunk or vector counts)");
  }
  return m;
}

absl::StatusOr<Manifest> Manifest::Load(const std::string& index_dir) {
  const std::string path = (std::filesystem::path(index_dir) / kManifestFile).string();
  if (!std::filesystem::is_directory(index_dir)) {
    return absl::NotFoundError("index directory '" + index_dir + "' does not exist");
  }
  if (!std::filesystem::exists(path)) {
    return absl::NotFoundError("'" + index_dir + "' holds no finished index (no " + kManifestFile + ")");
  }
  RAG_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  auto m = FromJson(text);
  if (!m.ok()) return Annotate(m.status(), "reading " + path);
  return m;
}

absl::Status Manifest::Save(const std::string& index_dir) const {
  return WriteFileAtomic((std::filesystem::path(index_dir) / kManifestFile).string(), ToJson());
}

}  // namespace rag::retriever

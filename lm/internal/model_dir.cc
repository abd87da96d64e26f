#include "lm/internal/model_dir.h"

#include <unistd.h>

#include "common/self_checksum.h"

namespace rag::lm {

namespace fs = std::filesystem;
using nlohmann::json;
// model_info.json's format_version from which it carries a self_checksum.
constexpr int64_t kInfoFormatWithChecksum = 2;

absl::StatusOr<std::string> ComputeContentHash(const std::string& dir) {
  RAG_ASSIGN_OR_RETURN(std::string config_text, ReadFile((fs::path(dir) / kConfigFile).string()));
  RAG_ASSIGN_OR_RETURN(std::string tokenizer_hash, HashFileHex((fs::path(dir) / kTokenizerFile).string()));
  RAG_ASSIGN_OR_RETURN(std::string weights_hash, HashFileHex((fs::path(dir) / kWeightsFile).string()));
  return HashHex(config_text + "\n" + tokenizer_hash + "\n" + weights_hash);
}

namespace internal {

absl::StatusOr<json> BeginModelDir(const std::string& dir, const std::string& info_json) {
  json info = json::parse(info_json, nullptr, false);
  if (info.is_discarded() || !info.is_object()) return absl::InvalidArgumentError("model info must be a JSON object");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError("creating model directory '" + dir + "': " + ec.message());
  fs::remove(fs::path(dir) / kInfoFile, ec);
  return info;
}

absl::Status WriteModelFiles(const std::string& dir, const std::shared_ptr<torch::nn::Module>& module,
                             const std::string& config_json, const Tokenizer& tokenizer) {
  const std::string weights = (fs::path(dir) / kWeightsFile).string();
  const std::string tmp = weights + ".tmp." + std::to_string(::getpid());
  try {
    torch::save(module, tmp);
  } catch (const c10::Error& e) {
    return absl::InternalError("saving weights to '" + tmp + "': " + e.what_without_backtrace());
  }
  RAG_RETURN_IF_ERROR(DurableRename(tmp, weights));
  RAG_RETURN_IF_ERROR(WriteFileAtomic((fs::path(dir) / kConfigFile).string(), config_json));
  return tokenizer.Save((fs::path(dir) / kTokenizerFile).string());
}

absl::Status FinishModelDir(const std::string& dir, json info, const std::string& content_hash,
                            const Tokenizer& tokenizer, int64_t parameters) {
  info["content_hash"] = content_hash;
  info["tokenizer_hash"] = tokenizer.Hash();
  info["parameters"] = parameters;
  info["format_version"] = kInfoFormatWithChecksum;
  // The record vouches for the other files; its own checksum makes a damaged
  // byte anywhere in it (not only in the hashes) an error.
  AddSelfChecksum(&info);
  return WriteFileAtomic((fs::path(dir) / kInfoFile).string(), info.dump(2) + "\n");
}

absl::StatusOr<std::string> ReadRecordedContentHash(const std::string& dir, const std::string& kind,
                                                    const std::string& train_command) {
  if (!fs::is_directory(dir)) return absl::NotFoundError("model directory '" + dir + "' does not exist");
  const fs::path info_path = fs::path(dir) / kInfoFile;
  if (!fs::exists(info_path)) {
    return absl::NotFoundError("'" + dir + "' holds no finished " + kind + " (" + kInfoFile +
                               " is missing; was training interrupted? rerun `" + train_command +
                               "` with --resume)");
  }
  RAG_ASSIGN_OR_RETURN(std::string info_text, ReadFile(info_path.string()));
  json info = json::parse(info_text, nullptr, false);
  // Version 1 (before self checksums) is still read: its hashes are checked.
  if (info.is_object() && info.contains("format_version") && info["format_version"].is_number_integer() &&
      info["format_version"].get<int64_t>() >= kInfoFormatWithChecksum) {
    if (!TakeSelfChecksumMatches(&info)) {
      return absl::DataLossError("'" + info_path.string() + "' is corrupt (its self_checksum does not match)");
    }
  }
  if (info.is_discarded() || !info.is_object() || !info.contains("content_hash") ||
      !info["content_hash"].is_string()) {
    return absl::DataLossError("'" + info_path.string() + "' is corrupt (no content_hash)");
  }
  return info["content_hash"].get<std::string>();
}

absl::Status CheckContentHash(const std::string& dir, const std::string& computed, const std::string& recorded) {
  if (computed != recorded) {
    return absl::DataLossError("model directory '" + dir +
                               "' does not match its content hash (a file is corrupt or was modified after training)");
  }
  return absl::OkStatus();
}

absl::StatusOr<Tokenizer> ReadModelTokenizer(const std::string& dir) {
  auto tokenizer = Tokenizer::Load((fs::path(dir) / kTokenizerFile).string());
  if (!tokenizer.ok()) return Annotate(tokenizer.status(), "reading tokenizer");
  return tokenizer;
}

absl::Status LoadModelWeights(const std::string& dir, const std::shared_ptr<torch::nn::Module>& module) {
  const std::string weights = (fs::path(dir) / kWeightsFile).string();
  try {
    torch::load(module, weights);
  } catch (const c10::Error& e) {
    return absl::DataLossError("loading weights from '" + weights + "': " + e.what_without_backtrace());
  }
  module->eval();
  return absl::OkStatus();
}

}  // namespace internal
}  // namespace rag::lm

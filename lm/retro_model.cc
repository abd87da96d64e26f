#include "lm/retro_model.h"

#include <filesystem>
#include <string>
#include <vector>
#include <nlohmann/json.hpp>

#include "common/file_util.h"
#include "common/status.h"
#include "lm/hf/pretrained.h"
#include "lm/internal/model_dir.h"

namespace rag::lm {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// The RETRO directory's own files plus its base LM's hash: changing either
// changes the model.
absl::StatusOr<std::string> RetroContentHash(const std::string& dir, const std::string& base_hash) {
  RAG_ASSIGN_OR_RETURN(std::string own, ComputeContentHash(dir));
  return HashHex("retro\n" + own + "\n" + base_hash);
}

// Copies `from` to `to` through a temporary file, so `to` is never half
// written; streamed, as a pretrained model's weights can be gigabytes.
absl::Status CopyFileAtomic(const std::string& from, const fs::path& to) {
  std::error_code ec;
  if (!fs::is_regular_file(from, ec)) return absl::NotFoundError("'" + from + "' does not exist");
  const std::string tmp = to.string() + ".tmp";
  fs::copy_file(from, tmp, fs::copy_options::overwrite_existing, ec);
  if (ec) return absl::InternalError("copying '" + from + "' to '" + tmp + "': " + ec.message());
  return DurableRename(tmp, to.string());
}

}  // namespace

bool IsRetroModelDir(const std::string& dir) {
  auto text = ReadFile((fs::path(dir) / kConfigFile).string());
  if (!text.ok()) return false;
  json j = json::parse(*text, nullptr, false);
  return j.is_object() && j.contains("arch") && j["arch"] == "retro_lm";
}

RetroModel::RetroModel(RetroConfig config, RetroLM module, std::unique_ptr<LanguageModel> base)
    : config_(std::move(config)), module_(std::move(module)), base_(std::move(base)) {}

absl::Status RetroModel::Save(const std::string& dir, const std::string& base_dir, const std::string& info_json) {
  RAG_ASSIGN_OR_RETURN(json info, internal::BeginModelDir(dir, info_json));

  // base/: a verified copy of the base LM (each file atomically), in its own
  // format: a Hugging Face directory stays one, so base/ opens as it did.
  std::error_code ec;
  const fs::path base = fs::path(dir) / kRetroBaseDir;
  const bool hf_base = hf::IsHfModelDir(base_dir);
  if (fs::weakly_canonical(base_dir, ec) != fs::weakly_canonical(base, ec)) {
    std::vector<std::string> files;
    if (hf_base) {
      RAG_ASSIGN_OR_RETURN(files, hf::HfModelFiles(base_dir));
    } else {
      for (const char* f : {kConfigFile, kTokenizerFile, kWeightsFile, kInfoFile}) {
        files.push_back((fs::path(base_dir) / f).string());  // model_info.json last: it vouches for the rest
      }
    }
    // A previous base of another format or shard count must not linger.
    fs::remove_all(base, ec);
    fs::create_directories(base, ec);
    if (ec) return absl::InternalError("creating '" + base.string() + "': " + ec.message());
    for (const std::string& from : files) RAG_RETURN_IF_ERROR(CopyFileAtomic(from, base / fs::path(from).filename()));
  }
  RAG_ASSIGN_OR_RETURN(std::string base_hash,
                       hf_base ? hf::HfContentHash(base.string()) : ComputeContentHash(base.string()));
  if (!base_->content_hash().empty() && base_hash != base_->content_hash()) {
    return absl::FailedPreconditionError("'" + base_dir + "' is not the base LM this RETRO model was built on");
  }
  if (auto split = ReadFile((fs::path(base_dir) / kSplitFile).string()); split.ok()) {
    RAG_RETURN_IF_ERROR(WriteFileAtomic((fs::path(dir) / kSplitFile).string(), *split));
  }

  RAG_RETURN_IF_ERROR(internal::WriteModelFiles(dir, module_.ptr(), config_.ToJson(), base_->tokenizer()));
  RAG_ASSIGN_OR_RETURN(content_hash_, RetroContentHash(dir, base_hash));
  info["arch"] = "retro";
  info["base_hash"] = base_hash;
  return internal::FinishModelDir(dir, std::move(info), content_hash_, base_->tokenizer(), module_->NumParameters());
}

absl::StatusOr<std::unique_ptr<RetroModel>> RetroModel::Open(const std::string& dir) {
  RAG_ASSIGN_OR_RETURN(std::string recorded,
                       internal::ReadRecordedContentHash(dir, "RETRO model", "rag train --arch retro"));
  auto base = LanguageModel::Open((fs::path(dir) / kRetroBaseDir).string());
  if (!base.ok()) return Annotate(base.status(), "opening the base LM of RETRO model '" + dir + "'");
  if ((*base)->module()->scripted()) {
    return absl::FailedPreconditionError("the base LM of RETRO model '" + dir + "' is a " +
                                         (*base)->identity().format + " model, which RETRO does not support");
  }
  RAG_ASSIGN_OR_RETURN(std::string hash, RetroContentHash(dir, (*base)->content_hash()));
  RAG_RETURN_IF_ERROR(internal::CheckContentHash(dir, hash, recorded));
  RAG_ASSIGN_OR_RETURN(RetroConfig config, internal::ReadModelConfig<RetroConfig>(dir));
  RAG_ASSIGN_OR_RETURN(Tokenizer tokenizer, internal::ReadModelTokenizer(dir));
  if (tokenizer.Hash() != (*base)->tokenizer().Hash()) {
    return absl::FailedPreconditionError("RETRO model '" + dir + "' and its base LM have different tokenizers");
  }
  if (config.decoder.vocab_size < tokenizer.vocab_size()) {
    return absl::DataLossError("tokenizer has " + std::to_string(tokenizer.vocab_size()) +
                               " tokens but the model only " + std::to_string(config.decoder.vocab_size));
  }
  RetroLM module(config);
  RAG_RETURN_IF_ERROR(internal::LoadModelWeights(dir, module.ptr()));
  auto model = std::make_unique<RetroModel>(std::move(config), std::move(module), std::move(*base));
  model->content_hash_ = hash;
  return model;
}

}  // namespace rag::lm

#include "lm/torchscript_lm.h"

#include <torch/script.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <exception>
#include <filesystem>
#include <set>
#include <system_error>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/file_util.h"
#include "common/status.h"
#include "lm/internal/torch_error.h"

namespace rag::lm {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// Message of a LibTorch or TorchScript exception without the C++ backtrace.
// TorchScript's `raise` throws torch::jit::JITException, which is not a
// c10::Error, so callers catch std::exception.
std::string ShapeString(torch::IntArrayRef shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// What config.json says; only these fields describe the model to us.
struct TorchScriptConfig {
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t context = 0;
  std::string architecture;  // "" when config.json names none
};

absl::StatusOr<TorchScriptConfig> ParseConfig(const std::string& text, const std::string& path) {
  auto bad = [&](const std::string& what) { return absl::InvalidArgumentError("'" + path + "': " + what); };
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return bad("not a JSON object");
  if (!j.contains("model_type") || j["model_type"] != kTorchScriptModelType) {
    return bad(std::string("'model_type' must be \"") + kTorchScriptModelType + "\" in a directory with " +
               kTorchScriptFile + ", got " + (j.contains("model_type") ? j["model_type"].dump() : "none"));
  }
  // The ranges are TransformerConfig::Validate's, checked here so the error
  // names the key the user wrote.
  auto read_int = [&](const char* key, int64_t lo, int64_t hi, int64_t* out) -> absl::Status {
    if (!j.contains(key) || j[key].is_null()) return bad(std::string("missing '") + key + "'");
    if (!j[key].is_number_integer()) return bad(std::string("'") + key + "' must be an integer");
    *out = j[key].get<int64_t>();
    if (*out < lo || *out > hi) {
      return bad(std::string("'") + key + "' must be in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                 "], got " + std::to_string(*out));
    }
    return absl::OkStatus();
  };
  TorchScriptConfig c;
  RAG_RETURN_IF_ERROR(read_int("vocab_size", 2, int64_t{1} << 24, &c.vocab_size));
  RAG_RETURN_IF_ERROR(read_int("hidden_size", 1, 16384, &c.hidden_size));
  // The context is the window rag scores and generates in; a model that
  // allows more can declare less here.
  RAG_RETURN_IF_ERROR(read_int("max_position_embeddings", 2, 65536, &c.context));
  if (j.contains("architecture") && !j["architecture"].is_null()) {
    if (!j["architecture"].is_string() || j["architecture"].get<std::string>().empty()) {
      return bad("'architecture' must be a non-empty string");
    }
    c.architecture = j["architecture"].get<std::string>();
  }
  return c;
}

// The parameters' dtype as the safetensors names spell it ("F32"; "mixed"
// when several; "none" for a module without parameters).
std::string StoredDtype(const torch::jit::Module& module) {
  std::set<std::string> names;
  for (const auto& p : module.parameters(/*recurse=*/true)) {
    switch (p.scalar_type()) {
      case torch::kFloat32: names.insert("F32"); break;
      case torch::kFloat16: names.insert("F16"); break;
      case torch::kBFloat16: names.insert("BF16"); break;
      case torch::kFloat64: names.insert("F64"); break;
      default: names.insert(c10::toString(p.scalar_type())); break;
    }
  }
  if (names.empty()) return "none";
  return names.size() == 1 ? *names.begin() : "mixed";
}

// InvalidArgument unless `value` is a float32 Tensor of shape `want`.
absl::Status CheckProbeOutput(const c10::IValue& value, const std::vector<int64_t>& want, const std::string& what) {
  if (!value.isTensor()) {
    return absl::InvalidArgumentError(what + " returned " + value.tagKind() + ", expected a Tensor " +
                                      ShapeString(want));
  }
  const torch::Tensor& t = value.toTensor();
  if (t.scalar_type() != torch::kFloat32) {
    return absl::InvalidArgumentError(what + " returned " + std::string(c10::toString(t.scalar_type())) +
                                      ", expected Float (float32; export the model in fp32)");
  }
  if (!t.sizes().equals(want)) {
    return absl::InvalidArgumentError(what + " returned shape " + ShapeString(t.sizes()) + ", expected " +
                                      ShapeString(want));
  }
  return absl::OkStatus();
}

// Calls hidden() and logits() once on ids [1, 2], so a wrong signature,
// type or width is reported with the file's name at open time.
absl::Status Probe(torch::jit::Module& module, const TorchScriptConfig& c) {
  torch::NoGradGuard no_grad;
  const std::vector<int64_t> ids_shape = {1, 2};
  c10::IValue hidden;
  try {
    hidden = module.run_method("hidden", torch::zeros(ids_shape, torch::kLong));
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError("hidden(ids [1, 2] int64) failed (it must take one Tensor of token ids "
                                      "[B, T]): " + internal::TorchErrorText(e));
  }
  RAG_RETURN_IF_ERROR(CheckProbeOutput(hidden, {1, 2, c.hidden_size},
                                       "hidden(ids [1, 2]) (config.json's hidden_size is " +
                                           std::to_string(c.hidden_size) + ")"));
  c10::IValue logits;
  try {
    logits = module.run_method("logits", hidden.toTensor());
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError("logits(hidden [1, 2, " + std::to_string(c.hidden_size) +
                                      "]) failed (it must take hidden()'s output): " + internal::TorchErrorText(e));
  }
  return CheckProbeOutput(logits, {1, 2, c.vocab_size},
                          "logits(hidden [1, 2, " + std::to_string(c.hidden_size) + "]) (config.json's vocab_size is " +
                              std::to_string(c.vocab_size) + ")");
}

}  // namespace

bool IsTorchScriptModelDir(const std::string& dir) {
  std::error_code ec;
  if (fs::exists(fs::path(dir) / kTorchScriptFile, ec)) return true;
  auto text = ReadFile((fs::path(dir) / kConfigFile).string());
  if (!text.ok()) return false;
  json j = json::parse(*text, nullptr, /*allow_exceptions=*/false);
  return j.is_object() && j.contains("model_type") && j["model_type"] == kTorchScriptModelType;
}

absl::StatusOr<std::unique_ptr<LanguageModel>> OpenTorchScriptModel(const std::string& dir) {
  const std::string config_path = (fs::path(dir) / kConfigFile).string();
  const std::string script_path = (fs::path(dir) / kTorchScriptFile).string();
  auto config_text = ReadFile(config_path);
  if (!config_text.ok()) return Annotate(config_text.status(), "TorchScript model '" + dir + "'");
  RAG_ASSIGN_OR_RETURN(TorchScriptConfig c, ParseConfig(*config_text, config_path));

  std::error_code ec;
  if (!fs::exists(script_path, ec)) {
    return absl::NotFoundError("'" + script_path + "' does not exist (config.json says model_type \"" +
                               kTorchScriptModelType + "\"; examples/export_torchscript.py writes it)");
  }
  if (!fs::is_regular_file(script_path, ec)) {
    return absl::InvalidArgumentError("'" + script_path + "' is not a regular file");
  }
  torch::jit::Module module;
  try {
    module = torch::jit::load(script_path, torch::Device(torch::kCPU));
    module.eval();  // a foreign model's dropout must be off
  } catch (const std::exception& e) {
    return absl::DataLossError("'" + script_path + "' is not a loadable TorchScript archive (write it with " +
                               "torch.jit.save of a traced or scripted module, with a PyTorch whose archives " +
                               "LibTorch " + TORCH_VERSION + " reads): " + internal::TorchErrorText(e));
  }
  for (const char* method : {"hidden", "logits"}) {
    if (!module.find_method(method)) {
      return absl::InvalidArgumentError("'" + script_path + "' has no method '" + method +
                                        "' (a TorchScript LM needs hidden(tokens) and logits(hidden); see "
                                        "examples/README.md)");
    }
  }
  auto probed = Probe(module, c);
  if (!probed.ok()) return Annotate(probed, "'" + script_path + "'");

  auto tokenizer = Tokenizer::LoadHfDirectory(dir);
  if (!tokenizer.ok()) return Annotate(tokenizer.status(), "TorchScript model '" + dir + "'");
  if (tokenizer->vocab_size() > c.vocab_size) {
    return absl::InvalidArgumentError("'" + dir + "': the tokenizer has " + std::to_string(tokenizer->vocab_size()) +
                                      " tokens but config.json's vocab_size is " + std::to_string(c.vocab_size));
  }
  // The hash covers what decides the model's outputs: config.json's bytes,
  // the tokenizer's content and the archive's bytes.
  RAG_ASSIGN_OR_RETURN(std::string script_hash, HashFileHex(script_path));
  const std::string hashed = std::string(kTorchScriptModelType) + "\n" + *config_text + "\n" + tokenizer->Hash() +
                             "\n" + kTorchScriptFile + " " + script_hash;

  ModelIdentity identity;
  identity.format = kTorchScriptModelType;
  identity.architecture = c.architecture;
  if (identity.architecture.empty()) {
    auto type_name = module.type()->name();
    identity.architecture = type_name.has_value() ? type_name->name() : "torchscript";
  }
  identity.stored_dtype = StoredDtype(module);
  identity.content_hash = HashHex(hashed);

  // Only vocab_size, d_model and context describe the scripted model; the
  // rest are placeholders that TransformerConfig::Validate accepts.
  TransformerConfig config;
  config.vocab_size = c.vocab_size;
  config.d_model = c.hidden_size;
  config.context = c.context;
  config.n_layers = 1;
  config.n_heads = 1;
  config.d_ff = c.hidden_size;
  config.positions = "learned";
  config.dropout = 0.0;
  TransformerLM lm{nullptr};
  try {
    lm = TransformerLM(config, std::make_shared<torch::jit::Module>(std::move(module)));
    lm->eval();
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError("'" + script_path + "': " + internal::TorchErrorText(e));
  }
  auto model = std::make_unique<LanguageModel>(std::move(config), *std::move(tokenizer), std::move(lm));
  model->SetIdentity(std::move(identity));
  return model;
}

}  // namespace rag::lm

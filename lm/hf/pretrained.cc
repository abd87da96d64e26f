#include "lm/hf/pretrained.h"

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <set>

#include <nlohmann/json.hpp>

#include "common/file_util.h"
#include "common/status.h"
#include "lm/hf/safetensors.h"

namespace rag::lm::hf {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// Reads typed keys of config.json, naming the key in every error.
class ConfigReader {
 public:
  explicit ConfigReader(const json& j) : j_(j) {}

  bool Has(const std::string& key) const { return j_.contains(key) && !j_[key].is_null(); }

  absl::Status Int(const std::string& key, int64_t* out, bool required = true) const {
    if (!Has(key)) return required ? Missing(key) : absl::OkStatus();
    if (!j_[key].is_number_integer()) return Bad(key, "must be an integer");
    *out = j_[key].get<int64_t>();
    return absl::OkStatus();
  }
  absl::Status Num(const std::string& key, double* out) const {
    if (!Has(key)) return absl::OkStatus();
    if (!j_[key].is_number()) return Bad(key, "must be a number");
    *out = j_[key].get<double>();
    return absl::OkStatus();
  }
  absl::Status Bool(const std::string& key, bool* out) const {
    if (!Has(key)) return absl::OkStatus();
    if (!j_[key].is_boolean()) return Bad(key, "must be true or false");
    *out = j_[key].get<bool>();
    return absl::OkStatus();
  }
  absl::Status Str(const std::string& key, std::string* out) const {
    if (!Has(key)) return absl::OkStatus();
    if (!j_[key].is_string()) return Bad(key, "must be a string");
    *out = j_[key].get<std::string>();
    return absl::OkStatus();
  }
  // InvalidArgument when `key` is present with a value other than `want`:
  // a variant of the architecture our module does not compute.
  absl::Status Require(const std::string& key, const json& want) const {
    if (Has(key) && j_[key] != want) {
      return Bad(key, "is " + j_[key].dump() + "; only " + want.dump() + " is supported");
    }
    return absl::OkStatus();
  }

  static absl::Status Missing(const std::string& key) {
    return absl::InvalidArgumentError("config.json: missing '" + key + "'");
  }
  static absl::Status Bad(const std::string& key, const std::string& what) {
    return absl::InvalidArgumentError("config.json: '" + key + "' " + what);
  }

 private:
  const json& j_;
};

absl::StatusOr<std::string> ActivationFromHf(const std::string& key, const std::string& name) {
  // transformers' ACT2FN: "gelu" is exact (erf); gelu_new and
  // gelu_pytorch_tanh are the same tanh approximation.
  if (name == "gelu") return std::string("gelu");
  if (name == "gelu_new" || name == "gelu_pytorch_tanh") return std::string("gelu_tanh");
  return ConfigReader::Bad(key, "is '" + name + "'; supported: gelu, gelu_new, gelu_pytorch_tanh");
}

absl::Status Gpt2Config(const ConfigReader& r, TransformerConfig& c) {
  RAG_RETURN_IF_ERROR(r.Int("vocab_size", &c.vocab_size));
  RAG_RETURN_IF_ERROR(r.Int("n_embd", &c.d_model));
  RAG_RETURN_IF_ERROR(r.Int("n_layer", &c.n_layers));
  RAG_RETURN_IF_ERROR(r.Int("n_head", &c.n_heads));
  if (r.Has("n_positions")) {
    RAG_RETURN_IF_ERROR(r.Int("n_positions", &c.context));
  } else {
    RAG_RETURN_IF_ERROR(r.Int("n_ctx", &c.context));  // configs before transformers 2.x
  }
  c.d_ff = 4 * c.d_model;  // n_inner: null means 4 x n_embd
  RAG_RETURN_IF_ERROR(r.Int("n_inner", &c.d_ff, /*required=*/false));
  RAG_RETURN_IF_ERROR(r.Num("layer_norm_epsilon", &c.layer_norm_eps));
  std::string act = "gelu_new";
  RAG_RETURN_IF_ERROR(r.Str("activation_function", &act));
  RAG_ASSIGN_OR_RETURN(c.activation, ActivationFromHf("activation_function", act));
  RAG_RETURN_IF_ERROR(r.Bool("tie_word_embeddings", &c.tie_embeddings));
  RAG_RETURN_IF_ERROR(r.Require("scale_attn_weights", true));
  RAG_RETURN_IF_ERROR(r.Require("scale_attn_by_inverse_layer_idx", false));
  RAG_RETURN_IF_ERROR(r.Require("add_cross_attention", false));
  c.positions = "learned";
  return absl::OkStatus();
}

absl::Status NeoxConfig(const json& j, const ConfigReader& r, TransformerConfig& c) {
  RAG_RETURN_IF_ERROR(r.Int("vocab_size", &c.vocab_size));
  RAG_RETURN_IF_ERROR(r.Int("hidden_size", &c.d_model));
  RAG_RETURN_IF_ERROR(r.Int("num_hidden_layers", &c.n_layers));
  RAG_RETURN_IF_ERROR(r.Int("num_attention_heads", &c.n_heads));
  RAG_RETURN_IF_ERROR(r.Int("intermediate_size", &c.d_ff));
  RAG_RETURN_IF_ERROR(r.Int("max_position_embeddings", &c.context));
  RAG_RETURN_IF_ERROR(r.Num("layer_norm_eps", &c.layer_norm_eps));
  std::string act = "gelu";
  RAG_RETURN_IF_ERROR(r.Str("hidden_act", &act));
  RAG_ASSIGN_OR_RETURN(c.activation, ActivationFromHf("hidden_act", act));
  c.parallel_residual = true;  // GPTNeoXConfig's default, as Pythia uses
  RAG_RETURN_IF_ERROR(r.Bool("use_parallel_residual", &c.parallel_residual));
  c.tie_embeddings = false;
  RAG_RETURN_IF_ERROR(r.Bool("tie_word_embeddings", &c.tie_embeddings));
  // Rotary settings: hub checkpoints (transformers < 5) say rotary_pct and
  // rotary_emb_base; transformers 5 writes rope_parameters.
  c.positions = "rotary";
  c.rotary_fraction = 0.25;
  c.rope_base = 10000.0;
  RAG_RETURN_IF_ERROR(r.Num("rotary_pct", &c.rotary_fraction));
  RAG_RETURN_IF_ERROR(r.Num("partial_rotary_factor", &c.rotary_fraction));
  RAG_RETURN_IF_ERROR(r.Num("rotary_emb_base", &c.rope_base));
  RAG_RETURN_IF_ERROR(r.Num("rope_theta", &c.rope_base));
  for (const char* key : {"rope_parameters", "rope_scaling"}) {
    if (!r.Has(key)) continue;
    const json& rope = j[key];
    if (!rope.is_object()) return ConfigReader::Bad(key, "must be an object");
    ConfigReader rr(rope);
    std::string type = "default";
    RAG_RETURN_IF_ERROR(rr.Str("rope_type", &type));
    RAG_RETURN_IF_ERROR(rr.Str("type", &type));
    if (type != "default") {
      return ConfigReader::Bad(std::string(key) + ".rope_type", "is '" + type + "'; only unscaled rotary ('default') is supported");
    }
    RAG_RETURN_IF_ERROR(rr.Num("partial_rotary_factor", &c.rotary_fraction));
    RAG_RETURN_IF_ERROR(rr.Num("rope_theta", &c.rope_base));
  }
  return absl::OkStatus();
}

// One stored tensor as a torch tensor of the stored dtype and shape. When the
// mapped bytes are aligned for the dtype (safetensors writers align them) it
// is a view of the mapping, so loading keeps one copy of the weights: the
// parameter's. Otherwise the bytes are copied into an aligned tensor.
absl::StatusOr<torch::Tensor> StoredTensor(const TensorView& v, const std::string& where) {
  torch::ScalarType type;
  switch (v.dtype) {
    case Dtype::kF32: type = torch::kFloat32; break;
    case Dtype::kF16: type = torch::kFloat16; break;
    case Dtype::kBF16: type = torch::kBFloat16; break;
    case Dtype::kF64: type = torch::kFloat64; break;
    default:
      return absl::InvalidArgumentError(where + ": tensor '" + v.name + "' has dtype " + DtypeName(v.dtype) +
                                        "; weights must be F32, F16, BF16 or F64");
  }
  const auto options = torch::TensorOptions().dtype(type);
  const size_t element = DtypeBytes(v.dtype);
  if (v.bytes > 0 && reinterpret_cast<uintptr_t>(v.data) % element == 0) {
    // Only ever read (copy_ source), so the const_cast never leads to a write.
    return torch::from_blob(const_cast<uint8_t*>(v.data), v.shape, options);
  }
  torch::Tensor t = torch::empty(v.shape, options);
  if (v.bytes > 0) std::memcpy(t.data_ptr(), v.data, v.bytes);
  return t;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Copies named tensors into the module's parameters, checking each shape
// against what config.json implies and remembering which names were used.
class WeightCopier {
 public:
  WeightCopier(const SafetensorsWeights& weights, std::string dir) : weights_(weights), dir_(std::move(dir)) {}

  // `transform` maps the stored tensor (shape `stored`) to the parameter's
  // layout with view operations only (transpose, view, permute), so that
  // copy_ reads the mapping directly and converts the dtype on the way: no
  // temporary the size of a tensor is made (glibc would keep such
  // temporaries in the heap, and loading would hold ~1.5 copies of the weights).
  absl::Status Copy(const std::string& name, const std::vector<int64_t>& stored, torch::Tensor& param,
                    const std::function<torch::Tensor(const torch::Tensor&)>& transform = nullptr) {
    auto view = weights_.Get(name);
    if (!view.ok()) return Annotate(view.status(), "loading '" + dir_ + "'");
    if (view->shape != stored) {
      return absl::InvalidArgumentError("'" + dir_ + "': tensor '" + name + "' has shape " +
                                        ShapeString(view->shape) + " but config.json implies " +
                                        ShapeString(stored));
    }
    RAG_ASSIGN_OR_RETURN(torch::Tensor t, StoredTensor(*view, "'" + dir_ + "'"));
    if (transform) t = transform(t);
    param.view(t.sizes()).copy_(t);
    used_.insert(name);
    dtypes_.insert(DtypeName(view->dtype));
    return absl::OkStatus();
  }

  // InvalidArgument naming the first tensors nothing read, other than
  // buffers transformers stores but recomputes (causal masks, rotary
  // frequencies) and a tied output copy.
  absl::Status CheckAllUsed(const std::vector<std::string>& ignorable_suffixes) const {
    std::vector<std::string> extra;
    for (const std::string& name : weights_.names()) {
      if (used_.count(name)) continue;
      bool ignore = false;
      for (const std::string& s : ignorable_suffixes) {
        ignore = ignore || (name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0);
      }
      if (!ignore) extra.push_back(name);
    }
    if (extra.empty()) return absl::OkStatus();
    std::string list;
    for (size_t i = 0; i < extra.size() && i < 5; ++i) list += (i ? ", " : "") + extra[i];
    return absl::InvalidArgumentError("'" + dir_ + "': " + std::to_string(extra.size()) +
                                      " tensor(s) this architecture does not have (" + list +
                                      "): the checkpoint does not match its config.json");
  }

  std::string StoredDtype() const { return dtypes_.size() == 1 ? *dtypes_.begin() : "mixed"; }

 private:
  const SafetensorsWeights& weights_;
  std::string dir_;
  std::set<std::string> used_;
  std::set<std::string> dtypes_;
};

// "transformer." (GPT2LMHeadModel), "" (GPT2Model, as the hub's gpt2 repo),
// from whichever names the embedding.
absl::StatusOr<std::string> FindPrefix(const SafetensorsWeights& w, const std::string& dir,
                                       const std::string& with_prefix, const std::string& tensor) {
  if (w.Has(with_prefix + tensor)) return with_prefix;
  if (w.Has(tensor)) return std::string();
  return absl::InvalidArgumentError("'" + dir + "': neither '" + with_prefix + tensor + "' nor '" + tensor +
                                    "' is in the weights: not a checkpoint of this model_type");
}

torch::Tensor Transposed(const torch::Tensor& t) { return t.t(); }

absl::Status LoadGpt2(const SafetensorsWeights& w, const std::string& dir, TransformerLMImpl& m,
                      WeightCopier& copy) {
  const TransformerConfig& c = m.config();
  const int64_t d = c.d_model, f = c.d_ff;
  RAG_ASSIGN_OR_RETURN(std::string p, FindPrefix(w, dir, "transformer.", "wte.weight"));
  RAG_RETURN_IF_ERROR(copy.Copy(p + "wte.weight", {c.vocab_size, d}, m.token_embedding->weight));
  RAG_RETURN_IF_ERROR(copy.Copy(p + "wpe.weight", {c.context, d}, m.position_embedding->weight));
  for (int64_t i = 0; i < c.n_layers; ++i) {
    auto& b = m.blocks->at<BlockImpl>(static_cast<size_t>(i));
    const std::string h = p + "h." + std::to_string(i) + ".";
    RAG_RETURN_IF_ERROR(copy.Copy(h + "ln_1.weight", {d}, b.ln_attn->weight));
    RAG_RETURN_IF_ERROR(copy.Copy(h + "ln_1.bias", {d}, b.ln_attn->bias));
    // c_attn's output columns are [q | k | v], each head-major: our layout.
    RAG_RETURN_IF_ERROR(copy.Copy(h + "attn.c_attn.weight", {d, 3 * d}, b.attn->qkv->weight, Transposed));
    RAG_RETURN_IF_ERROR(copy.Copy(h + "attn.c_attn.bias", {3 * d}, b.attn->qkv->bias));
    RAG_RETURN_IF_ERROR(copy.Copy(h + "attn.c_proj.weight", {d, d}, b.attn->proj->weight, Transposed));
    RAG_RETURN_IF_ERROR(copy.Copy(h + "attn.c_proj.bias", {d}, b.attn->proj->bias));
    RAG_RETURN_IF_ERROR(copy.Copy(h + "ln_2.weight", {d}, b.ln_mlp->weight));
    RAG_RETURN_IF_ERROR(copy.Copy(h + "ln_2.bias", {d}, b.ln_mlp->bias));
    RAG_RETURN_IF_ERROR(copy.Copy(h + "mlp.c_fc.weight", {d, f}, b.fc_in->weight, Transposed));
    RAG_RETURN_IF_ERROR(copy.Copy(h + "mlp.c_fc.bias", {f}, b.fc_in->bias));
    RAG_RETURN_IF_ERROR(copy.Copy(h + "mlp.c_proj.weight", {f, d}, b.fc_out->weight, Transposed));
    RAG_RETURN_IF_ERROR(copy.Copy(h + "mlp.c_proj.bias", {d}, b.fc_out->bias));
  }
  RAG_RETURN_IF_ERROR(copy.Copy(p + "ln_f.weight", {d}, m.ln_final->weight));
  RAG_RETURN_IF_ERROR(copy.Copy(p + "ln_f.bias", {d}, m.ln_final->bias));
  if (!c.tie_embeddings) {
    RAG_RETURN_IF_ERROR(copy.Copy("lm_head.weight", {c.vocab_size, d}, m.output->weight));
  }
  // attn.bias / attn.masked_bias: the causal mask as a buffer (older
  // transformers saved it); lm_head.weight: the tied copy of wte.
  std::vector<std::string> ignorable = {".attn.bias", ".attn.masked_bias"};
  if (c.tie_embeddings) ignorable.push_back("lm_head.weight");
  return copy.CheckAllUsed(ignorable);
}

absl::Status LoadNeox(const SafetensorsWeights& w, const std::string& dir, TransformerLMImpl& m,
                      WeightCopier& copy, bool attention_bias) {
  const TransformerConfig& c = m.config();
  const int64_t d = c.d_model, f = c.d_ff, heads = c.n_heads, e = c.head_dim();
  RAG_ASSIGN_OR_RETURN(std::string p, FindPrefix(w, dir, "gpt_neox.", "embed_in.weight"));
  RAG_RETURN_IF_ERROR(copy.Copy(p + "embed_in.weight", {c.vocab_size, d}, m.token_embedding->weight));
  // query_key_value's rows are grouped per head, [H, 3, E]; ours [3, H, E].
  auto regroup_weight = [=](const torch::Tensor& t) { return t.view({heads, 3, e, d}).permute({1, 0, 2, 3}); };
  auto regroup_bias = [=](const torch::Tensor& t) { return t.view({heads, 3, e}).permute({1, 0, 2}); };
  for (int64_t i = 0; i < c.n_layers; ++i) {
    auto& b = m.blocks->at<BlockImpl>(static_cast<size_t>(i));
    const std::string h = p + "layers." + std::to_string(i) + ".";
    RAG_RETURN_IF_ERROR(copy.Copy(h + "input_layernorm.weight", {d}, b.ln_attn->weight));
    RAG_RETURN_IF_ERROR(copy.Copy(h + "input_layernorm.bias", {d}, b.ln_attn->bias));
    RAG_RETURN_IF_ERROR(copy.Copy(h + "post_attention_layernorm.weight", {d}, b.ln_mlp->weight));
    RAG_RETURN_IF_ERROR(copy.Copy(h + "post_attention_layernorm.bias", {d}, b.ln_mlp->bias));
    RAG_RETURN_IF_ERROR(copy.Copy(h + "attention.query_key_value.weight", {3 * d, d}, b.attn->qkv->weight, regroup_weight));
    RAG_RETURN_IF_ERROR(copy.Copy(h + "attention.dense.weight", {d, d}, b.attn->proj->weight));
    if (attention_bias) {
      RAG_RETURN_IF_ERROR(copy.Copy(h + "attention.query_key_value.bias", {3 * d}, b.attn->qkv->bias, regroup_bias));
      RAG_RETURN_IF_ERROR(copy.Copy(h + "attention.dense.bias", {d}, b.attn->proj->bias));
    } else {
      b.attn->qkv->bias.zero_();  // attention_bias: false, no bias terms at all
      b.attn->proj->bias.zero_();
    }
    RAG_RETURN_IF_ERROR(copy.Copy(h + "mlp.dense_h_to_4h.weight", {f, d}, b.fc_in->weight));
    RAG_RETURN_IF_ERROR(copy.Copy(h + "mlp.dense_h_to_4h.bias", {f}, b.fc_in->bias));
    RAG_RETURN_IF_ERROR(copy.Copy(h + "mlp.dense_4h_to_h.weight", {d, f}, b.fc_out->weight));
    RAG_RETURN_IF_ERROR(copy.Copy(h + "mlp.dense_4h_to_h.bias", {d}, b.fc_out->bias));
  }
  RAG_RETURN_IF_ERROR(copy.Copy(p + "final_layer_norm.weight", {d}, m.ln_final->weight));
  RAG_RETURN_IF_ERROR(copy.Copy(p + "final_layer_norm.bias", {d}, m.ln_final->bias));
  if (!c.tie_embeddings) {
    RAG_RETURN_IF_ERROR(copy.Copy("embed_out.weight", {c.vocab_size, d}, m.output->weight));
  }
  // attention.bias / masked_bias / rotary_emb.inv_freq: buffers that older
  // transformers saved and that follow from config.json.
  std::vector<std::string> ignorable = {".attention.bias", ".attention.masked_bias", ".rotary_emb.inv_freq"};
  if (c.tie_embeddings) ignorable.push_back("embed_out.weight");
  return copy.CheckAllUsed(ignorable);
}

}  // namespace


bool IsHfModelDir(const std::string& dir) {
  auto text = ReadFile((fs::path(dir) / kConfigFile).string());
  if (!text.ok()) return false;
  json j = json::parse(*text, nullptr, /*allow_exceptions=*/false);
  return j.is_object() && j.contains("model_type");
}

namespace {

absl::StatusOr<TransformerConfig> ConfigFromHfJson(const json& j, std::string* model_type) {
  ConfigReader r(j);
  std::string type;
  RAG_RETURN_IF_ERROR(r.Str("model_type", &type));
  TransformerConfig c;
  c.dropout = 0.0;  // inference: the checkpoint's dropout settings do not apply
  if (type == "gpt2") {
    RAG_RETURN_IF_ERROR(Gpt2Config(r, c));
  } else if (type == "gpt_neox") {
    RAG_RETURN_IF_ERROR(NeoxConfig(j, r, c));
  } else {
    std::string supported;
    for (const char* t : kSupportedModelTypes) supported += (supported.empty() ? "" : ", ") + std::string(t);
    return absl::InvalidArgumentError("config.json: model_type '" + type + "' is not supported (supported: " +
                                      supported + "; export any other architecture to TorchScript, see examples/)");
  }
  auto valid = c.Validate();
  if (!valid.ok()) return Annotate(valid, "config.json (" + type + ")");
  *model_type = type;
  return c;
}

absl::StatusOr<json> ParseConfig(const std::string& config_json) {
  json j = json::parse(config_json, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return absl::InvalidArgumentError("config.json: not a JSON object");
  return j;
}

// The content hash covers what decides the model's outputs: config.json's
// bytes, the tokenizer's content and every weight file's bytes.
absl::StatusOr<std::string> HashHfModel(const std::string& config_json, const Tokenizer& tokenizer,
                                        const std::vector<std::string>& weight_files) {
  std::string hashed = "huggingface\n" + config_json + "\n" + tokenizer.Hash();
  for (const std::string& file : weight_files) {
    RAG_ASSIGN_OR_RETURN(std::string h, HashFileHex(file));
    hashed += "\n" + fs::path(file).filename().string() + " " + h;
  }
  return HashHex(hashed);
}

}  // namespace

absl::StatusOr<TransformerConfig> ConfigFromHf(const std::string& config_json, std::string* model_type) {
  RAG_ASSIGN_OR_RETURN(json j, ParseConfig(config_json));
  return ConfigFromHfJson(j, model_type);
}

absl::StatusOr<HfCheckpoint> LoadHfCheckpoint(const std::string& dir) {
  const std::string config_path = (fs::path(dir) / kConfigFile).string();
  HfCheckpoint ck;
  RAG_ASSIGN_OR_RETURN(ck.config_json, ReadFile(config_path));
  auto j = ParseConfig(ck.config_json);
  if (!j.ok()) return Annotate(j.status(), "'" + dir + "'");
  auto config = ConfigFromHfJson(*j, &ck.model_type);
  if (!config.ok()) return Annotate(config.status(), "'" + dir + "'");
  ck.config = *config;
  RAG_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsWeights> weights, SafetensorsWeights::Open(dir));
  ck.weight_files = weights->files();

  bool attention_bias = true;
  RAG_RETURN_IF_ERROR(ConfigReader(*j).Bool("attention_bias", &attention_bias));

  torch::NoGradGuard no_grad;
  ck.module = TransformerLM(ck.config);
  WeightCopier copy(*weights, dir);
  if (ck.model_type == "gpt2") {
    RAG_RETURN_IF_ERROR(LoadGpt2(*weights, dir, *ck.module, copy));
  } else {
    RAG_RETURN_IF_ERROR(LoadNeox(*weights, dir, *ck.module, copy, attention_bias));
  }
  ck.stored_dtype = copy.StoredDtype();
  ck.module->eval();
  return ck;
}

absl::StatusOr<std::unique_ptr<LanguageModel>> OpenHfModel(const std::string& dir) {
  RAG_ASSIGN_OR_RETURN(HfCheckpoint ck, LoadHfCheckpoint(dir));
  RAG_ASSIGN_OR_RETURN(Tokenizer tokenizer, Tokenizer::LoadHfDirectory(dir));
  if (tokenizer.vocab_size() > ck.config.vocab_size) {
    return absl::InvalidArgumentError("'" + dir + "': the tokenizer has " + std::to_string(tokenizer.vocab_size()) +
                                      " tokens but config.json's vocab_size is " +
                                      std::to_string(ck.config.vocab_size));
  }
  ModelIdentity identity;
  identity.format = "huggingface";
  identity.architecture = ck.model_type;
  identity.stored_dtype = ck.stored_dtype;
  RAG_ASSIGN_OR_RETURN(identity.content_hash, HashHfModel(ck.config_json, tokenizer, ck.weight_files));
  auto model = std::make_unique<LanguageModel>(ck.config, std::move(tokenizer), ck.module);
  model->SetIdentity(std::move(identity));
  return model;
}

absl::StatusOr<std::vector<std::string>> HfModelFiles(const std::string& dir) {
  const fs::path root(dir);
  std::vector<std::string> files = {(root / kConfigFile).string()};
  // The tokenizer LoadHfDirectory reads: tokenizer.json wins.
  if (fs::exists(root / "tokenizer.json")) {
    files.push_back((root / "tokenizer.json").string());
  } else {
    files.push_back((root / "vocab.json").string());
    files.push_back((root / "merges.txt").string());
  }
  // The weights SafetensorsWeights reads: model.safetensors wins over an index.
  RAG_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsWeights> weights, SafetensorsWeights::Open(dir));
  if (!fs::exists(root / "model.safetensors")) files.push_back((root / "model.safetensors.index.json").string());
  for (const std::string& f : weights->files()) files.push_back(f);
  for (const std::string& f : files) {
    if (!fs::is_regular_file(f)) return absl::NotFoundError("'" + dir + "' has no " + fs::path(f).filename().string());
  }
  // Not read here, but transformers reads them: a copy stays a hub directory.
  for (const char* f : {"tokenizer_config.json", "special_tokens_map.json", "generation_config.json"}) {
    if (fs::is_regular_file(root / f)) files.push_back((root / f).string());
  }
  return files;
}

absl::StatusOr<std::string> HfContentHash(const std::string& dir) {
  RAG_ASSIGN_OR_RETURN(std::string config_json, ReadFile((fs::path(dir) / kConfigFile).string()));
  RAG_ASSIGN_OR_RETURN(Tokenizer tokenizer, Tokenizer::LoadHfDirectory(dir));
  RAG_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsWeights> weights, SafetensorsWeights::Open(dir));
  return HashHfModel(config_json, tokenizer, weights->files());
}

}  // namespace rag::lm::hf

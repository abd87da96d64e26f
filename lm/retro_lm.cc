#include "lm/retro_lm.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <utility>

#include "common/status.h"

namespace rag::lm {

namespace F = torch::nn::functional;

namespace {

using nlohmann::json;

absl::Status BadConfig(const std::string& message) { return absl::InvalidArgumentError("retro config: " + message); }

// q: [..., Tq, E], k, v: [..., Tk, E] -> softmax(q k^T / sqrt(E)) v [..., Tq, E]
torch::Tensor Attend(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
  auto scores = torch::matmul(q, k.transpose(-2, -1)) * (1.0 / std::sqrt(static_cast<double>(q.size(-1))));
  return torch::matmul(torch::softmax(scores, -1), v);
}

}  // namespace

// ---------------------------------------------------------------------------
// RetroConfig

absl::Status RetroConfig::Validate() const {
  RAG_RETURN_IF_ERROR(Annotate(decoder.Validate(), "retro config: decoder"));
  if (decoder.head_dim() % 2 != 0) {
    return BadConfig("decoder: the neighbour encoder uses rotary positions and needs an even head size");
  }
  if (chunk_size < 1 || chunk_size > decoder.context || decoder.context % chunk_size != 0) {
    return BadConfig("chunk_size must be in [1, decoder.context] and divide decoder.context");
  }
  if (neighbours < 1) return BadConfig("neighbours must be >= 1");
  if (neighbour_tokens < 1 || neighbour_tokens > decoder.context) {
    return BadConfig("neighbour_tokens must be in [1, decoder.context]");
  }
  if (encoder_layers < 1 || encoder_layers > 256) return BadConfig("encoder_layers must be in [1, 256]");
  if (cca_positions != "rotary" && cca_positions != "none") return BadConfig("cca_positions must be rotary or none");
  if (align_neighbours < 0) return BadConfig("align_neighbours must be >= 0 (0 = off)");
  if (!(cca_aligned_bias >= 0.0 && cca_aligned_bias <= 30.0)) {
    return BadConfig("cca_aligned_bias must be in [0, 30] (0 = none)");
  }
  if (padding_id < -1 || padding_id >= decoder.vocab_size) {
    return BadConfig("padding_id must be -1 (none) or a token id in [0, decoder.vocab_size)");
  }
  if (cca_layers.empty()) return BadConfig("cca_layers must not be empty");
  for (size_t i = 0; i < cca_layers.size(); ++i) {
    if (cca_layers[i] < 0 || cca_layers[i] >= decoder.n_layers) {
      return BadConfig("cca_layers entries must be in [0, decoder.n_layers)");
    }
    if (i > 0 && cca_layers[i] <= cca_layers[i - 1]) return BadConfig("cca_layers must be strictly increasing");
  }
  return absl::OkStatus();
}

absl::StatusOr<RetroConfig> RetroConfig::FromJson(const std::string& json_text) {
  json j = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return BadConfig("not valid JSON");
  if (!j.is_object()) return BadConfig("expected a JSON object");
  RetroConfig c;
  // What a config written before these options meant.
  c.cca_positions = "none";
  c.align_neighbours = 0;
  c.cca_aligned_bias = 0.0;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& key = it.key();
    const json& v = it.value();
    auto want_int = [&](int64_t& field) -> absl::Status {
      if (!v.is_number_integer()) return BadConfig("'" + key + "' must be an integer");
      field = v.get<int64_t>();
      return absl::OkStatus();
    };
    if (key == "decoder") {
      if (!v.is_object()) return BadConfig("'decoder' must be an object");
      auto decoder = TransformerConfig::FromJson(v.dump());
      if (!decoder.ok()) return Annotate(decoder.status(), "retro config: decoder");
      c.decoder = *decoder;
    } else if (key == "chunk_size") {
      RAG_RETURN_IF_ERROR(want_int(c.chunk_size));
    } else if (key == "neighbours") {
      RAG_RETURN_IF_ERROR(want_int(c.neighbours));
    } else if (key == "neighbour_tokens") {
      RAG_RETURN_IF_ERROR(want_int(c.neighbour_tokens));
    } else if (key == "encoder_layers") {
      RAG_RETURN_IF_ERROR(want_int(c.encoder_layers));
    } else if (key == "align_neighbours") {
      RAG_RETURN_IF_ERROR(want_int(c.align_neighbours));
    } else if (key == "padding_id") {
      RAG_RETURN_IF_ERROR(want_int(c.padding_id));
    } else if (key == "cca_aligned_bias") {
      if (!v.is_number()) return BadConfig("'cca_aligned_bias' must be a number");
      c.cca_aligned_bias = v.get<double>();
    } else if (key == "cca_positions") {
      if (!v.is_string()) return BadConfig("'cca_positions' must be a string");
      c.cca_positions = v.get<std::string>();
    } else if (key == "cca_layers") {
      if (!v.is_array()) return BadConfig("'cca_layers' must be an array of integers");
      c.cca_layers.clear();
      for (const json& layer : v) {
        if (!layer.is_number_integer()) return BadConfig("'cca_layers' must be an array of integers");
        c.cca_layers.push_back(layer.get<int64_t>());
      }
    } else if (key == "arch") {
      // Written by ToJson for readers; guards against loading another model's config.
      if (!v.is_string() || v.get<std::string>() != "retro_lm") return BadConfig("'arch' must be \"retro_lm\"");
    } else if (key == "format_version") {
      // written by ToJson for readers; not a tunable
    } else {
      return BadConfig("unknown key '" + key + "'");
    }
  }
  RAG_RETURN_IF_ERROR(c.Validate());
  return c;
}

std::string RetroConfig::ToJson() const {
  json j = {{"arch", "retro_lm"},
            {"format_version", 1},
            {"decoder", json::parse(decoder.ToJson())},
            {"chunk_size", chunk_size},
            {"neighbours", neighbours},
            {"neighbour_tokens", neighbour_tokens},
            {"encoder_layers", encoder_layers},
            {"cca_layers", cca_layers},
            {"cca_positions", cca_positions},
            {"align_neighbours", align_neighbours},
            {"cca_aligned_bias", cca_aligned_bias},
            {"padding_id", padding_id}};
  return j.dump(2) + "\n";
}

void RetroCache::Clear() {
  decoder.Clear();
  activations = torch::Tensor();
  encoded_chunk = -1;
  cca_keys.clear();
  cca_values.clear();
  cca_mask = torch::Tensor();
  hidden_keys = torch::Tensor();
}

// ---------------------------------------------------------------------------
// RetroEncoderBlock

RetroEncoderBlockImpl::RetroEncoderBlockImpl(const TransformerConfig& config) : config_(config) { reset(); }

void RetroEncoderBlockImpl::reset() {
  const int64_t d = config_.d_model;
  auto ln_opts = torch::nn::LayerNormOptions({d}).eps(config_.layer_norm_eps);
  ln_self = register_module("ln_self", torch::nn::LayerNorm(ln_opts));
  self_qkv = register_module("self_qkv", torch::nn::Linear(d, 3 * d));
  self_proj = register_module("self_proj", torch::nn::Linear(d, d));
  ln_cross = register_module("ln_cross", torch::nn::LayerNorm(ln_opts));
  ln_condition = register_module("ln_condition", torch::nn::LayerNorm(ln_opts));
  cross_q = register_module("cross_q", torch::nn::Linear(d, d));
  cross_kv = register_module("cross_kv", torch::nn::Linear(d, 2 * d));
  cross_proj = register_module("cross_proj", torch::nn::Linear(d, d));
  ln_mlp = register_module("ln_mlp", torch::nn::LayerNorm(ln_opts));
  fc_in = register_module("fc_in", torch::nn::Linear(d, config_.d_ff));
  fc_out = register_module("fc_out", torch::nn::Linear(config_.d_ff, d));
  dropout = register_module("dropout", torch::nn::Dropout(config_.dropout));
}

torch::Tensor RetroEncoderBlockImpl::forward(const torch::Tensor& x, const torch::Tensor& condition) {
  const int64_t n = x.size(0), k = x.size(1), r = x.size(2), d = x.size(3);
  const int64_t h = config_.n_heads, e = d / h, m = condition.size(1);
  // Bidirectional self-attention within each neighbour: [N*K, R, 3D] -> 3 x [N*K, H, R, E]
  auto parts = self_qkv->forward(ln_self->forward(x).reshape({n * k, r, d}))
                   .view({n * k, r, 3, h, e})
                   .permute({2, 0, 3, 1, 4})
                   .unbind(0);
  auto positions = torch::arange(r, torch::TensorOptions().dtype(torch::kLong).device(x.device()));
  auto q = ApplyRotary(parts[0], positions, config_.rope_base);
  auto key = ApplyRotary(parts[1], positions, config_.rope_base);
  auto y = Attend(q, key, parts[2]).transpose(1, 2).reshape({n, k, r, d});  // [N*K, H, R, E] -> [N, K, R, D]
  auto out = x + dropout->forward(self_proj->forward(y));

  // Cross-attention from the K*R tokens of a set to its m conditioning
  // activations: queries [N, H, K*R, E], keys and values 2 x [N, H, m, E].
  auto cq = cross_q->forward(ln_cross->forward(out).reshape({n, k * r, d})).view({n, k * r, h, e}).transpose(1, 2);
  auto ckv =
      cross_kv->forward(ln_condition->forward(condition)).view({n, m, 2, h, e}).permute({2, 0, 3, 1, 4}).unbind(0);
  y = Attend(cq, ckv[0], ckv[1]).transpose(1, 2).reshape({n, k, r, d});  // [N, H, K*R, E] -> [N, K, R, D]
  out = out + dropout->forward(cross_proj->forward(y));

  auto mlp = fc_out->forward(F::gelu(fc_in->forward(ln_mlp->forward(out))));  // [N, K, R, F] -> [N, K, R, D]
  return out + dropout->forward(mlp);
}

// ---------------------------------------------------------------------------
// ChunkedCrossAttention

ChunkedCrossAttentionImpl::ChunkedCrossAttentionImpl(const TransformerConfig& config, int64_t chunk_size, bool rotary,
                                                     int64_t neighbour_tokens, double aligned_bias)
    : config_(config),
      chunk_size_(chunk_size),
      rotary_(rotary),
      neighbour_tokens_(neighbour_tokens),
      aligned_bias_init_(aligned_bias) {
  reset();
}

void ChunkedCrossAttentionImpl::reset() {
  const int64_t d = config_.d_model;
  ln = register_module("ln", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d}).eps(config_.layer_norm_eps)));
  q = register_module("q", torch::nn::Linear(d, d));
  kv = register_module("kv", torch::nn::Linear(d, 2 * d));
  proj = register_module("proj", torch::nn::Linear(d, d));
  dropout = register_module("dropout", torch::nn::Dropout(config_.dropout));
  if (aligned_bias_init_ > 0.0) {
    // The first half of the heads start out copying; the rest by content.
    auto init = torch::zeros({config_.n_heads});
    init.narrow(0, 0, (config_.n_heads + 1) / 2).fill_(aligned_bias_init_);
    aligned_bias = register_parameter("aligned_bias", init);
  }
}

std::pair<torch::Tensor, torch::Tensor> ChunkedCrossAttentionImpl::KeysValues(const torch::Tensor& encoded) {
  const int64_t b = encoded.size(0), c = encoded.size(1), n = encoded.size(2), d = encoded.size(3);
  const int64_t h = config_.n_heads, e = d / h;
  // [B, C, K*R, 2D] -> 2 x [B, C, H, K*R, E]
  auto parts = kv->forward(encoded).view({b, c, n, 2, h, e}).permute({3, 0, 1, 4, 2, 5}).unbind(0);
  if (!rotary_) return {parts[0], parts[1]};
  // Neighbour token i of each of the K neighbours sits at position i.
  auto positions = torch::arange(neighbour_tokens_, torch::TensorOptions().dtype(torch::kLong).device(encoded.device()))
                       .repeat({n / neighbour_tokens_});
  auto keys = ApplyRotary(parts[0].reshape({b * c, h, n, e}), positions, config_.rope_base).view({b, c, h, n, e});
  return {keys, parts[1]};
}

torch::Tensor ChunkedCrossAttentionImpl::forward(const torch::Tensor& x, int64_t offset, const torch::Tensor& keys,
                                                 const torch::Tensor& values, const torch::Tensor& mask) {
  const int64_t b = x.size(0), t = x.size(1), d = x.size(2);
  const int64_t c = keys.size(1), h = config_.n_heads, e = d / h, n = keys.size(3), m = chunk_size_;
  TORCH_CHECK(offset >= 0 && offset + t <= c * m, "ChunkedCrossAttention: ", t, " positions at offset ", offset,
              " do not fit in ", c, " chunks of ", m);
  TORCH_CHECK(mask.sizes() == torch::IntArrayRef({b, c, n}), "ChunkedCrossAttention mask: expected [B, C, K*R] = [", b,
              ", ", c, ", ", n, "], got ", mask.sizes());
  // Queries of the touched chunks, padded to whole chunks: [B, T, D] -> [B, C*m, D] -> [B, C, H, m, E].
  // Within one chunk (every decoding step) no padding is needed: [B, 1, H, T, E].
  auto queries = q->forward(ln->forward(x));
  const int64_t rows = c == 1 ? t : m;
  if (c == 1) {
    queries = queries.view({b, 1, t, h, e}).permute({0, 1, 3, 2, 4});
  } else {
    queries = F::pad(queries, F::PadFuncOptions({0, 0, offset, c * m - offset - t}));
    queries = queries.view({b, c, m, h, e}).permute({0, 1, 3, 2, 4});
  }
  if (rotary_) {
    // Row j of a chunk predicts the chunk's token j, which an aligned
    // neighbour holds at m + j (its F part): the query sits at m + j.
    auto positions = torch::arange(m + (c == 1 ? offset : 0), m + (c == 1 ? offset : 0) + rows,
                                   torch::TensorOptions().dtype(torch::kLong).device(x.device()));
    queries = ApplyRotary(queries.reshape({b * c, h, rows, e}), positions, config_.rope_base).view({b, c, h, rows, e});
  }
  // scores: [B, C, H, rows, K*R]. A chunk without any neighbour attends to all
  // its (meaningless) keys instead of none, which would give NaN, and its
  // output is zeroed below.
  auto has_neighbours = mask.any(-1);  // [B, C]
  auto visible = mask.logical_or(has_neighbours.logical_not().unsqueeze(-1)).view({b, c, 1, 1, n});
  auto scores = torch::matmul(queries, keys.transpose(-2, -1)) * (1.0 / std::sqrt(static_cast<double>(e)));
  if (aligned_bias.defined()) {
    // Row r sits at chunk position p = r (plus the offset within one chunk);
    // its aligned key is token m + p of every neighbour.
    const auto long_options = torch::TensorOptions().dtype(torch::kLong).device(x.device());
    const int64_t first = c == 1 ? offset : 0;
    auto query_at = torch::arange(m + first, m + first + rows, long_options).unsqueeze(1);  // [rows, 1]
    auto key_at =
        torch::arange(neighbour_tokens_, long_options).repeat({n / neighbour_tokens_}).unsqueeze(0);  // [1, K*R]
    auto aligned = query_at.eq(key_at).to(scores.scalar_type());                                      // [rows, K*R]
    scores = scores + aligned_bias.view({1, 1, h, 1, 1}) * aligned;  // [B, C, H, rows, K*R]
  }
  scores = scores.masked_fill(visible.logical_not(), -std::numeric_limits<float>::infinity());
  auto y = torch::matmul(torch::softmax(scores, -1), values);  // [B, C, H, rows, E]
  y = y.permute({0, 1, 3, 2, 4}).reshape({b, c * rows, d});    // [B, C*rows, D]
  if (c > 1) y = y.narrow(1, offset, t);                        // [B, T, D]
  auto out = dropout->forward(proj->forward(y));
  // Missing neighbours contribute nothing, not even the projection's bias.
  auto keep = has_neighbours.unsqueeze(-1).expand({b, c, m}).reshape({b, c * m}).narrow(1, offset, t);  // [B, T]
  return out.masked_fill(keep.logical_not().unsqueeze(-1), 0.0);
}

// ---------------------------------------------------------------------------
// RetroLM

RetroLMImpl::RetroLMImpl(const RetroConfig& config) : config_(config) {
  const absl::Status status = config_.Validate();
  TORCH_CHECK(status.ok(), "invalid RetroConfig: ", status.ToString());
  reset();
}

void RetroLMImpl::reset() {
  const TransformerConfig& dc = config_.decoder;
  decoder = register_module("decoder", TransformerLM(dc));
  encoder_blocks = register_module("encoder_blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < config_.encoder_layers; ++i) encoder_blocks->push_back(RetroEncoderBlock(dc));
  encoder_ln = register_module("encoder_ln",
                               torch::nn::LayerNorm(torch::nn::LayerNormOptions({dc.d_model}).eps(dc.layer_norm_eps)));
  cca = register_module("cca", torch::nn::ModuleList());
  for (size_t i = 0; i < config_.cca_layers.size(); ++i)
    cca->push_back(ChunkedCrossAttention(dc, config_.chunk_size, config_.cca_positions == "rotary",
                                         config_.neighbour_tokens, config_.cca_aligned_bias));

  // GPT-2 initialisation of the new weights (the decoder initialised itself):
  // N(0, 0.02), LayerNorms to identity, biases zero; the encoder's residual
  // output projections scaled by 1/sqrt(3 * layers), three branches a block.
  torch::NoGradGuard no_grad;
  const double std = 0.02;
  const double residual_std = std / std::sqrt(3.0 * static_cast<double>(config_.encoder_layers));
  const std::vector<std::shared_ptr<torch::nn::Module>> roots = {encoder_blocks.ptr(), encoder_ln.ptr(), cca.ptr()};
  for (const auto& root : roots) {
    for (const auto& module : root->modules(/*include_self=*/true)) {
      if (auto* ln = module->as<torch::nn::LayerNorm>()) {
        ln->weight.fill_(1.0);
        ln->bias.zero_();
      } else if (auto* linear = module->as<torch::nn::Linear>()) {
        linear->weight.normal_(0.0, std);
        linear->bias.zero_();
      }
    }
  }
  for (size_t i = 0; i < encoder_blocks->size(); ++i) {
    auto& block = encoder_blocks->at<RetroEncoderBlockImpl>(i);
    for (auto* linear : {block.self_proj.get(), block.cross_proj.get(), block.fc_out.get()}) {
      linear->weight.normal_(0.0, residual_std);
    }
  }
  // A zero CCA output projection makes x + CCA(x) == x: a fresh model (or
  // one retrofitted from a trained LM) computes exactly its decoder's function.
  for (size_t i = 0; i < cca->size(); ++i) {
    auto& layer = cca->at<ChunkedCrossAttentionImpl>(i);
    layer.proj->weight.zero_();
    layer.proj->bias.zero_();
  }
}

torch::Tensor RetroLMImpl::EncodeNeighbours(const torch::Tensor& neighbours, const torch::Tensor& condition) {
  const int64_t b = neighbours.size(0), n = neighbours.size(1), k = neighbours.size(2), r = neighbours.size(3);
  const int64_t m = config_.chunk_size, d = config_.decoder.d_model;
  TORCH_CHECK(condition.dim() == 3 && condition.size(0) == b && condition.size(1) == n * m && condition.size(2) == d,
              "condition: expected [B, N*m, D] = [", b, ", ", n * m, ", ", d, "], got ", condition.sizes());
  // The token embedding is shared with the decoder. [B*N, K, R] -> [B*N, K, R, D]
  auto x = decoder->dropout->forward(decoder->token_embedding->forward(neighbours.reshape({b * n, k, r})));
  auto cond = condition.reshape({b * n, m, d});  // [B*N, m, D]
  for (size_t i = 0; i < encoder_blocks->size(); ++i) x = encoder_blocks->at<RetroEncoderBlockImpl>(i).forward(x, cond);
  return encoder_ln->forward(x).reshape({b, n, k * r, d});
}

torch::Tensor RetroLMImpl::ForwardHidden(const torch::Tensor& tokens, const torch::Tensor& neighbours,
                                         const torch::Tensor& neighbour_mask, RetroCache* cache) {
  const TransformerConfig& dc = config_.decoder;
  const int64_t m = config_.chunk_size, nk = config_.neighbours, nr = config_.neighbour_tokens;
  TORCH_CHECK(tokens.dim() == 2 && tokens.size(1) >= 1, "tokens: expected [B, T] with T >= 1, got ", tokens.sizes());
  const int64_t b = tokens.size(0), t = tokens.size(1);
  const int64_t past = cache != nullptr ? cache->length() : 0;
  TORCH_CHECK(past + t <= dc.context, "sequence of ", past + t, " tokens exceeds the model context of ", dc.context);
  // The new positions [P, P + T) touch input chunks first_chunk .. last_chunk.
  const int64_t first_chunk = past / m, last_chunk = (past + t - 1) / m;
  const auto device = tokens.device();

  const bool retrieve = neighbours.defined();
  torch::Tensor mask = neighbour_mask;
  if (retrieve) {
    TORCH_CHECK(neighbours.dim() == 4 && neighbours.size(0) == b && neighbours.size(1) > last_chunk &&
                    neighbours.size(2) == nk && neighbours.size(3) == nr,
                "neighbours: expected [B, C, K, R] = [", b, ", >= ", last_chunk + 1, ", ", nk, ", ", nr, "], got ",
                neighbours.sizes());
    TORCH_CHECK(neighbours.scalar_type() == torch::kLong, "neighbours: expected int64 token ids, got ",
                neighbours.scalar_type());
    if (!mask.defined()) mask = torch::ones({b, neighbours.size(1), nk}, torch::dtype(torch::kBool).device(device));
    TORCH_CHECK(mask.dim() == 3 && mask.size(0) == b && mask.size(1) == neighbours.size(1) && mask.size(2) == nk,
                "neighbour_mask: expected [B, C, K] = [", b, ", ", neighbours.size(1), ", ", nk, "], got ",
                mask.sizes());
    TORCH_CHECK(mask.scalar_type() == torch::kBool, "neighbour_mask: expected bool, got ", mask.scalar_type());
  }

  // cache->activations covers positions [cached_from, P).
  int64_t cached_from = 0;
  if (cache != nullptr) {
    if (past == 0) {
      cache->Clear();
    } else {
      cached_from = std::max<int64_t>(0, (first_chunk - 1) * m);
      TORCH_CHECK(cache->activations.defined() && cache->activations.size(0) == b &&
                      cache->activations.size(1) == past - cached_from,
                  "RetroCache: the cached activations do not match the cached length ", past,
                  " (was the cache extended outside RetroLM, or with another batch size?)");
    }
    if (cache->decoder.keys.size() != decoder->blocks->size()) {
      cache->decoder.keys.assign(decoder->blocks->size(), torch::Tensor());
      cache->decoder.values.assign(decoder->blocks->size(), torch::Tensor());
    }
  }

  // Keys of the leading padding but its last token: [B, P + T] bool, or
  // undefined when none is hidden. Only a sequence's start is padding.
  torch::Tensor hidden_keys;
  if (past == 0 && config_.padding_id >= 0 && t > 1) {
    // Length of each row's leading run of padding: [B]
    auto run = (tokens == config_.padding_id).to(torch::kLong).cumprod(1).sum(1);
    auto hide = torch::arange(t, torch::dtype(torch::kLong).device(device)).unsqueeze(0) < (run - 1).unsqueeze(1);
    if (hide.any().item<bool>()) hidden_keys = hide;  // [B, T]
  } else if (past > 0 && cache->hidden_keys.defined()) {
    hidden_keys = torch::cat({cache->hidden_keys, torch::zeros({b, t}, torch::dtype(torch::kBool).device(device))}, 1);
  }
  if (cache != nullptr) cache->hidden_keys = hidden_keys;

  // The decoder's own embedding, as TransformerLMImpl::ForwardHidden.
  auto positions = torch::arange(past, past + t, torch::TensorOptions().dtype(torch::kLong).device(device));
  auto x = decoder->token_embedding->forward(tokens);  // [B, T, D]
  if (dc.positions == "learned") x = x + decoder->position_embedding->forward(positions).unsqueeze(0);
  x = decoder->dropout->forward(x);

  // Neighbour sets first_new_set .. last_chunk are encoded in this call; the
  // chunks before (chunk 0, or the cached set of the current chunk) come from
  // the cache or attend to nothing.
  bool reuse_cached = false;
  int64_t first_new_set = last_chunk + 1;
  torch::Tensor encoded;   // [B, S, K*R, D], S = last_chunk - first_new_set + 1
  torch::Tensor cca_mask;  // [B, C, K*R] for the touched chunks
  std::vector<torch::Tensor> layer_keys(cca->size()), layer_values(cca->size());  // [B, C, H, K*R, E]

  size_t next_cca = 0;
  for (size_t i = 0; i < decoder->blocks->size(); ++i) {
    x = decoder->blocks->at<BlockImpl>(i).forward(x, positions, cache ? &cache->decoder.keys[i] : nullptr,
                                                  cache ? &cache->decoder.values[i] : nullptr, hidden_keys);
    if (next_cca >= cca->size() || config_.cca_layers[next_cca] != static_cast<int64_t>(i)) continue;
    if (next_cca == 0) {
      // x is now the first-CCA input H at the new positions. With the cached
      // H of the previous and the current chunk: positions [cached_from, P + T).
      auto h = past > 0 ? torch::cat({cache->activations, x}, 1) : x;
      if (retrieve) {
        reuse_cached = first_chunk >= 1 && cache != nullptr && cache->encoded_chunk == first_chunk;
        first_new_set = std::max<int64_t>(1, reuse_cached ? first_chunk + 1 : first_chunk);
        std::vector<torch::Tensor> mask_parts;  // [B, 1 or S, K*R]
        if (first_chunk == 0) {
          mask_parts.push_back(torch::zeros({b, 1, nk * nr}, torch::dtype(torch::kBool).device(device)));
        } else if (reuse_cached) {
          mask_parts.push_back(cache->cca_mask.unsqueeze(1));
        }
        if (first_new_set <= last_chunk) {
          // Set v is conditioned on H of chunk v - 1: positions [(v - 1) m, v m).
          const int64_t s = last_chunk - first_new_set + 1;
          auto condition = h.narrow(1, (first_new_set - 1) * m - cached_from, s * m);  // [B, S*m, D]
          encoded = EncodeNeighbours(neighbours.narrow(1, first_new_set, s), condition);
          // One flag per neighbour token: [B, S, K] -> [B, S, K*R]
          mask_parts.push_back(
              mask.narrow(1, first_new_set, s).unsqueeze(-1).expand({b, s, nk, nr}).reshape({b, s, nk * nr}));
        }
        cca_mask = torch::cat(mask_parts, 1);
      }
      if (cache != nullptr) {
        // Keep the previous and the current chunk of the next position P + T.
        const int64_t keep_from = std::max<int64_t>(0, ((past + t) / m - 1) * m);
        cache->activations = h.narrow(1, keep_from - cached_from, past + t - keep_from).clone();
      }
    }
    if (retrieve) {
      auto& layer = cca->at<ChunkedCrossAttentionImpl>(next_cca);
      std::vector<torch::Tensor> key_parts, value_parts;  // [B, 1 or S, H, K*R, E]
      if (first_chunk == 0) {
        auto zeros = torch::zeros({b, 1, dc.n_heads, nk * nr, dc.head_dim()}, x.options());
        key_parts.push_back(zeros);
        value_parts.push_back(zeros);
      } else if (reuse_cached) {
        key_parts.push_back(cache->cca_keys[next_cca].unsqueeze(1));
        value_parts.push_back(cache->cca_values[next_cca].unsqueeze(1));
      }
      if (encoded.defined()) {
        auto [keys, values] = layer.KeysValues(encoded);
        key_parts.push_back(keys);
        value_parts.push_back(values);
      }
      // One part (a decoding step inside a chunk): no copy.
      layer_keys[next_cca] = key_parts.size() == 1 ? key_parts[0] : torch::cat(key_parts, 1);
      layer_values[next_cca] = value_parts.size() == 1 ? value_parts[0] : torch::cat(value_parts, 1);
      x = x + layer.forward(x, past - first_chunk * m, layer_keys[next_cca], layer_values[next_cca], cca_mask);
    }
    ++next_cca;
  }

  if (cache != nullptr) {
    if (retrieve && last_chunk >= 1 && reuse_cached && first_chunk == last_chunk) {
      // The cache already holds the current chunk's set.
    } else if (retrieve && last_chunk >= 1) {
      // The set of the current chunk, for the next tokens of that chunk.
      const int64_t c = last_chunk - first_chunk + 1;
      cache->encoded_chunk = last_chunk;
      cache->cca_keys.resize(cca->size());
      cache->cca_values.resize(cca->size());
      for (size_t l = 0; l < cca->size(); ++l) {
        cache->cca_keys[l] = layer_keys[l].select(1, c - 1).clone();
        cache->cca_values[l] = layer_values[l].select(1, c - 1).clone();
      }
      cache->cca_mask = cca_mask.select(1, c - 1).clone();
    } else if (cache->encoded_chunk != last_chunk) {
      cache->encoded_chunk = -1;
      cache->cca_keys.clear();
      cache->cca_values.clear();
      cache->cca_mask = torch::Tensor();
    }
  }
  return decoder->ln_final->forward(x);  // [B, T, D]
}

void RetroLMImpl::LoadDecoderFrom(TransformerLM& lm) {
  const TransformerConfig& to = config_.decoder;
  // Shapes are checked below, but many fields change the function without
  // changing a shape (heads, positions, rope base and share, activation,
  // parallel residual, eps): every field must agree, dropout aside (it is
  // off at inference and a retrofit keeps the decoder's).
  TransformerConfig from = lm->config();
  from.dropout = to.dropout;
  TORCH_CHECK(from.ToJson() == to.ToJson(), "LoadDecoderFrom: the language model's config differs from the decoder's: ",
              from.ToJson(), " vs ", to.ToJson());
  torch::NoGradGuard no_grad;
  auto copy = [](const torch::OrderedDict<std::string, torch::Tensor>& source,
                 const torch::OrderedDict<std::string, torch::Tensor>& target, const char* what) {
    TORCH_CHECK(source.size() == target.size(), "LoadDecoderFrom: expected ", target.size(), " ", what, "s, got ",
                source.size());
    for (const auto& item : target) {
      const torch::Tensor* value = source.find(item.key());
      TORCH_CHECK(value != nullptr, "LoadDecoderFrom: the language model has no ", what, " '", item.key(), "'");
      TORCH_CHECK(value->sizes() == item.value().sizes(), "LoadDecoderFrom: ", what, " '", item.key(), "': expected ",
                  item.value().sizes(), ", got ", value->sizes());
      torch::Tensor destination = item.value();
      destination.copy_(*value);
    }
  };
  copy(lm->named_parameters(), decoder->named_parameters(), "parameter");
  copy(lm->named_buffers(), decoder->named_buffers(), "buffer");
}

int64_t RetroLMImpl::NumParameters() const {
  int64_t n = 0;
  for (const auto& p : parameters()) n += p.numel();
  return n;
}

std::vector<torch::Tensor> RetroLMImpl::RetrievalParameters() {
  std::vector<torch::Tensor> params;
  for (const auto& group : {encoder_blocks->parameters(), encoder_ln->parameters(), cca->parameters()}) {
    params.insert(params.end(), group.begin(), group.end());
  }
  return params;
}

}  // namespace rag::lm

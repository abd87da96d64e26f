#include "lm/retro_inference.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "common/status.h"

namespace rag::lm {
namespace {

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

torch::Device ModelDevice(RetroLM& model) { return model->decoder->token_embedding->weight.device(); }

// InvalidArgument unless `eot` and every id of `tokens` lie in [0, vocab).
absl::Status CheckTokens(const std::vector<TokenId>& tokens, TokenId eot, int64_t vocab, const std::string& what) {
  if (eot < 0 || eot >= vocab) {
    return absl::InvalidArgumentError("end-of-text id " + std::to_string(eot) + " out of range [0, " +
                                      std::to_string(vocab) + ")");
  }
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= vocab) {
      return absl::InvalidArgumentError(what + " token " + std::to_string(i) + " has id " + std::to_string(tokens[i]) +
                                        ", out of range [0, " + std::to_string(vocab) + ")");
    }
  }
  return absl::OkStatus();
}

// Appends `set` to a table of sets as K*R token ids and K presence flags (0/1).
// A missing neighbour's tokens become 0: the model embeds them even though
// CCA masks them, so they must be valid ids.
absl::Status AppendSet(const NeighbourSet& set, const RetroConfig& config, std::vector<int64_t>* tokens,
                       std::vector<int64_t>* present) {
  const int64_t k = config.neighbours, r = config.neighbour_tokens, vocab = config.decoder.vocab_size;
  if (set.tokens.empty() && set.present.empty()) {
    tokens->insert(tokens->end(), k * r, 0);
    present->insert(present->end(), k, 0);
    return absl::OkStatus();
  }
  if (static_cast<int64_t>(set.tokens.size()) != k * r || static_cast<int64_t>(set.present.size()) != k) {
    return absl::InvalidArgumentError("neighbour set: expected K*R = " + std::to_string(k * r) +
                                      " tokens and K = " + std::to_string(k) + " flags, got " +
                                      std::to_string(set.tokens.size()) + " and " + std::to_string(set.present.size()));
  }
  for (int64_t i = 0; i < k; ++i) {
    const bool here = set.present[i] != 0;
    present->push_back(here ? 1 : 0);
    for (int64_t j = 0; j < r; ++j) {
      const TokenId id = set.tokens[i * r + j];
      if (here && (id < 0 || id >= vocab)) {
        return absl::InvalidArgumentError("neighbour set: neighbour " + std::to_string(i) + " token " +
                                          std::to_string(j) + " has id " + std::to_string(id) + ", out of range [0, " +
                                          std::to_string(vocab) + ")");
      }
      tokens->push_back(here ? id : 0);
    }
  }
  return absl::OkStatus();
}

// One scoring window.
struct Window {
  int64_t chunk;      // c: input position 0 holds the token before document chunk c
  int64_t length;     // inputs (each predicting the next token) in the window
  int64_t first_new;  // offset of the first position whose prediction this window scores
};

// The sliding-window pass behind ScoreRetroTokens(WithHidden); hidden states
// are kept only when `want_hidden`.
absl::StatusOr<ScoredTokens> ScoreWindows(RetroLM& model, const std::vector<TokenId>& tokens, TokenId eot,
                                          const std::vector<NeighbourSet>& sets, const RetroScoreOptions& options,
                                          bool want_hidden) {
  const RetroConfig& config = model->config();
  const int64_t m = config.chunk_size, context = config.decoder.context, window_chunks = context / m;
  const int64_t k = config.neighbours, r = config.neighbour_tokens;
  if (options.stride_chunks < 0 || options.stride_chunks > window_chunks) {
    return absl::InvalidArgumentError("stride_chunks must be in [0, context/m = " + std::to_string(window_chunks) +
                                      "], got " + std::to_string(options.stride_chunks));
  }
  if (options.batch_windows < 1) return absl::InvalidArgumentError("batch_windows must be >= 1");
  RAG_RETURN_IF_ERROR(CheckTokens(tokens, eot, config.decoder.vocab_size, "text"));
  ScoredTokens result;
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n == 0) return result;
  const int64_t doc_chunks = CeilDiv(n, m);
  const bool retrieval = !sets.empty();
  const int64_t n_sets = static_cast<int64_t>(sets.size());
  if (retrieval && n_sets != doc_chunks && n_sets != doc_chunks - 1) {
    return absl::InvalidArgumentError("sets: expected one per document chunk (" + std::to_string(doc_chunks) +
                                      ", or one less), got " + std::to_string(n_sets));
  }

  // Windows start at chunks 0, s, 2s, ...; window w > 0 scores its input
  // chunks from window_chunks - s on, the ones no earlier window reached.
  const int64_t stride = options.stride_chunks > 0 ? options.stride_chunks : std::max<int64_t>(1, window_chunks / 2);
  std::vector<Window> windows;
  for (int64_t chunk = 0, scored_chunks = 0; scored_chunks < doc_chunks; chunk += stride) {
    const int64_t length = std::min(context, n - chunk * m);
    windows.push_back({chunk, length, (scored_chunks - chunk) * m});
    scored_chunks = chunk + CeilDiv(length, m);
  }

  // Row j + 1 of the table holds sets[j], so window c's input chunk v reads
  // row c + v. Row 0 and the rows past the given sets are absent; the table
  // is long enough for the padded chunks of any window.
  const int64_t rows = doc_chunks + window_chunks;
  std::vector<int64_t> table_tokens, table_present;
  table_tokens.reserve(rows * k * r);
  table_present.reserve(rows * k);
  RAG_RETURN_IF_ERROR(AppendSet(NeighbourSet{}, config, &table_tokens, &table_present));
  for (int64_t j = 0; j + 1 < rows; ++j) {
    const NeighbourSet absent;
    RAG_RETURN_IF_ERROR(Annotate(AppendSet(j < n_sets ? sets[j] : absent, config, &table_tokens, &table_present),
                                 "sets[" + std::to_string(j) + "]"));
  }

  try {
    torch::NoGradGuard no_grad;
    const auto device = ModelDevice(model);
    // seq = [eot, tokens...]; input seq[p] predicts seq[p + 1].
    std::vector<int64_t> seq;
    seq.reserve(n + 1);
    seq.push_back(eot);
    seq.insert(seq.end(), tokens.begin(), tokens.end());
    auto seq_tensor = torch::tensor(seq, torch::kLong);                                              // [n + 1]
    auto set_tokens = torch::tensor(table_tokens, torch::kLong).view({rows, k, r});                  // [rows, K, R]
    auto set_present = torch::tensor(table_present, torch::kLong).view({rows, k}).to(torch::kBool);  // [rows, K]

    std::vector<torch::Tensor> hidden_rows;  // [<= T, D] each
    result.logprobs.reserve(n);
    for (size_t i = 0; i < windows.size();) {
      if (options.should_stop && options.should_stop()) return absl::CancelledError("scoring stopped by the caller");
      const size_t j = std::min(windows.size(), i + static_cast<size_t>(options.batch_windows));
      const int64_t b = static_cast<int64_t>(j - i);
      int64_t padded = 0;
      for (size_t w = i; w < j; ++w) padded = std::max(padded, windows[w].length);
      const int64_t chunks = CeilDiv(padded, m);
      // Shorter windows (only the last can be) are padded with eot at the
      // end, which causality keeps from touching the real positions.
      auto x = torch::full({b, padded}, static_cast<int64_t>(eot), torch::kLong);  // [B, T]
      auto y = torch::full({b, padded}, static_cast<int64_t>(eot), torch::kLong);  // [B, T]
      std::vector<torch::Tensor> neighbour_parts, mask_parts;                      // [C, K, R], [C, K]
      for (size_t w = i; w < j; ++w) {
        const Window& win = windows[w];
        x[w - i].narrow(0, 0, win.length).copy_(seq_tensor.narrow(0, win.chunk * m, win.length));
        y[w - i].narrow(0, 0, win.length).copy_(seq_tensor.narrow(0, win.chunk * m + 1, win.length));
        if (retrieval) {
          neighbour_parts.push_back(set_tokens.narrow(0, win.chunk, chunks));
          mask_parts.push_back(set_present.narrow(0, win.chunk, chunks));
        }
      }
      torch::Tensor neighbours, mask;  // [B, C, K, R], [B, C, K]; undefined: the decoder alone
      if (retrieval) {
        neighbours = torch::stack(neighbour_parts).to(device);
        mask = torch::stack(mask_parts).to(device);
      }
      auto hidden = model->ForwardHidden(x.to(device), neighbours, mask);                                  // [B, T, D]
      auto logp = torch::log_softmax(model->Logits(hidden).to(torch::kFloat32), -1);                       // [B, T, V]
      auto picked = logp.gather(-1, y.to(device).unsqueeze(-1)).squeeze(-1).to(torch::kCPU).contiguous();  // [B, T]
      auto acc = picked.accessor<float, 2>();
      for (size_t w = i; w < j; ++w) {
        const Window& win = windows[w];
        for (int64_t p = win.first_new; p < win.length; ++p) result.logprobs.push_back(acc[w - i][p]);
        if (want_hidden) {
          hidden_rows.push_back(hidden[w - i].narrow(0, win.first_new, win.length - win.first_new));
        }
      }
      i = j;
    }
    if (want_hidden) result.hidden = torch::cat(hidden_rows, 0).to(torch::kFloat32).contiguous();  // [n, D]
  } catch (const c10::Error& e) {
    return absl::InternalError(std::string("scoring with RETRO: ") + e.what_without_backtrace());
  }
  return result;
}

// The body of GenerateRetro, with validated arguments and max_tokens > 0.
// Throws c10::Error from LibTorch.
absl::StatusOr<std::vector<TokenId>> GenerateWithCache(RetroLM& model, const std::vector<TokenId>& prompt, TokenId eot,
                                                       const SamplingOptions& options, const RetrieveFn& retrieve,
                                                       const TokenCallback& on_token,
                                                       const RetrieveCallback& on_retrieve) {
  const RetroConfig& config = model->config();
  const int64_t m = config.chunk_size, context = config.decoder.context, window_chunks = context / m;
  const int64_t k = config.neighbours, r = config.neighbour_tokens;
  const auto device = ModelDevice(model);
  torch::NoGradGuard no_grad;

  std::vector<int64_t> seq;  // eot, then the document: seq[1 + i] = t_i
  seq.push_back(eot);
  seq.insert(seq.end(), prompt.begin(), prompt.end());
  std::vector<TokenId> generated;
  // What the repetition rules look back on: the prompt without the
  // end-of-text tokens that pad it to a chunk boundary, then the output.
  std::vector<TokenId> history(std::find_if(prompt.begin(), prompt.end(), [&](TokenId t) { return t != eot; }),
                               prompt.end());
  uint64_t rng = options.seed;
  const auto seq_length = [&] { return static_cast<int64_t>(seq.size()); };

  // The set of each document chunk once retrieved (undefined before):
  // tokens [K, R] int64 and flags [K] bool.
  std::vector<torch::Tensor> set_tokens, set_present;
  // Retrieves the sets of document chunks first..last not retrieved yet.
  auto ensure_sets = [&](int64_t first, int64_t last) -> absl::Status {
    for (int64_t j = first; j <= last; ++j) {
      if (j < static_cast<int64_t>(set_tokens.size()) && set_tokens[j].defined()) continue;
      const std::vector<TokenId> chunk(seq.begin() + 1 + j * m, seq.begin() + 1 + (j + 1) * m);
      absl::StatusOr<NeighbourSet> set = retrieve(chunk);
      const std::string what = "neighbours of chunk " + std::to_string(j);
      if (!set.ok()) return Annotate(set.status(), "retrieving " + what);
      std::vector<int64_t> ids, flags;
      RAG_RETURN_IF_ERROR(Annotate(AppendSet(*set, config, &ids, &flags), what));
      if (static_cast<int64_t>(set_tokens.size()) <= j) {
        set_tokens.resize(j + 1);
        set_present.resize(j + 1);
      }
      set_tokens[j] = torch::tensor(ids, torch::kLong).view({k, r}).to(device);         // [K, R]
      set_present[j] = torch::tensor(flags, torch::kLong).to(torch::kBool).to(device);  // [K]
      if (on_retrieve) on_retrieve(j, *set);
    }
    return absl::OkStatus();
  };

  // The window starts at document chunk `window`: input position p holds
  // seq[window * m + p]. A long prompt keeps as many whole chunks as fit.
  int64_t window = seq_length() > context ? CeilDiv(seq_length() - context, m) : 0;
  RetroCache cache;
  // The window's neighbours, rebuilt once per (window, chunks): [1, C, K, R] and [1, C, K].
  torch::Tensor neighbours, mask;
  int64_t neighbours_window = -1, neighbours_chunks = -1;

  // Runs the model on seq[from..] (continuing the cache when used) and
  // returns the next-token logits [V] on the CPU.
  auto logits_after = [&](int64_t from) -> absl::StatusOr<torch::Tensor> {
    const int64_t chunks = CeilDiv(seq_length() - window * m, m);  // input chunks touched so far
    if (retrieve && (neighbours_window != window || neighbours_chunks != chunks)) {
      // Input chunk v >= 1 attends to the set of document chunk window + v - 1;
      // chunk 0 attends to nothing (its entry is ignored by the model).
      RAG_RETURN_IF_ERROR(ensure_sets(window, window + chunks - 2));
      std::vector<torch::Tensor> token_parts = {torch::zeros({k, r}, torch::dtype(torch::kLong).device(device))};
      std::vector<torch::Tensor> mask_parts = {torch::zeros({k}, torch::dtype(torch::kBool).device(device))};
      for (int64_t v = 1; v < chunks; ++v) {
        token_parts.push_back(set_tokens[window + v - 1]);
        mask_parts.push_back(set_present[window + v - 1]);
      }
      neighbours = torch::stack(token_parts).unsqueeze(0);  // [1, C, K, R]
      mask = torch::stack(mask_parts).unsqueeze(0);         // [1, C, K]
      neighbours_window = window;
      neighbours_chunks = chunks;
    }
    auto x = torch::tensor(std::vector<int64_t>(seq.begin() + from, seq.end()), torch::kLong)
                 .unsqueeze(0)
                 .to(device);                                                                       // [1, T]
    auto hidden = model->ForwardHidden(x, neighbours, mask, options.use_cache ? &cache : nullptr);  // [1, T, D]
    auto last = hidden.narrow(1, hidden.size(1) - 1, 1);                                            // [1, 1, D]
    return model->Logits(last).view({-1}).to(torch::kCPU);                                          // [V]
  };

  RAG_ASSIGN_OR_RETURN(torch::Tensor logits, logits_after(window * m));
  for (int64_t step = 0; step < options.max_tokens; ++step) {
    const TokenId next = SampleToken(logits, options, &rng, history);
    generated.push_back(next);
    history.push_back(next);
    seq.push_back(next);
    if (on_token && !on_token(next)) break;
    if (options.stop_at_eot && next == eot) break;
    if (step + 1 == options.max_tokens) break;
    int64_t from = options.use_cache ? seq_length() - 1 : window * m;
    if (seq_length() - window * m > context) {
      // The new token would sit at input position `context`, a chunk
      // boundary. Restarting half a context later (in whole chunks) rebuilds
      // the cache once per context/2 tokens instead of every token.
      window = (seq_length() - 1) / m - window_chunks / 2;
      cache.Clear();
      from = window * m;
    }
    RAG_ASSIGN_OR_RETURN(logits, logits_after(from));
  }
  return generated;
}

}  // namespace

absl::StatusOr<std::vector<float>> ScoreRetroTokens(RetroLM& model, const std::vector<TokenId>& tokens, TokenId eot,
                                                    const std::vector<NeighbourSet>& sets,
                                                    const RetroScoreOptions& options) {
  RAG_ASSIGN_OR_RETURN(ScoredTokens scored, ScoreWindows(model, tokens, eot, sets, options, /*want_hidden=*/false));
  return std::move(scored.logprobs);
}

absl::StatusOr<ScoredTokens> ScoreRetroTokensWithHidden(RetroLM& model, const std::vector<TokenId>& tokens, TokenId eot,
                                                        const std::vector<NeighbourSet>& sets,
                                                        const RetroScoreOptions& options) {
  return ScoreWindows(model, tokens, eot, sets, options, /*want_hidden=*/true);
}

absl::StatusOr<std::vector<TokenId>> GenerateRetro(RetroLM& model, const std::vector<TokenId>& prompt, TokenId eot,
                                                   const SamplingOptions& options, const RetrieveFn& retrieve,
                                                   const TokenCallback& on_token, const RetrieveCallback& on_retrieve) {
  RAG_RETURN_IF_ERROR(ValidateSamplingOptions(options));
  RAG_RETURN_IF_ERROR(CheckTokens(prompt, eot, model->config().decoder.vocab_size, "prompt"));
  if (options.max_tokens == 0) return std::vector<TokenId>();
  try {
    return GenerateWithCache(model, prompt, eot, options, retrieve, on_token, on_retrieve);
  } catch (const c10::Error& e) {
    return absl::InternalError(std::string("generating with RETRO: ") + e.what_without_backtrace());
  }
}

torch::Tensor RetroNextTokenLogProbs(RetroLM& model, const std::vector<TokenId>& tokens, TokenId eot,
                                     const std::vector<NeighbourSet>& sets) {
  torch::NoGradGuard no_grad;
  const RetroConfig& c = model->config();
  const int64_t m = c.chunk_size, ctx = c.decoder.context, k = c.neighbours, r = c.neighbour_tokens;
  const int64_t n = static_cast<int64_t>(tokens.size());
  // Input positions hold [eot, t_0, ..., t_{n-1}]; position n predicts.
  const int64_t start = n + 1 > ctx ? (n + 1 - ctx + m - 1) / m : 0;  // in chunks
  std::vector<int64_t> input;
  input.push_back(start == 0 ? eot : tokens[static_cast<size_t>(start * m - 1)]);
  for (int64_t i = start * m; i < n; ++i) input.push_back(tokens[static_cast<size_t>(i)]);
  const int64_t len = static_cast<int64_t>(input.size());
  const int64_t chunks = (len + m - 1) / m;
  torch::Tensor ids = torch::tensor(input, torch::kLong).view({1, len});  // [1, T]
  torch::Tensor nb, mask;
  if (!sets.empty()) {
    nb = torch::zeros({1, chunks, k, r}, torch::kLong);  // [1, C, K, R]
    mask = torch::zeros({1, chunks, k}, torch::kBool);   // [1, C, K]
    auto nb_a = nb.accessor<int64_t, 4>();
    auto mask_a = mask.accessor<bool, 3>();
    for (int64_t v = 1; v < chunks; ++v) {
      const int64_t j = start + v - 1;
      if (j >= static_cast<int64_t>(sets.size())) break;
      const NeighbourSet& set = sets[static_cast<size_t>(j)];
      for (int64_t q = 0; q < k && q < static_cast<int64_t>(set.present.size()); ++q) {
        mask_a[0][v][q] = set.present[static_cast<size_t>(q)] != 0;
        for (int64_t t = 0; t < r; ++t) nb_a[0][v][q][t] = set.tokens[static_cast<size_t>(q * r + t)];
      }
    }
  }
  torch::Tensor hidden = model->ForwardHidden(ids, nb, mask);            // [1, T, D]
  torch::Tensor logits = model->Logits(hidden.narrow(1, len - 1, 1));    // [1, 1, V]
  return torch::log_softmax(logits.view({-1}).to(torch::kFloat32), -1);  // [V]
}

}  // namespace rag::lm

#include "lm/retro_inference.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "lm/generator.h"
#include "lm/scorer.h"
#include "tests/status_matchers.h"

namespace rag::lm {
namespace {

constexpr int64_t kVocab = 64;
constexpr int64_t kContext = 32;
constexpr int64_t kChunk = 8;                         // m
constexpr int64_t kWindowChunks = kContext / kChunk;  // 4 chunks fill the context
constexpr int64_t kNeighbours = 2;                    // K
constexpr int64_t kNeighbourTokens = 12;              // R
constexpr int64_t kWidth = 32;                        // D
constexpr TokenId kEot = 0;

RetroConfig TinyRetroConfig() {
  RetroConfig c;
  c.decoder.vocab_size = kVocab;
  c.decoder.context = kContext;
  c.decoder.d_model = kWidth;
  c.decoder.n_layers = 2;
  c.decoder.n_heads = 2;
  c.decoder.d_ff = 64;
  c.chunk_size = kChunk;
  c.neighbours = kNeighbours;
  c.neighbour_tokens = kNeighbourTokens;
  c.encoder_layers = 1;
  c.cca_layers = {0, 1};
  return c;
}

// A model in eval mode whose CCA output projections (zero when built) are
// random and large, so the neighbours visibly change the outputs.
RetroLM MakeModel(uint64_t seed) {
  torch::manual_seed(seed);
  RetroLM model(TinyRetroConfig());
  model->eval();
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < model->cca->size(); ++i) {
    auto& layer = model->cca->at<ChunkedCrossAttentionImpl>(i);
    layer.proj->weight.normal_(0.0, 0.5);
    layer.proj->bias.normal_(0.0, 0.5);
  }
  return model;
}

std::vector<TokenId> RandomTokens(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<TokenId> tokens(n);
  for (auto& t : tokens) t = static_cast<TokenId>(1 + rng() % (kVocab - 1));  // never eot
  return tokens;
}

// A random set; with `one_missing`, neighbour 1 is missing and holds ids out
// of range, which must be ignored.
NeighbourSet RandomSet(std::mt19937_64& rng, bool one_missing) {
  NeighbourSet set;
  for (int64_t i = 0; i < kNeighbours * kNeighbourTokens; ++i) set.tokens.push_back(rng() % kVocab);
  set.present.assign(kNeighbours, 1);
  if (one_missing) {
    set.present[1] = 0;
    for (int64_t i = kNeighbourTokens; i < 2 * kNeighbourTokens; ++i) set.tokens[i] = -7;
  }
  return set;
}

std::vector<NeighbourSet> RandomSets(int64_t count, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<NeighbourSet> sets;
  for (int64_t j = 0; j < count; ++j) sets.push_back(RandomSet(rng, j % 3 == 1));
  return sets;
}

// Neighbours of a window starting at document chunk c: input chunk v >= 1
// gets set_of(c + v - 1), chunk 0 nothing -> {[1, C, K, R], [1, C, K]}.
std::pair<torch::Tensor, torch::Tensor> WindowNeighbours(const std::function<NeighbourSet(int64_t)>& set_of, int64_t c,
                                                         int64_t chunks) {
  auto tokens = torch::zeros({1, chunks, kNeighbours, kNeighbourTokens}, torch::kLong);
  auto mask = torch::zeros({1, chunks, kNeighbours}, torch::kBool);
  for (int64_t v = 1; v < chunks; ++v) {
    const NeighbourSet set = set_of(c + v - 1);
    for (int64_t k = 0; k < kNeighbours; ++k) {
      if (set.present[k] == 0) continue;
      mask[0][v][k] = true;
      for (int64_t r = 0; r < kNeighbourTokens; ++r) tokens[0][v][k][r] = set.tokens[k * kNeighbourTokens + r];
    }
  }
  return {tokens, mask};
}

// seq = [eot, tokens...]
std::vector<int64_t> WithEot(const std::vector<TokenId>& tokens) {
  std::vector<int64_t> seq = {kEot};
  seq.insert(seq.end(), tokens.begin(), tokens.end());
  return seq;
}

// The model run directly on the `length` inputs of the window starting at
// document chunk c (no sets: the decoder alone).
struct WindowOutput {
  torch::Tensor logprobs;  // [length]: of each input's next token
  torch::Tensor hidden;    // [length, D]
};
WindowOutput DirectWindow(RetroLM& model, const std::vector<TokenId>& tokens, const std::vector<NeighbourSet>& sets,
                          int64_t c, int64_t length) {
  torch::NoGradGuard no_grad;
  const std::vector<int64_t> seq = WithEot(tokens);
  auto all = torch::tensor(seq, torch::kLong);              // [n + 1]
  auto x = all.narrow(0, c * kChunk, length).unsqueeze(0);  // [1, T]
  auto y = all.narrow(0, c * kChunk + 1, length);           // [T]
  torch::Tensor neighbours, mask;
  if (!sets.empty()) {
    std::tie(neighbours, mask) =
        WindowNeighbours([&](int64_t j) { return sets[j]; }, c, (length + kChunk - 1) / kChunk);
  }
  auto hidden = model->ForwardHidden(x, neighbours, mask)[0];   // [T, D]
  auto logits = model->Logits(hidden.unsqueeze(0))[0];          // [T, V]
  auto logp = logits - logits.logsumexp(-1, /*keepdim=*/true);  // log_softmax by hand
  return {logp.gather(1, y.unsqueeze(1)).squeeze(1), hidden};
}

double MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double worst = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) worst = std::max(worst, std::abs(double{a[i]} - b[i]));
  return worst;
}

// ---------------------------------------------------------------------------
// Scoring

TEST(ScoreRetroTokensTest, ShortTextIsOneDirectForward) {
  RetroLM model = MakeModel(1);
  const std::vector<TokenId> tokens = RandomTokens(21, 2);  // 3 chunks, the last partial
  const std::vector<NeighbourSet> sets = RandomSets(3, 3);
  auto scored = ScoreRetroTokensWithHidden(model, tokens, kEot, sets);
  RAG_ASSERT_OK(scored);
  const WindowOutput direct = DirectWindow(model, tokens, sets, 0, 21);
  ASSERT_EQ(scored->logprobs.size(), 21u);
  for (int64_t i = 0; i < 21; ++i) {
    EXPECT_NEAR(scored->logprobs[i], direct.logprobs[i].item<float>(), 1e-5) << "token " << i;
  }
  ASSERT_EQ(scored->hidden.sizes(), (std::vector<int64_t>{21, kWidth}));
  EXPECT_TRUE(torch::allclose(scored->hidden, direct.hidden, /*rtol=*/0, /*atol=*/1e-5));

  auto logprobs = ScoreRetroTokens(model, tokens, kEot, sets);
  RAG_ASSERT_OK(logprobs);
  EXPECT_EQ(*logprobs, scored->logprobs);
  // The last set is never used and may be left out.
  auto fewer = ScoreRetroTokens(model, tokens, kEot, std::vector<NeighbourSet>(sets.begin(), sets.end() - 1));
  RAG_ASSERT_OK(fewer);
  EXPECT_EQ(*fewer, *logprobs);
  // The sets matter, and only from chunk 1 on.
  auto off = ScoreRetroTokens(model, tokens, kEot, {});
  RAG_ASSERT_OK(off);
  EXPECT_GT(MaxAbsDiff(*off, *logprobs), 1e-3);
  for (int64_t i = 0; i < kChunk; ++i) EXPECT_NEAR((*off)[i], (*logprobs)[i], 1e-6) << "token " << i;

  auto empty = ScoreRetroTokensWithHidden(model, {}, kEot, {});
  RAG_ASSERT_OK(empty);
  EXPECT_TRUE(empty->logprobs.empty());
  EXPECT_FALSE(empty->hidden.defined());
}

TEST(ScoreRetroTokensTest, WithoutSetsEqualsTheLanguageModelScorer) {
  // The LM scorer's windows start every `stride` tokens and score their last
  // `stride` targets (all of them in the first window): with stride = s*m,
  // the same windows as ours.
  RetroLM model = MakeModel(4);
  const std::vector<TokenId> tokens = RandomTokens(101, 5);
  for (int64_t stride_chunks : {0, 1, 3, 4}) {
    auto retro = ScoreRetroTokens(model, tokens, kEot, {}, {stride_chunks, 8, nullptr});
    RAG_ASSERT_OK(retro);
    ScoreOptions lm_options;
    lm_options.stride = stride_chunks * kChunk;  // 0 = context / 2 = 2 chunks, as ours
    const std::vector<float> lm = ScoreTokens(model->decoder, tokens, kEot, lm_options);
    EXPECT_LE(MaxAbsDiff(*retro, lm), 1e-5) << "stride_chunks " << stride_chunks;
  }
}

TEST(ScoreRetroTokensTest, LongTextScoresEveryTokenOnceInItsWindow) {
  RetroLM model = MakeModel(6);
  const int64_t n = 101;  // 13 chunks, the last of 5 tokens
  const std::vector<TokenId> tokens = RandomTokens(n, 7);
  const std::vector<NeighbourSet> sets = RandomSets(13, 8);
  for (int64_t stride_chunks : {0, 1, 3, 4}) {
    // Which window scores token i, by the documented rule: windows start at
    // chunks 0, s, 2s, ...; the first scores its 4 chunks, window w > 0 its last s.
    const int64_t s = stride_chunks > 0 ? stride_chunks : kWindowChunks / 2;
    std::map<int64_t, WindowOutput> windows;  // by start chunk
    std::vector<float> expect_logprobs(n);
    std::vector<torch::Tensor> expect_hidden(n);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t chunk = i / kChunk;
      const int64_t c = chunk < kWindowChunks ? 0 : ((chunk - kWindowChunks) / s + 1) * s;
      if (windows.count(c) == 0) {
        windows.emplace(c, DirectWindow(model, tokens, sets, c, std::min(kContext, n - c * kChunk)));
      }
      expect_logprobs[i] = windows.at(c).logprobs[i - c * kChunk].item<float>();
      expect_hidden[i] = windows.at(c).hidden[i - c * kChunk];
    }
    ASSERT_GE(windows.size(), 3u);
    for (int64_t batch : {1, 3, 8}) {
      auto scored = ScoreRetroTokensWithHidden(model, tokens, kEot, sets, {stride_chunks, batch, nullptr});
      RAG_ASSERT_OK(scored);
      EXPECT_LE(MaxAbsDiff(scored->logprobs, expect_logprobs), 1e-5) << "stride " << s << " batch " << batch;
      EXPECT_TRUE(torch::allclose(scored->hidden, torch::stack(expect_hidden), /*rtol=*/0, /*atol=*/1e-5))
          << "stride " << s << " batch " << batch;
    }
  }
}

TEST(ScoreRetroTokensTest, ASetChangesOnlyTheTokensAfterItsChunk) {
  RetroLM model = MakeModel(9);
  const int64_t n = 70;  // 9 chunks, the last of 6 tokens
  const std::vector<TokenId> tokens = RandomTokens(n, 10);
  const std::vector<NeighbourSet> sets = RandomSets(9, 11);
  auto base = ScoreRetroTokens(model, tokens, kEot, sets);
  RAG_ASSERT_OK(base);
  std::mt19937_64 rng(12);
  for (int64_t j = 0; j < 9; ++j) {
    // Variant 0: other neighbours; variant 1: the same, all missing.
    for (int variant = 0; variant < 2; ++variant) {
      std::vector<NeighbourSet> changed = sets;
      changed[j] = RandomSet(rng, false);
      if (variant == 1) changed[j].present.assign(kNeighbours, 0);
      auto out = ScoreRetroTokens(model, tokens, kEot, changed);
      RAG_ASSERT_OK(out);
      // Largest change of the tokens up to chunk j, and after it.
      double before = 0, after = 0;
      for (int64_t i = 0; i < n; ++i) {
        double& worst = i < (j + 1) * kChunk ? before : after;
        worst = std::max(worst, std::abs(double{(*out)[i]} - (*base)[i]));
      }
      // The last chunk's set (j == 8) is never used: nothing changes.
      EXPECT_LE(before, 1e-6) << "set " << j << " variant " << variant;
      if (j < 8) {
        EXPECT_GT(after, 1e-4) << "set " << j << " variant " << variant;
      }
    }
  }
}

TEST(ScoreRetroTokensTest, BadInputsAreInvalidArgument) {
  RetroLM model = MakeModel(13);
  const std::vector<TokenId> tokens = RandomTokens(30, 14);  // 4 chunks
  const std::vector<NeighbourSet> sets = RandomSets(4, 15);
  auto code = [&](const std::vector<TokenId>& t, const std::vector<NeighbourSet>& s, RetroScoreOptions o) {
    return ScoreRetroTokens(model, t, kEot, s, o).status().code();
  };
  const auto invalid = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(code(tokens, sets, {-1, 8, nullptr}), invalid);
  EXPECT_EQ(code(tokens, sets, {kWindowChunks + 1, 8, nullptr}), invalid);
  EXPECT_EQ(code(tokens, sets, {0, 0, nullptr}), invalid);
  EXPECT_EQ(code(tokens, RandomSets(2, 16), {}), invalid);  // too few
  EXPECT_EQ(code(tokens, RandomSets(5, 16), {}), invalid);  // too many
  std::vector<TokenId> bad_tokens = tokens;
  bad_tokens[3] = kVocab;
  EXPECT_EQ(code(bad_tokens, sets, {}), invalid);
  EXPECT_EQ(ScoreRetroTokens(model, tokens, -1, sets).status().code(), invalid);
  std::vector<NeighbourSet> bad_sets = sets;
  bad_sets[1].tokens.pop_back();
  EXPECT_EQ(code(tokens, bad_sets, {}), invalid);
  bad_sets = sets;
  bad_sets[2].tokens[0] = kVocab;  // neighbour 0 is present
  auto status = ScoreRetroTokens(model, tokens, kEot, bad_sets).status();
  EXPECT_EQ(status.code(), invalid);
  EXPECT_NE(status.message().find("sets[2]"), std::string::npos) << status;
  // An empty set means no neighbours: as all missing.
  std::vector<NeighbourSet> none = sets, all_missing = sets;
  none[1] = NeighbourSet{};
  all_missing[1].present.assign(kNeighbours, 0);
  auto a = ScoreRetroTokens(model, tokens, kEot, none);
  auto b = ScoreRetroTokens(model, tokens, kEot, all_missing);
  RAG_ASSERT_OK(a);
  RAG_ASSERT_OK(b);
  EXPECT_EQ(*a, *b);
}

// ---------------------------------------------------------------------------
// Generation

// splitmix64, to derive a fake neighbour set from a chunk's tokens.
uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// A deterministic stand-in for retrieval: a set derived from a hash of the
// chunk, with neighbour 1 sometimes missing.
NeighbourSet FakeSet(const std::vector<TokenId>& chunk) {
  uint64_t h = 17;
  for (TokenId t : chunk) h = Mix(h ^ static_cast<uint64_t>(t));
  NeighbourSet set;
  for (int64_t i = 0; i < kNeighbours * kNeighbourTokens; ++i) {
    h = Mix(h);
    set.tokens.push_back(static_cast<TokenId>(h % kVocab));
  }
  set.present = {1, static_cast<uint8_t>(h % 4 != 0)};
  return set;
}

// Records every call of the RetrieveFn and every set reported back.
struct RetrievalLog {
  std::vector<std::vector<TokenId>> chunks;  // arguments of `retrieve`, in order
  std::vector<int64_t> reported;             // chunk indices given to `on_retrieve`
  RetrieveFn Retrieve() {
    return [this](const std::vector<TokenId>& chunk) -> absl::StatusOr<NeighbourSet> {
      chunks.push_back(chunk);
      return FakeSet(chunk);
    };
  }
  RetrieveCallback OnRetrieve() {
    return [this](int64_t chunk, const NeighbourSet& set) {
      reported.push_back(chunk);
      EXPECT_EQ(set.tokens, FakeSet(chunks.back()).tokens);
    };
  }
};

TEST(GenerateRetroTest, CacheEqualsRecomputeAndTheDocumentedWindows) {
  RetroLM model = MakeModel(20);
  SamplingOptions greedy;
  greedy.temperature = 0;
  greedy.max_tokens = 60;  // past the context: the window slides
  greedy.stop_at_eot = false;
  // Greedy decoding of the random model soon repeats one token, so all its
  // chunks (and their sets) look alike; sampling gives distinct chunks, where
  // a set attached to the wrong chunk shows.
  SamplingOptions sampled = greedy;
  sampled.temperature = 1.0;
  sampled.seed = 5;
  // A short prompt (one window) and one longer than the context.
  for (const SamplingOptions& base_options : {greedy, sampled}) {
    for (int64_t prompt_length : {5, 45}) {
      const std::string where =
          "temperature " + std::to_string(base_options.temperature) + " prompt " + std::to_string(prompt_length);
      const std::vector<TokenId> prompt = RandomTokens(prompt_length, 21);
      std::vector<std::vector<TokenId>> outputs;
      for (bool use_cache : {true, false}) {
        SamplingOptions options = base_options;
        options.use_cache = use_cache;
        RetrievalLog log;
        auto generated = GenerateRetro(model, prompt, kEot, options, log.Retrieve(), nullptr, log.OnRetrieve());
        RAG_ASSERT_OK(generated);
        ASSERT_EQ(generated->size(), 60u);
        outputs.push_back(*generated);

        // One call per chunk whose last token was fed (all but the last
        // token), from the prompt's first window on, with that chunk's tokens.
        std::vector<TokenId> doc = prompt;
        doc.insert(doc.end(), generated->begin(), generated->end());
        const int64_t first = std::max<int64_t>(0, (prompt_length + 1 - kContext + kChunk - 1) / kChunk);
        const int64_t end = static_cast<int64_t>(doc.size() - 1) / kChunk;
        std::vector<int64_t> expect_chunks;
        for (int64_t j = first; j < end; ++j) expect_chunks.push_back(j);
        EXPECT_EQ(log.reported, expect_chunks) << where << " cache " << use_cache;
        ASSERT_EQ(log.chunks.size(), expect_chunks.size());
        std::set<std::vector<TokenId>> distinct;
        for (size_t i = 0; i < expect_chunks.size(); ++i) {
          const int64_t j = expect_chunks[i];
          EXPECT_EQ(log.chunks[i], std::vector<TokenId>(doc.begin() + j * kChunk, doc.begin() + (j + 1) * kChunk));
          distinct.insert(log.chunks[i]);
        }
        if (base_options.temperature > 0) {
          EXPECT_GE(distinct.size(), expect_chunks.size() - 1) << where;
        }
      }
      EXPECT_EQ(outputs[0], outputs[1]) << where;

      // Every token is the one SampleToken draws (with the same RNG state)
      // from a direct forward over its window, slid by the documented rule:
      // when a token does not fit, restart at the chunk that keeps the last
      // 2 complete chunks.
      torch::NoGradGuard no_grad;
      std::vector<int64_t> seq = WithEot(prompt);
      int64_t c = std::max<int64_t>(0, (static_cast<int64_t>(seq.size()) - kContext + kChunk - 1) / kChunk);
      auto set_of = [&](int64_t j) {
        return FakeSet(std::vector<TokenId>(seq.begin() + 1 + j * kChunk, seq.begin() + 1 + (j + 1) * kChunk));
      };
      int64_t slides = 0;
      uint64_t rng = base_options.seed;
      for (TokenId token : outputs[0]) {
        const int64_t fed = static_cast<int64_t>(seq.size());
        if (fed - c * kChunk > kContext) {
          c = (fed - 1) / kChunk - kWindowChunks / 2;
          ++slides;
        }
        const int64_t length = fed - c * kChunk;
        auto x = torch::tensor(std::vector<int64_t>(seq.begin() + c * kChunk, seq.end()), torch::kLong).unsqueeze(0);
        auto [neighbours, mask] = WindowNeighbours(set_of, c, (length + kChunk - 1) / kChunk);
        auto logits = model->forward(x, neighbours, mask)[0][length - 1];  // [V]
        EXPECT_EQ(SampleToken(logits, base_options, &rng), token) << where << " position " << fed;
        seq.push_back(token);
      }
      EXPECT_GE(slides, 2) << where;
    }
  }
}

TEST(GenerateRetroTest, NeighboursChangeTheGeneration) {
  RetroLM model = MakeModel(22);
  SamplingOptions options;
  options.temperature = 0;
  options.max_tokens = 40;
  options.stop_at_eot = false;
  const std::vector<TokenId> prompt = RandomTokens(12, 23);
  RetrievalLog log;
  auto with = GenerateRetro(model, prompt, kEot, options, log.Retrieve());
  auto without = GenerateRetro(model, prompt, kEot, options, nullptr);
  RAG_ASSERT_OK(with);
  RAG_ASSERT_OK(without);
  EXPECT_NE(*with, *without);
}

TEST(GenerateRetroTest, RetrievalOffEqualsTheDecoder) {
  // Without neighbours the randomised CCA layers add nothing: the output is
  // lm::Generate's on the decoder, while everything fits the context (the
  // two slide differently past it).
  RetroLM model = MakeModel(24);
  const std::vector<TokenId> prompt = RandomTokens(5, 25);
  SamplingOptions greedy;
  greedy.temperature = 0;
  greedy.max_tokens = kContext - 6;  // eot + prompt + all but the last generated token: 31 inputs
  greedy.stop_at_eot = false;
  SamplingOptions sampled = greedy;
  sampled.temperature = 0.9;
  sampled.top_k = 20;
  sampled.top_p = 0.95;
  sampled.seed = 3;
  SamplingOptions uncached = sampled;
  uncached.use_cache = false;
  uncached.seed = 4;
  for (const SamplingOptions& options : {greedy, sampled, uncached}) {
    auto retro = GenerateRetro(model, prompt, kEot, options, nullptr);
    auto lm = Generate(model->decoder, prompt, kEot, options);
    RAG_ASSERT_OK(retro);
    RAG_ASSERT_OK(lm);
    EXPECT_EQ(retro->size(), static_cast<size_t>(options.max_tokens));
    EXPECT_EQ(*retro, *lm) << "temperature " << options.temperature << " cache " << options.use_cache;
  }
}

TEST(GenerateRetroTest, BadOptionsAndRetrievalErrors) {
  RetroLM model = MakeModel(26);
  const std::vector<TokenId> prompt = RandomTokens(10, 27);  // chunk 0 is complete: retrieved at prefill
  int calls = 0;
  RetrieveFn counting = [&](const std::vector<TokenId>& chunk) -> absl::StatusOr<NeighbourSet> {
    ++calls;
    return FakeSet(chunk);
  };
  std::vector<std::function<void(SamplingOptions&)>> bad = {
      [](SamplingOptions& o) { o.max_tokens = -1; },  [](SamplingOptions& o) { o.top_p = 0; },
      [](SamplingOptions& o) { o.top_p = 1.5; },      [](SamplingOptions& o) { o.top_k = -1; },
      [](SamplingOptions& o) { o.temperature = -1; }, [](SamplingOptions& o) { o.temperature = std::nan(""); },
  };
  for (size_t i = 0; i < bad.size(); ++i) {
    SamplingOptions options;
    bad[i](options);
    EXPECT_EQ(GenerateRetro(model, prompt, kEot, options, counting).status().code(), absl::StatusCode::kInvalidArgument)
        << "case " << i;
  }
  std::vector<TokenId> bad_prompt = prompt;
  bad_prompt[4] = -1;
  EXPECT_EQ(GenerateRetro(model, bad_prompt, kEot, {}, counting).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GenerateRetro(model, prompt, kVocab, {}, counting).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(calls, 0);
  SamplingOptions none;
  none.max_tokens = 0;
  auto nothing = GenerateRetro(model, prompt, kEot, none, counting);
  RAG_ASSERT_OK(nothing);
  EXPECT_TRUE(nothing->empty());
  EXPECT_EQ(calls, 0);

  // A retrieval error comes back with its code.
  RetrieveFn failing = [](const std::vector<TokenId>&) -> absl::StatusOr<NeighbourSet> {
    return absl::UnavailableError("index offline");
  };
  auto failed = GenerateRetro(model, prompt, kEot, {}, failing);
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(failed.status().message().find("index offline"), std::string::npos) << failed.status();
  // A malformed set is refused; a missing neighbour's ids are ignored.
  for (int variant = 0; variant < 3; ++variant) {
    RetrieveFn malformed = [variant](const std::vector<TokenId>& chunk) -> absl::StatusOr<NeighbourSet> {
      NeighbourSet set = FakeSet(chunk);
      if (variant == 0) set.present.push_back(1);
      if (variant == 1) set.tokens[0] = kVocab;  // neighbour 0 is present
      if (variant == 2) {
        set.present[1] = 0;
        set.tokens[kNeighbourTokens] = kVocab;
      }
      return set;
    };
    auto result = GenerateRetro(model, prompt, kEot, {}, malformed);
    if (variant < 2) {
      EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument) << "variant " << variant;
    } else {
      RAG_EXPECT_OK(result);
    }
  }

  // on_token returning false stops after that token.
  std::vector<TokenId> seen;
  auto stopped = GenerateRetro(model, prompt, kEot, {}, counting, [&](TokenId t) {
    seen.push_back(t);
    return false;
  });
  RAG_ASSERT_OK(stopped);
  EXPECT_EQ(stopped->size(), 1u);
  EXPECT_EQ(*stopped, seen);
}

}  // namespace
}  // namespace rag::lm

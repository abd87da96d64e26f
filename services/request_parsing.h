// Validation of the rag.v1 requests: each request is checked once and turned
// into typed parameters (a Mode, defaults filled in) that the Engine and its
// mode strategies run. The mode and option strings of the API are read here
// and nowhere else. Errors: InvalidArgument naming the field and the reason,
// ResourceExhausted over one of the server's limits (naming the limit and
// the `rag serve` flag), FailedPrecondition for a mode or retrieval the
// server cannot run. Pure functions of the request and a ParseContext:
// thread-safe.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include <optional>

#include "absl/status/statusor.h"
#include "lm/generator.h"
#include "lm/knnlm.h"
#include "lm/tokenizer.h"
#include "proto/rag.pb.h"
#include "retriever/leakage.h"
#include "retriever/retriever.h"

namespace rag::services {

// IVF lists a kNN-LM datastore search visits when a request leaves nprobe 0:
// on Brown, nprobe 4, 8 and 16 give the same perplexity within 0.2%, and
// the search, not the forward pass, sets kNN-LM's speed (bench_knnlm: at 4,
// 0.51 of the LM's scoring speed; at 8, 0.45).
inline constexpr int kDefaultKnnNprobe = 4;
// NextTokenRequest.top_n and GenerateRequest.max_tokens when 0.
inline constexpr int kDefaultTopN = 10;
inline constexpr int kDefaultGenerateTokens = 64;

struct EngineLimits {
  int64_t max_text_bytes = 1 << 20;  // any text or prompt. Default: 1 MiB
  int max_batch = 256;               // texts per Search. Default: 256
  int max_k = 4096;                  // neighbours per query. Default: 4096
  int max_top_n = 1000;              // NextToken.top_n. Default: 1000
  int max_generate_tokens = 1024;    // Generate.max_tokens. Default: 1024
  int64_t max_id_bytes = 1024;       // Document.id. Default: 1024
};
// max_text_bytes of an engine used in-process (the CLI without --server, the
// Python module): a local user may score a whole book at once; only a
// shared server needs protecting from huge requests.
inline constexpr int64_t kLocalMaxTextBytes = int64_t{1} << 31;

// How a scoring request runs: the plain LM, kNN-LM over the index's
// datastore, a RETRO model, the LM with the ∞-gram estimate over the
// index's documents, or the LM with retrieved passages in its context
// (In-Context RALM).
enum class Mode { kLm, kKnnLm, kRetro, kInfgram, kRalm };
inline constexpr int kNumModes = 5;
inline constexpr Mode kAllModes[kNumModes] = {Mode::kLm, Mode::kKnnLm, Mode::kRetro, Mode::kInfgram, Mode::kRalm};
// The mode's name in requests and responses: "lm", "knnlm", "retro",
// "infgram", "ralm".
const char* ModeName(Mode mode);
// The mode a request's name gives ("" is lm); nullopt for an unknown name.
// The one place names become modes: the server (ParseMode) and the command
// line (its own output) both go through it.
std::optional<Mode> ModeFromName(const std::string& name);
// Every mode's name, as a list for messages: "lm, knnlm, retro, infgram or ralm".
std::string ModeNames();

// Where a RETRO request's neighbours come from (RetroOptions.retrieval).
enum class Retrieval { kOn, kOff, kRandom };
// "on", "off", "random".
const char* RetrievalName(Retrieval retrieval);

// What the server can run, against which requests are checked.
struct ParseContext {
  EngineLimits limits;
  bool has_index = false;        // an index is served
  bool has_datastore = false;    // ... with a kNN-LM datastore
  bool has_counts = false;       // ... held here, with its documents' suffix array (infgram)
  int64_t retro_chunk_size = 0;  // the RETRO model's m; 0: no RETRO model
  int64_t vocab_size = 0;        // the tokenizer's
  int64_t context = 0;           // the LM's context in tokens (ralm's layout)
};

// Validated kNN-LM parameters (KnnOptions, defaults filled in).
struct KnnParams {
  lm::KnnOptions knn;
  int nprobe = kDefaultKnnNprobe;
  bool exact = false;
  std::string exclude_doc_id;  // "" excludes nothing
};

// The ∞-gram weights when a request leaves them unset: the best pair of a
// grid on the first half of Brown's validation documents, own document
// excluded (scripts/tune_infgram.py; docs/results.md, issue 26).
inline constexpr double kDefaultInfgramLambda = 0.3;
inline constexpr double kDefaultInfgramLambdaSparse = 0.3;

// Validated ∞-gram parameters (InfgramOptions, defaults filled in).
struct InfgramParams {
  double lambda = kDefaultInfgramLambda;
  double lambda_sparse = kDefaultInfgramLambdaSparse;
  std::string exclude_doc_id;  // "" excludes nothing
};

// In-Context RALM's defaults when a request leaves them 0: the paper's
// retrieval stride s and query length q (Ram et al. 2023, section 3); the
// retriever and the passage length (a quarter of the context) were chosen
// on the first half of Brown's validation documents, own document excluded
// (scripts/tune_ralm.py; docs/results.md, issue 26: dense and BM25 within
// 0.02% there, 64 passage tokens 0.6% better than 128).
inline constexpr int kDefaultRalmStride = 4;
inline constexpr int kDefaultRalmQueryTokens = 32;
inline constexpr const char* kDefaultRalmSearchMethod = "dense";
// The passage length a request leaving it 0 gets: a quarter of the model's
// context, within the room the stride leaves.
inline int64_t DefaultRalmPassageTokens(int64_t context, int64_t stride) {
  return std::min(context / 4, context - stride);
}

// Validated In-Context RALM parameters (RalmOptions, defaults filled in).
struct RalmParams {
  int stride = kDefaultRalmStride;
  int query_tokens = kDefaultRalmQueryTokens;
  int passage_tokens = 0;  // filled in: a quarter of the context unless given
  std::string search_method = kDefaultRalmSearchMethod;
  std::string exclude_doc_id;  // "" excludes nothing
};

// Validated RETRO parameters (RetroOptions, defaults filled in).
struct RetroParams {
  Retrieval retrieval = Retrieval::kOn;
  int leakage_filter = retriever::kDefaultLeakageRun;  // tokens; 0 = off
  std::string exclude_doc_id;
  std::string search_method = "dense";  // retriever::SearchOptions::method: dense or bm25
};

struct ScoreParams {
  Mode mode = Mode::kLm;
  std::string text;
  bool per_token = false;
  int stride = 0;           // tokens; 0 = half the context
  bool components = false;  // knnlm: per-token log p_lm and log p_knn
  int prompt_bytes = 0;     // retro, ralm: the text's prompt, 0 = none
  KnnParams knn;            // when mode is kKnnLm
  RetroParams retro;        // when mode is kRetro
  InfgramParams infgram;    // when mode is kInfgram
  RalmParams ralm;          // when mode is kRalm
};

struct NextTokenParams {
  Mode mode = Mode::kLm;
  std::string text;
  int top_n = 10;
  KnnParams knn;
  RetroParams retro;
  InfgramParams infgram;
  RalmParams ralm;
};

struct GenerateParams {
  Mode mode = Mode::kLm;
  std::string prompt;                   // when prompt_ids is empty
  std::vector<lm::TokenId> prompt_ids;  // the prompt as ids, when given so
  lm::SamplingOptions sampling;         // max_tokens and stop_at_eot included
  KnnParams knn;
  RetroParams retro;
  InfgramParams infgram;
  RalmParams ralm;
};

struct SearchParams {
  std::vector<std::string> texts;
  retriever::SearchOptions options;
};

// RESOURCE_EXHAUSTED naming the field, the limit and the `rag serve` flag
// that sets it.
absl::Status OverLimit(const std::string& what, int64_t value, int64_t limit, const char* flag);
// `text` non-empty (unless allow_empty) and within limits.max_text_bytes.
absl::Status CheckText(const std::string& text, const std::string& field, bool allow_empty, const EngineLimits& limits);

// "" or "lm", "knnlm", "retro", "infgram", "ralm", when the server can run it.
absl::StatusOr<Mode> ParseMode(const std::string& mode, const ParseContext& ctx);

absl::StatusOr<ScoreParams> ParseScoreRequest(const v1::ScoreRequest& request, const ParseContext& ctx);
absl::StatusOr<NextTokenParams> ParseNextTokenRequest(const v1::NextTokenRequest& request, const ParseContext& ctx);
absl::StatusOr<GenerateParams> ParseGenerateRequest(const v1::GenerateRequest& request, const ParseContext& ctx);
// The index being served is the caller's check (before this one).
absl::StatusOr<SearchParams> ParseSearchRequest(const v1::SearchRequest& request, const ParseContext& ctx);
// Document.id and Document.text of one AddDocuments message.
absl::Status ValidateDocument(const v1::Document& document, const EngineLimits& limits);

}  // namespace rag::services

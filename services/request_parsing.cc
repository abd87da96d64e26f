#include "services/request_parsing.h"

#include <cmath>

#include "common/status.h"

namespace rag::services {
namespace {

// `k` (the request's `given`, its default applied) within [1, max_k].
absl::Status CheckK(int k, int given, const std::string& field, const EngineLimits& limits) {
  if (k > limits.max_k) return OverLimit(field, k, limits.max_k, "--max-k");
  if (k < 1) {
    return absl::InvalidArgumentError(field + " must be in [1, " + std::to_string(limits.max_k) + "], got " +
                                      std::to_string(given));
  }
  return absl::OkStatus();
}

// `nprobe` (the request's `given`, its default applied) within [1, 65536].
absl::Status CheckNprobe(int nprobe, int given, const std::string& field) {
  if (nprobe < 1 || nprobe > (1 << 16)) {
    return absl::InvalidArgumentError(field + " must be in [1, 65536], got " + std::to_string(given));
  }
  return absl::OkStatus();
}

absl::StatusOr<KnnParams> ParseKnn(const v1::KnnOptions& o, const std::string& exclude_doc_id,
                                   const ParseContext& ctx) {
  KnnParams p;
  if (o.has_lambda()) {
    if (!(o.lambda() >= 0 && o.lambda() <= 1)) return absl::InvalidArgumentError("knn.lambda must be in [0, 1]");
    p.knn.lambda = o.lambda();
  }
  if (o.has_temperature()) {
    if (!(o.temperature() > 0) || !std::isfinite(o.temperature())) {
      return absl::InvalidArgumentError("knn.temperature must be > 0");
    }
    p.knn.temperature = o.temperature();
  }
  p.knn.k = o.k() == 0 ? lm::kDefaultKnnK : o.k();
  RAG_RETURN_IF_ERROR(CheckK(p.knn.k, o.k(), "knn.k", ctx.limits));
  p.nprobe = o.nprobe() == 0 ? kDefaultKnnNprobe : o.nprobe();
  RAG_RETURN_IF_ERROR(CheckNprobe(p.nprobe, o.nprobe(), "knn.nprobe"));
  p.exact = o.exact_distances();
  if (o.has_min_lm_entropy()) {
    if (!(o.min_lm_entropy() >= 0) || !std::isfinite(o.min_lm_entropy())) {
      return absl::InvalidArgumentError("knn.min_lm_entropy must be >= 0 (nats)");
    }
    p.knn.min_entropy = o.min_lm_entropy();
  }
  if (o.has_min_pointers()) {
    if (o.min_pointers() < 0 || o.min_pointers() > p.knn.k) {
      return absl::InvalidArgumentError("knn.min_pointers must be in [0, knn.k]");
    }
    p.knn.min_pointers = o.min_pointers();
  }
  if (p.knn.min_pointers > 0 && p.knn.min_entropy > 0) {
    return absl::InvalidArgumentError("knn.min_pointers and knn.min_lm_entropy cannot be combined");
  }
  p.exclude_doc_id = exclude_doc_id;
  return p;
}

// RetoMaton's pointers follow a scored text; generation has no such text.
absl::Status ScoreOnlyPointers(const KnnParams& p) {
  if (p.knn.min_pointers == 0) return absl::OkStatus();
  return absl::InvalidArgumentError("knn.min_pointers applies to Score only: pointers follow the scored text");
}

absl::StatusOr<InfgramParams> ParseInfgram(const v1::InfgramOptions& o, const std::string& exclude_doc_id) {
  InfgramParams p;
  if (o.has_lambda()) {
    if (!(o.lambda() >= 0 && o.lambda() <= 1)) return absl::InvalidArgumentError("infgram.lambda must be in [0, 1]");
    p.lambda = o.lambda();
  }
  if (o.has_lambda_sparse()) {
    if (!(o.lambda_sparse() >= 0 && o.lambda_sparse() <= 1)) {
      return absl::InvalidArgumentError("infgram.lambda_sparse must be in [0, 1]");
    }
    p.lambda_sparse = o.lambda_sparse();
  }
  p.exclude_doc_id = exclude_doc_id;
  return p;
}

absl::StatusOr<RalmParams> ParseRalm(const v1::RalmOptions& o, const std::string& exclude_doc_id,
                                     const ParseContext& ctx) {
  RalmParams p;
  const int64_t context = ctx.context;
  if (o.stride() < 0 || o.stride() > context / 2) {
    return absl::InvalidArgumentError("ralm.stride must be in [0, " + std::to_string(context / 2) +
                                      "] (half the model's context; 0 = " + std::to_string(kDefaultRalmStride) +
                                      "), got " + std::to_string(o.stride()));
  }
  if (o.stride() > 0) p.stride = o.stride();
  if (o.query_tokens() < 0 || o.query_tokens() > context) {
    return absl::InvalidArgumentError("ralm.query_tokens must be in [0, " + std::to_string(context) +
                                      "] (0 = " + std::to_string(kDefaultRalmQueryTokens) + "), got " +
                                      std::to_string(o.query_tokens()));
  }
  if (o.query_tokens() > 0) p.query_tokens = o.query_tokens();
  const int64_t most = context - p.stride;
  if (o.passage_tokens() < 0 || o.passage_tokens() > most) {
    return absl::InvalidArgumentError("ralm.passage_tokens must be in [0, " + std::to_string(most) +
                                      "] (the context minus the stride; 0 = a quarter of the context), got " +
                                      std::to_string(o.passage_tokens()));
  }
  p.passage_tokens =
      static_cast<int>(o.passage_tokens() > 0 ? o.passage_tokens() : DefaultRalmPassageTokens(context, p.stride));
  if (!o.search_method().empty()) p.search_method = o.search_method();
  if (p.search_method != "dense" && p.search_method != "bm25") {
    return absl::InvalidArgumentError("ralm.search_method must be bm25 or dense, got '" + o.search_method() + "'");
  }
  p.exclude_doc_id = exclude_doc_id;
  return p;
}

// `with_leakage_filter`: Score reads retro.leakage_filter; NextToken and
// Generate run without the filter.
absl::StatusOr<RetroParams> ParseRetro(const v1::RetroOptions& o, const std::string& exclude_doc_id,
                                       bool with_leakage_filter, const ParseContext& ctx) {
  RetroParams p;
  if (!o.search_method().empty()) p.search_method = o.search_method();
  if (p.search_method != "dense" && p.search_method != "bm25") {
    return absl::InvalidArgumentError("retro.search_method must be dense or bm25, got '" + o.search_method() + "'");
  }
  if (o.retrieval().empty() || o.retrieval() == "on") {
    p.retrieval = Retrieval::kOn;
  } else if (o.retrieval() == "off") {
    p.retrieval = Retrieval::kOff;
  } else if (o.retrieval() == "random") {
    p.retrieval = Retrieval::kRandom;
  } else {
    return absl::InvalidArgumentError("retro.retrieval must be on, off or random, got '" + o.retrieval() + "'");
  }
  if (!with_leakage_filter) {
    p.leakage_filter = 0;
  } else if (o.has_leakage_filter()) {
    if (o.leakage_filter() < 0) return absl::InvalidArgumentError("retro.leakage_filter must be >= 0 (0 = off)");
    p.leakage_filter = o.leakage_filter();
  }
  p.exclude_doc_id = exclude_doc_id;
  if (p.retrieval != Retrieval::kOff && !ctx.has_index) {
    return absl::FailedPreconditionError(std::string("retro retrieval ") + RetrievalName(p.retrieval) +
                                         " needs the index the RETRO model retrieves from (start with --index), "
                                         "or use retrieval off");
  }
  return p;
}

}  // namespace

const char* ModeName(Mode mode) {
  switch (mode) {
    case Mode::kLm:
      return "lm";
    case Mode::kKnnLm:
      return "knnlm";
    case Mode::kRetro:
      return "retro";
    case Mode::kInfgram:
      return "infgram";
    case Mode::kRalm:
      return "ralm";
  }
  return "lm";
}

const char* RetrievalName(Retrieval retrieval) {
  switch (retrieval) {
    case Retrieval::kOn:
      return "on";
    case Retrieval::kOff:
      return "off";
    case Retrieval::kRandom:
      return "random";
  }
  return "on";
}

absl::Status OverLimit(const std::string& what, int64_t value, int64_t limit, const char* flag) {
  return absl::ResourceExhaustedError(what + " is " + std::to_string(value) + "; the limit is " +
                                      std::to_string(limit) + " (rag serve " + flag + ")");
}

absl::Status CheckText(const std::string& text, const std::string& field, bool allow_empty,
                       const EngineLimits& limits) {
  if (!allow_empty && text.empty()) return absl::InvalidArgumentError(field + " is empty");
  if (static_cast<int64_t>(text.size()) > limits.max_text_bytes) {
    return OverLimit(field + " in bytes", static_cast<int64_t>(text.size()), limits.max_text_bytes, "--max-text-bytes");
  }
  return absl::OkStatus();
}

std::optional<Mode> ModeFromName(const std::string& name) {
  if (name.empty()) return Mode::kLm;
  for (Mode m : kAllModes) {
    if (name == ModeName(m)) return m;
  }
  return std::nullopt;
}

std::string ModeNames() {
  std::string names;
  for (int i = 0; i < kNumModes; ++i) {
    names += (i == 0 ? "" : i + 1 == kNumModes ? " or " : ", ") + std::string(ModeName(kAllModes[i]));
  }
  return names;
}

absl::StatusOr<Mode> ParseMode(const std::string& mode, const ParseContext& ctx) {
  const std::optional<Mode> m = ModeFromName(mode);
  if (!m.has_value()) return absl::InvalidArgumentError("mode must be " + ModeNames() + ", got '" + mode + "'");
  if (*m == Mode::kKnnLm && !ctx.has_datastore) {
    return absl::FailedPreconditionError(
        "mode knnlm needs a datastore, and none is served (build the index with "
        "`rag build --datastore` and serve it with --index)");
  }
  if (*m == Mode::kRetro && ctx.retro_chunk_size <= 0) {
    return absl::FailedPreconditionError(
        "mode retro needs a RETRO model (train one with `rag train --arch retro` "
        "and serve its directory with --model)");
  }
  if (*m == Mode::kInfgram && !ctx.has_counts) {
    return absl::FailedPreconditionError(
        "mode infgram counts in the index's documents, and no index is held by this server (serve one with "
        "--index; a sharded front does not count)");
  }
  if (*m == Mode::kRalm && !ctx.has_index) {
    return absl::FailedPreconditionError(
        "mode ralm retrieves passages from an index, and none is served (start with --index or --shards)");
  }
  return *m;
}

absl::StatusOr<ScoreParams> ParseScoreRequest(const v1::ScoreRequest& request, const ParseContext& ctx) {
  ScoreParams p;
  RAG_ASSIGN_OR_RETURN(p.mode, ParseMode(request.mode(), ctx));
  RAG_RETURN_IF_ERROR(CheckText(request.text(), "text", false, ctx.limits));
  if (request.stride() < 0) return absl::InvalidArgumentError("stride must be >= 0");
  p.text = request.text();
  p.per_token = request.per_token();
  p.stride = request.stride();
  p.components = request.components();
  p.prompt_bytes = request.prompt_bytes();
  if (p.mode == Mode::kKnnLm) {
    RAG_ASSIGN_OR_RETURN(p.knn, ParseKnn(request.knn(), request.exclude_doc_id(), ctx));
  } else if (p.mode == Mode::kInfgram) {
    RAG_ASSIGN_OR_RETURN(p.infgram, ParseInfgram(request.infgram(), request.exclude_doc_id()));
  } else if (p.mode == Mode::kRalm) {
    RAG_ASSIGN_OR_RETURN(p.ralm, ParseRalm(request.ralm(), request.exclude_doc_id(), ctx));
  } else if (p.mode == Mode::kRetro) {
    RAG_ASSIGN_OR_RETURN(p.retro, ParseRetro(request.retro(), request.exclude_doc_id(), true, ctx));
    const int64_t m = ctx.retro_chunk_size;
    if (request.stride() % m != 0) {
      return absl::InvalidArgumentError("stride must be a multiple of the RETRO chunk size " + std::to_string(m));
    }
  }
  if ((p.mode == Mode::kRetro || p.mode == Mode::kRalm) &&
      (request.prompt_bytes() < 0 || request.prompt_bytes() > static_cast<int64_t>(request.text().size()))) {
    return absl::InvalidArgumentError("prompt_bytes must be in [0, the text's " + std::to_string(request.text().size()) +
                                      " bytes]");
  }
  return p;
}

absl::StatusOr<NextTokenParams> ParseNextTokenRequest(const v1::NextTokenRequest& request, const ParseContext& ctx) {
  NextTokenParams p;
  RAG_ASSIGN_OR_RETURN(p.mode, ParseMode(request.mode(), ctx));
  RAG_RETURN_IF_ERROR(CheckText(request.text(), "text", true, ctx.limits));
  p.top_n = request.top_n() == 0 ? kDefaultTopN : request.top_n();
  if (p.top_n > ctx.limits.max_top_n) return OverLimit("top_n", p.top_n, ctx.limits.max_top_n, "--max-top-n");
  if (p.top_n < 1) {
    return absl::InvalidArgumentError("top_n must be in [1, " + std::to_string(ctx.limits.max_top_n) + "], got " +
                                      std::to_string(request.top_n()));
  }
  p.text = request.text();
  // NextToken has no exclude_doc_id.
  if (p.mode == Mode::kKnnLm) {
    RAG_ASSIGN_OR_RETURN(p.knn, ParseKnn(request.knn(), "", ctx));
    RAG_RETURN_IF_ERROR(ScoreOnlyPointers(p.knn));
  } else if (p.mode == Mode::kInfgram) {
    RAG_ASSIGN_OR_RETURN(p.infgram, ParseInfgram(request.infgram(), ""));
  } else if (p.mode == Mode::kRalm) {
    RAG_ASSIGN_OR_RETURN(p.ralm, ParseRalm(request.ralm(), "", ctx));
  } else if (p.mode == Mode::kRetro) {
    RAG_ASSIGN_OR_RETURN(p.retro, ParseRetro(request.retro(), "", false, ctx));
  }
  return p;
}

absl::StatusOr<GenerateParams> ParseGenerateRequest(const v1::GenerateRequest& request, const ParseContext& ctx) {
  GenerateParams p;
  const EngineLimits& limits = ctx.limits;
  RAG_ASSIGN_OR_RETURN(p.mode, ParseMode(request.mode(), ctx));
  RAG_RETURN_IF_ERROR(CheckText(request.prompt(), "prompt", true, limits));
  const int max_tokens = request.max_tokens() == 0 ? kDefaultGenerateTokens : request.max_tokens();
  if (max_tokens > limits.max_generate_tokens) {
    return OverLimit("max_tokens", max_tokens, limits.max_generate_tokens, "--max-generate-tokens");
  }
  if (max_tokens < 1) {
    return absl::InvalidArgumentError("max_tokens must be in [1, " + std::to_string(limits.max_generate_tokens) +
                                      "], got " + std::to_string(request.max_tokens()));
  }
  const auto& s = request.sampling();
  if (!(s.temperature() >= 0) || !std::isfinite(s.temperature())) {
    return absl::InvalidArgumentError("sampling.temperature must be >= 0 (0 = greedy)");
  }
  if (s.top_k() < 0) return absl::InvalidArgumentError("sampling.top_k must be >= 0 (0 = all tokens)");
  if (!(s.top_p() >= 0 && s.top_p() <= 1)) return absl::InvalidArgumentError("sampling.top_p must be in [0, 1]");
  if (!(s.repetition_penalty() >= 0) || !std::isfinite(s.repetition_penalty())) {
    return absl::InvalidArgumentError("sampling.repetition_penalty must be > 0 (0 or 1 = off)");
  }
  if (s.no_repeat_ngram_size() < 0) {
    return absl::InvalidArgumentError("sampling.no_repeat_ngram_size must be >= 0 (0 = off)");
  }
  p.sampling.max_tokens = max_tokens;
  p.sampling.temperature = s.temperature();
  p.sampling.top_k = s.top_k();
  p.sampling.top_p = s.top_p() == 0 ? 1.0 : s.top_p();
  p.sampling.seed = s.seed();
  p.sampling.repetition_penalty = s.repetition_penalty() == 0 ? 1.0 : s.repetition_penalty();
  p.sampling.no_repeat_ngram_size = s.no_repeat_ngram_size();
  p.sampling.stop_at_eot = !request.ignore_eot();
  p.sampling.num_tokens = ctx.vocab_size;  // never a row the tokenizer cannot decode
  if (request.prompt_token_ids_size() > 0) {
    if (!request.prompt().empty()) {
      return absl::InvalidArgumentError("give the prompt as text or as prompt_token_ids, not both");
    }
    if (request.prompt_token_ids_size() > limits.max_text_bytes) {
      return OverLimit("the number of prompt_token_ids", request.prompt_token_ids_size(), limits.max_text_bytes,
                       "--max-text-bytes");
    }
    for (int i = 0; i < request.prompt_token_ids_size(); ++i) {
      const int32_t id = request.prompt_token_ids(i);
      if (id < 0 || id >= ctx.vocab_size) {
        return absl::InvalidArgumentError("prompt_token_ids[" + std::to_string(i) + "] = " + std::to_string(id) +
                                          " is not a token id (vocabulary of " + std::to_string(ctx.vocab_size) + ")");
      }
    }
    p.prompt_ids.assign(request.prompt_token_ids().begin(), request.prompt_token_ids().end());
  } else {
    p.prompt = request.prompt();
  }
  if (p.mode == Mode::kKnnLm) {
    RAG_ASSIGN_OR_RETURN(p.knn, ParseKnn(request.knn(), request.exclude_doc_id(), ctx));
    RAG_RETURN_IF_ERROR(ScoreOnlyPointers(p.knn));
  } else if (p.mode == Mode::kInfgram) {
    RAG_ASSIGN_OR_RETURN(p.infgram, ParseInfgram(request.infgram(), request.exclude_doc_id()));
  } else if (p.mode == Mode::kRalm) {
    RAG_ASSIGN_OR_RETURN(p.ralm, ParseRalm(request.ralm(), request.exclude_doc_id(), ctx));
  } else if (p.mode == Mode::kRetro) {
    RAG_ASSIGN_OR_RETURN(p.retro, ParseRetro(request.retro(), request.exclude_doc_id(), false, ctx));
  }
  return p;
}

absl::StatusOr<SearchParams> ParseSearchRequest(const v1::SearchRequest& request, const ParseContext& ctx) {
  const EngineLimits& limits = ctx.limits;
  if (request.texts().empty()) return absl::InvalidArgumentError("texts is empty: give at least one query");
  if (request.texts_size() > limits.max_batch) {
    return OverLimit("the number of texts", request.texts_size(), limits.max_batch, "--max-batch");
  }
  SearchParams p;
  p.options.k = request.k() == 0 ? retriever::kDefaultSearchK : request.k();
  RAG_RETURN_IF_ERROR(CheckK(p.options.k, request.k(), "k", limits));
  p.options.nprobe = request.nprobe() == 0 ? retriever::kDefaultNprobe : request.nprobe();
  RAG_RETURN_IF_ERROR(CheckNprobe(p.options.nprobe, request.nprobe(), "nprobe"));
  if (request.exclude_doc_ids_size() > 100000) {
    return absl::ResourceExhaustedError("exclude_doc_ids has more than 100000 ids");
  }
  for (int i = 0; i < request.texts_size(); ++i) {
    RAG_RETURN_IF_ERROR(CheckText(request.texts(i), "texts[" + std::to_string(i) + "]", false, limits));
  }
  p.texts.assign(request.texts().begin(), request.texts().end());
  p.options.exclude_doc_ids.assign(request.exclude_doc_ids().begin(), request.exclude_doc_ids().end());
  if (!request.method().empty()) p.options.method = request.method();
  return p;
}

absl::Status ValidateDocument(const v1::Document& d, const EngineLimits& limits) {
  if (d.id().empty()) return absl::InvalidArgumentError("id is empty: every document needs a unique id");
  if (static_cast<int64_t>(d.id().size()) > limits.max_id_bytes) {
    return OverLimit("id in bytes", static_cast<int64_t>(d.id().size()), limits.max_id_bytes, "--max-id-bytes");
  }
  return CheckText(d.text(), "text of document '" + d.id() + "'", false, limits);
}

}  // namespace rag::services

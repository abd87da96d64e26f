// Knowledge probes (LAMA, Petroni et al. 2019) for causal language models.
//
// A probe is a sentence with an object slot and the gold object, e.g.
// "The chemical symbol of gold is [MASK]." / "Au". Every candidate object is
// put in the slot and the sentence scored by its log-probability under the
// model (multi-token objects need no special case); the gold object's rank
// among the candidates gives P@1, P@10 and MRR. As LAMA does for GPT-style
// models, a second ranking uses only the left context: the log-probability
// of each candidate's first token right after the text before the slot.
//
// Input is LAMA-compatible JSONL (../shared/docs/interfaces.md): one probe a
// line, either LAMA's shape {"sub_label", "obj_label", "predicate_id",
// "masked_sentences": [...]} or the template shape {..., "template": "... [X]
// ... [Y] ..."}, with optional "candidates". Without candidates, a probe's
// candidates are the distinct obj_labels of its relation (predicate_id).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "lm/tokenizer.h"

namespace rag::eval {

inline constexpr std::string_view kMask = "[MASK]";

struct Probe {
  int line = 0;  // 1-based line of the JSONL file
  std::string relation;
  std::string subject;
  std::string object;
  // Each with exactly one [MASK], the object's slot; the subject filled in.
  std::vector<std::string> sentences;
  // The objects to rank; always holds `object`, never twice the same.
  std::vector<std::string> candidates;
  // Optional "evidence_doc_id": the indexed document that states the fact,
  // which a retrieval mode can be told to ignore (what the model knows
  // without that document).
  std::string evidence_doc_id;
};

// Parses probe JSONL. Blank lines are skipped; any other malformed line is
// an InvalidArgument error naming `source` and the line number.
absl::StatusOr<std::vector<Probe>> ParseProbes(std::string_view jsonl, const std::string& source = "probes");
absl::StatusOr<std::vector<Probe>> ReadProbes(const std::string& path);

// The log-probability of every token of `text` (as the model tokenizes it,
// after an end-of-text token), in order, for a sentence of `probe`.
// In-process or over gRPC alike.
using TokenScorer = std::function<absl::StatusOr<std::vector<float>>(const std::string& text, const Probe& probe)>;

// A candidate's scores for one probe, summed over its sentences.
struct CandidateScore {
  std::string object;
  double sentence_logprob = 0;     // the whole sentence with the object in place
  double first_token_logprob = 0;  // the object's first token after the left context
};

struct ProbeResult {
  const Probe* probe = nullptr;
  int rank = 0;              // of the gold object by sentence log-probability, 1 = best
  int first_token_rank = 0;  // by left-context first-token log-probability
  std::string top;           // the best candidate by sentence log-probability
  std::vector<CandidateScore> scores;
};

struct ProbeMetrics {
  int64_t probes = 0;
  double p_at_1 = 0, p_at_10 = 0, mrr = 0;
  // The same from the left-context first-token ranking.
  double first_token_p_at_1 = 0, first_token_p_at_10 = 0, first_token_mrr = 0;
};

// Rank of candidate `gold` among `scores` (higher is better): 1 + the number
// of other candidates scoring at least as high, so ties count against the
// model and a model that scores everything alike gets no credit.
int RankOf(const std::vector<double>& scores, size_t gold);

ProbeMetrics Summarize(const std::vector<ProbeResult>& results);

// A probe set's two halves, for choosing settings on one (dev) and
// reporting on the other (test): a probe's half is the low bit of the
// XXH3 of "relation\tsubject\tobject", so it never depends on the file's
// order or on the other probes.
enum class ProbeHalf { kAll, kDev, kTest };
// "all", "dev", "test"; nullopt for another name.
std::optional<ProbeHalf> ProbeHalfFromName(const std::string& name);
bool InHalf(const Probe& probe, ProbeHalf half);

// The popularity bucket (PopQA's axis: how often the subject occurs in the
// corpus) of an occurrence count: "0", "1-9", "10-99", "100-999", "1000+".
std::string PopularityBucket(int64_t count);

struct ProbeReport {
  std::vector<ProbeResult> results;
  ProbeMetrics overall;
  std::map<std::string, ProbeMetrics> by_relation;
};

// Scores every candidate of every probe with `score` (one call per sentence
// and candidate). `on_probe`, if set, is called after each probe (progress).
absl::StatusOr<ProbeReport> EvaluateProbes(const std::vector<Probe>& probes, const lm::Tokenizer& tokenizer,
                                           const TokenScorer& score,
                                           const std::function<void(size_t done)>& on_probe = nullptr);

}  // namespace rag::eval

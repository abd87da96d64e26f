#include "eval/probes.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <set>

#include "common/file_util.h"
#include "common/status.h"

namespace rag::eval {
namespace {

using nlohmann::json;

size_t Count(std::string_view text, std::string_view what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string_view::npos; at = text.find(what, at + what.size())) ++n;
  return n;
}

std::string ReplaceAll(std::string text, std::string_view what, std::string_view with) {
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + with.size())) {
    text.replace(at, what.size(), with);
  }
  return text;
}

// A string field that must be present and non-empty.
absl::StatusOr<std::string> NonEmptyString(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end()) return absl::InvalidArgumentError(std::string("no \"") + key + "\"");
  if (!it->is_string() || it->get<std::string>().empty()) {
    return absl::InvalidArgumentError(std::string("\"") + key + "\" must be a non-empty string");
  }
  return it->get<std::string>();
}

absl::StatusOr<Probe> ParseLine(std::string_view line) {
  json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError("not valid JSON");
  if (!j.is_object()) return absl::InvalidArgumentError("expected a JSON object");
  Probe p;
  RAG_ASSIGN_OR_RETURN(p.object, NonEmptyString(j, "obj_label"));
  if (j.contains("predicate_id")) {
    RAG_ASSIGN_OR_RETURN(p.relation, NonEmptyString(j, "predicate_id"));
  } else {
    p.relation = "all";
  }
  if (j.contains("sub_label")) {
    RAG_ASSIGN_OR_RETURN(p.subject, NonEmptyString(j, "sub_label"));
  }
  const bool has_masked = j.contains("masked_sentences"), has_template = j.contains("template");
  if (has_masked == has_template) {
    return absl::InvalidArgumentError("needs exactly one of \"masked_sentences\" (LAMA) and \"template\"");
  }
  if (has_masked) {
    const json& list = j["masked_sentences"];
    if (!list.is_array() || list.empty()) {
      return absl::InvalidArgumentError("\"masked_sentences\" must be a non-empty array of strings");
    }
    for (const json& s : list) {
      if (!s.is_string()) return absl::InvalidArgumentError("\"masked_sentences\" must be a non-empty array of strings");
      const std::string sentence = s.get<std::string>();
      if (Count(sentence, kMask) != 1) {
        return absl::InvalidArgumentError("masked sentence \"" + sentence + "\" must hold [MASK] exactly once");
      }
      p.sentences.push_back(sentence);
    }
  } else {
    RAG_ASSIGN_OR_RETURN(std::string t, NonEmptyString(j, "template"));
    if (Count(t, "[Y]") != 1) return absl::InvalidArgumentError("template \"" + t + "\" must hold [Y] exactly once");
    if (Count(t, "[X]") > 0 && p.subject.empty()) {
      return absl::InvalidArgumentError("template \"" + t + "\" has [X] but the line has no \"sub_label\"");
    }
    if (Count(t, kMask) > 0) return absl::InvalidArgumentError("a template marks the object with [Y], not [MASK]");
    // Split at [Y] before filling in [X], so a subject holding "[Y]" (found
    // by fuzzing) cannot become a second slot.
    const size_t y = t.find("[Y]");
    std::string sentence =
        ReplaceAll(t.substr(0, y), "[X]", p.subject) + std::string(kMask) + ReplaceAll(t.substr(y + 3), "[X]", p.subject);
    if (Count(sentence, kMask) != 1) {
      return absl::InvalidArgumentError("\"sub_label\" must not hold [MASK] (it would become a second slot)");
    }
    p.sentences.push_back(std::move(sentence));
  }
  if (j.contains("evidence_doc_id")) {
    RAG_ASSIGN_OR_RETURN(p.evidence_doc_id, NonEmptyString(j, "evidence_doc_id"));
  }
  if (j.contains("candidates")) {
    const json& list = j["candidates"];
    if (!list.is_array() || list.empty()) {
      return absl::InvalidArgumentError("\"candidates\" must be a non-empty array of strings");
    }
    std::set<std::string> seen;
    for (const json& c : list) {
      if (!c.is_string() || c.get<std::string>().empty()) {
        return absl::InvalidArgumentError("\"candidates\" must be a non-empty array of non-empty strings");
      }
      if (seen.insert(c.get<std::string>()).second) p.candidates.push_back(c.get<std::string>());
    }
    if (seen.count(p.object) == 0) p.candidates.push_back(p.object);
  }
  return p;
}

}  // namespace

absl::StatusOr<std::vector<Probe>> ParseProbes(std::string_view jsonl, const std::string& source) {
  std::vector<Probe> probes;
  int line_no = 0;
  size_t start = 0;
  while (start < jsonl.size()) {
    size_t end = jsonl.find('\n', start);
    if (end == std::string_view::npos) end = jsonl.size();
    std::string_view line = jsonl.substr(start, end - start);
    start = end + 1;
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    auto probe = ParseLine(line);
    if (!probe.ok()) {
      return absl::InvalidArgumentError(source + ":" + std::to_string(line_no) + ": " +
                                        std::string(probe.status().message()));
    }
    probe->line = line_no;
    probes.push_back(std::move(*probe));
  }
  if (probes.empty()) return absl::InvalidArgumentError(source + ": no probes");
  // Candidates by relation: its distinct objects, in order of appearance.
  std::map<std::string, std::vector<std::string>> objects;
  std::map<std::string, std::set<std::string>> seen;
  for (const Probe& p : probes) {
    if (seen[p.relation].insert(p.object).second) objects[p.relation].push_back(p.object);
  }
  for (Probe& p : probes) {
    if (p.candidates.empty()) p.candidates = objects[p.relation];
  }
  return probes;
}

absl::StatusOr<std::vector<Probe>> ReadProbes(const std::string& path) {
  RAG_ASSIGN_OR_RETURN(std::string text, ReadFile(path));
  return ParseProbes(text, path);
}

int RankOf(const std::vector<double>& scores, size_t gold) {
  int rank = 1;
  for (size_t i = 0; i < scores.size(); ++i) {
    if (i != gold && scores[i] >= scores[gold]) ++rank;
  }
  return rank;
}

std::optional<ProbeHalf> ProbeHalfFromName(const std::string& name) {
  if (name == "all") return ProbeHalf::kAll;
  if (name == "dev") return ProbeHalf::kDev;
  if (name == "test") return ProbeHalf::kTest;
  return std::nullopt;
}

bool InHalf(const Probe& probe, ProbeHalf half) {
  if (half == ProbeHalf::kAll) return true;
  const std::string hex = HashHex(probe.relation + "\t" + probe.subject + "\t" + probe.object);
  const bool odd = (std::stoi(hex.substr(hex.size() - 1), nullptr, 16) & 1) != 0;
  return odd == (half == ProbeHalf::kTest);
}

std::string PopularityBucket(int64_t count) {
  if (count <= 0) return "0";
  if (count < 10) return "1-9";
  if (count < 100) return "10-99";
  if (count < 1000) return "100-999";
  return "1000+";
}

ProbeMetrics Summarize(const std::vector<ProbeResult>& results) {
  ProbeMetrics m;
  for (const ProbeResult& r : results) {
    ++m.probes;
    m.p_at_1 += r.rank <= 1;
    m.p_at_10 += r.rank <= 10;
    m.mrr += 1.0 / r.rank;
    m.first_token_p_at_1 += r.first_token_rank <= 1;
    m.first_token_p_at_10 += r.first_token_rank <= 10;
    m.first_token_mrr += 1.0 / r.first_token_rank;
  }
  if (m.probes > 0) {
    const double n = static_cast<double>(m.probes);
    for (double* v : {&m.p_at_1, &m.p_at_10, &m.mrr, &m.first_token_p_at_1, &m.first_token_p_at_10,
                      &m.first_token_mrr}) {
      *v /= n;
    }
  }
  return m;
}

absl::StatusOr<ProbeReport> EvaluateProbes(const std::vector<Probe>& probes, const lm::Tokenizer& tokenizer,
                                           const TokenScorer& score, const std::function<void(size_t)>& on_probe) {
  ProbeReport report;
  report.results.reserve(probes.size());
  for (size_t pi = 0; pi < probes.size(); ++pi) {
    const Probe& p = probes[pi];
    const std::string where = "probe on line " + std::to_string(p.line);
    const auto gold_it = std::find(p.candidates.begin(), p.candidates.end(), p.object);
    if (gold_it == p.candidates.end()) return absl::InvalidArgumentError(where + ": the object is not a candidate");
    ProbeResult r;
    r.probe = &p;
    for (const std::string& c : p.candidates) r.scores.push_back({c, 0.0, 0.0});
    for (const std::string& sentence : p.sentences) {
      const size_t slot = sentence.find(kMask);
      if (slot == std::string::npos) return absl::InvalidArgumentError(where + ": a sentence has no [MASK]");
      const std::string left = sentence.substr(0, slot), right = sentence.substr(slot + kMask.size());
      const std::vector<lm::TokenId> left_ids = tokenizer.Encode(left);
      for (CandidateScore& cs : r.scores) {
        const std::string text = left + cs.object + right;
        absl::StatusOr<std::vector<float>> scored = score(text, p);
        if (!scored.ok()) return Annotate(scored.status(), where + ", candidate \"" + cs.object + "\"");
        const std::vector<float>& logprobs = *scored;
        const std::vector<lm::TokenId> ids = tokenizer.Encode(text);
        if (logprobs.size() != ids.size()) {
          return absl::InternalError(where + ": the scorer returned " + std::to_string(logprobs.size()) +
                                     " log-probabilities for " + std::to_string(ids.size()) + " tokens");
        }
        for (float lp : logprobs) cs.sentence_logprob += lp;
        // The object's first token: where the text's tokens leave the left
        // context's (a token that merges the context's last bytes with the
        // object's first is still predicted from the tokens before it).
        size_t first = 0;
        while (first < left_ids.size() && first < ids.size() && left_ids[first] == ids[first]) ++first;
        if (first >= ids.size()) return absl::InternalError(where + ": the object adds no token");
        cs.first_token_logprob += logprobs[first];
      }
    }
    std::vector<double> by_sentence, by_first;
    for (const CandidateScore& cs : r.scores) {
      by_sentence.push_back(cs.sentence_logprob);
      by_first.push_back(cs.first_token_logprob);
    }
    const size_t gold = static_cast<size_t>(gold_it - p.candidates.begin());
    r.rank = RankOf(by_sentence, gold);
    r.first_token_rank = RankOf(by_first, gold);
    r.top = r.scores[static_cast<size_t>(std::max_element(by_sentence.begin(), by_sentence.end()) -
                                         by_sentence.begin())]
                .object;
    report.results.push_back(std::move(r));
    if (on_probe) on_probe(pi + 1);
  }
  report.overall = Summarize(report.results);
  std::map<std::string, std::vector<ProbeResult>> grouped;
  for (const ProbeResult& r : report.results) grouped[r.probe->relation].push_back(r);
  for (const auto& [relation, results] : grouped) report.by_relation[relation] = Summarize(results);
  return report;
}

}  // namespace rag::eval

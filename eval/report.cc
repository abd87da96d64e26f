#include "eval/report.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <vector>

#include "common/file_util.h"
#include "common/status.h"

namespace rag::eval {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct Run {
  std::string name;
  json result;
};

// Every run of `kind` in the report, by name.
absl::StatusOr<std::vector<Run>> LoadRuns(const fs::path& dir, const std::string& kind) {
  std::vector<Run> runs;
  std::error_code ec;
  if (!fs::exists(dir / kind, ec)) return runs;
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir / kind, ec)) {
    if (e.path().extension() == ".json") files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  for (const auto& f : files) {
    RAG_ASSIGN_OR_RETURN(std::string text, ReadFile(f.string()));
    json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) {
      return absl::DataLossError("report file '" + f.string() + "' is not a JSON object");
    }
    runs.push_back({f.stem().string(), std::move(j)});
  }
  return runs;
}

std::string Cell(const json& v) {
  if (!v.is_number()) return "?";
  std::ostringstream s;
  s << v.get<double>();
  return s.str();
}

std::string Safe(std::string s) {
  for (char& c : s) {
    if (c == ' ' || c == '\t' || c == '"' || c == '\'') c = '_';
  }
  return s;
}

std::string Quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

// Writes name.dat and name.gp in `dir` and runs gnuplot on them.
absl::Status Plot(const fs::path& dir, const std::string& name, const std::string& data, const std::string& script) {
  RAG_RETURN_IF_ERROR(WriteFileAtomic((dir / (name + ".dat")).string(), data));
  const std::string gp = "set terminal pngcairo noenhanced size 960,540 font 'sans,11'\nset output '" + name +
                         ".png'\nset datafile missing '?'\nset key outside right top\nset grid ytics\n" + script;
  RAG_RETURN_IF_ERROR(WriteFileAtomic((dir / (name + ".gp")).string(), gp));
  const std::string cmd = "cd " + Quote(dir.string()) + " && gnuplot " + Quote(name + ".gp") + " 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return absl::InternalError("cannot run gnuplot");
  std::string out;
  char buf[512];
  while (std::fgets(buf, sizeof(buf), p) != nullptr) out += buf;
  const int rc = ::pclose(p);
  if (rc != 0) {
    return absl::FailedPreconditionError("gnuplot failed on " + (dir / (name + ".gp")).string() +
                                         " (install the Debian package gnuplot-nox; the .dat and .gp files are "
                                         "written): " + out);
  }
  return absl::OkStatus();
}

absl::Status ProbePlots(const fs::path& dir, const std::vector<Run>& runs, std::string* md) {
  std::vector<std::string> relations;
  for (const auto& r : runs) {
    const json by_relation = r.result.value("by_relation", json::object());
    for (const auto& [rel, _] : by_relation.items()) {
      if (std::find(relations.begin(), relations.end(), rel) == relations.end()) relations.push_back(rel);
    }
  }
  std::sort(relations.begin(), relations.end());
  relations.push_back("all");
  std::string data = "relation";
  for (const auto& r : runs) data += " " + Safe(r.name);
  data += "\n";
  for (const auto& rel : relations) {
    data += Safe(rel);
    for (const auto& r : runs) {
      const json& m = rel == "all" ? r.result : r.result.value("by_relation", json::object()).value(rel, json::object());
      data += " " + Cell(m.value("p_at_1", json()));
    }
    data += "\n";
  }
  const std::string script =
      "set title 'Knowledge probes: P@1 by relation'\nset style data histograms\n"
      "set style histogram clustered gap 1\nset style fill solid 0.85 border -1\nset yrange [0:1]\n"
      "set ylabel 'P@1'\nset xtics rotate by -20\nplot for [i=2:" +
      std::to_string(runs.size() + 1) + "] 'probes_p_at_1.dat' using i:xtic(1) title columnheader(i)\n";
  RAG_RETURN_IF_ERROR(Plot(dir, "probes_p_at_1", data, script));
  *md += "## Knowledge probes\n\n| run | mode | probes | P@1 | P@10 | MRR | first-token P@1 |\n|---|---|---|---|---|---|---|\n";
  for (const auto& r : runs) {
    const json& j = r.result;
    char line[512];
    std::snprintf(line, sizeof(line), "| %s | %s | %lld | %.3f | %.3f | %.3f | %.3f |\n", r.name.c_str(),
                  j.value("mode", "").c_str(), static_cast<long long>(j.value("probes", 0)), j.value("p_at_1", 0.0),
                  j.value("p_at_10", 0.0), j.value("mrr", 0.0),
                  j.value("first_token", json::object()).value("p_at_1", 0.0));
    *md += line;
  }
  *md += "\n![P@1 by relation](probes_p_at_1.png)\n\n";
  return absl::OkStatus();
}

absl::Status MemorizationPlots(const fs::path& dir, const std::vector<Run>& runs, std::string* md) {
  std::set<int> lengths;
  for (const auto& r : runs) {
    const json by_prefix = r.result.value("by_prefix", json::object());
    for (const auto& [l, _] : by_prefix.items()) lengths.insert(std::stoi(l));
  }
  for (const char* metric : {"token_match", "exact"}) {
    std::string data = "prefix";
    for (const auto& r : runs) data += " " + Safe(r.name);
    data += "\n";
    for (int l : lengths) {
      data += std::to_string(l);
      for (const auto& r : runs) {
        data += " " + Cell(r.result.value("by_prefix", json::object()).value(std::to_string(l), json::object()).value(metric, json()));
      }
      data += "\n";
    }
    const std::string name = std::string("memorization_") + (std::string(metric) == "exact" ? "exact" : "match");
    const std::string label = std::string(metric) == "exact" ? "exact-match rate of the suffix"
                                                            : "fraction of suffix tokens reproduced";
    const std::string script = "set title 'Memorization: " + label + "'\nset xlabel 'prefix length (tokens)'\n" +
                               "set ylabel '" + label + "'\nset yrange [0:*]\nset logscale x 2\n" +
                               "plot for [i=2:" + std::to_string(runs.size() + 1) + "] '" + name +
                               ".dat' using 1:i with linespoints lw 2 pt 7 title columnheader(i)\n";
    RAG_RETURN_IF_ERROR(Plot(dir, name, data, script));
  }
  // Token match by duplicate bucket (Carlini 2023's second axis): one series
  // per run and prefix length; a bucket a run has no samples in is missing.
  const std::vector<std::string> buckets = {"1", "2-4", "5-15", "16+"};
  std::string dup = "duplicates";
  std::vector<std::pair<const Run*, int>> series;
  for (const auto& r : runs) {
    for (int l : lengths) {
      if (!r.result.value("by_prefix", json::object()).contains(std::to_string(l))) continue;
      series.emplace_back(&r, l);
      dup += " " + Safe(r.name) + "/" + std::to_string(l);
    }
  }
  dup += "\n";
  for (const auto& b : buckets) {
    dup += b;
    for (const auto& [r, l] : series) {
      dup += " " + Cell(r->result["by_prefix"][std::to_string(l)].value("by_duplicates", json::object())
                            .value(b, json::object()).value("token_match", json()));
    }
    dup += "\n";
  }
  RAG_RETURN_IF_ERROR(Plot(dir, "memorization_duplicates", dup,
                           "set title 'Memorization by how often prefix + suffix occur in the corpus (run/prefix)'\n"
                           "set xlabel 'occurrences in the corpus'\nset ylabel 'fraction of suffix tokens reproduced'\n"
                           "set yrange [0:*]\nset xrange [-0.5:3.5]\nplot for [i=2:" + std::to_string(series.size() + 1) +
                               "] 'memorization_duplicates.dat' using 0:i:xtic(1) with linespoints lw 2 pt 7 "
                               "title columnheader(i)\n"));
  *md += "## Memorization\n\n| run | mode | own document excluded | samples | suffix | prefix: exact / token match |\n"
         "|---|---|---|---|---|---|\n";
  for (const auto& r : runs) {
    const json& j = r.result;
    std::string cells;
    const json by_prefix = j.value("by_prefix", json::object());
    for (const auto& [l, m] : by_prefix.items()) {
      char c[96];
      std::snprintf(c, sizeof(c), "%s: %.3f / %.3f; ", l.c_str(), m.value("exact", 0.0), m.value("token_match", 0.0));
      cells += c;
    }
    char line[768];
    std::snprintf(line, sizeof(line), "| %s | %s | %s | %lld | %lld | %s |\n", r.name.c_str(),
                  j.value("mode", "").c_str(), j.value("exclude_own_document", false) ? "yes" : "no",
                  static_cast<long long>(j.value("samples", 0)), static_cast<long long>(j.value("suffix_tokens", 0)),
                  cells.c_str());
    *md += line;
  }
  *md += "\n![token match](memorization_match.png)\n![exact match](memorization_exact.png)\n"
         "![by duplicates](memorization_duplicates.png)\n\n";
  return absl::OkStatus();
}

absl::Status PerplexityPlots(const fs::path& dir, const std::vector<Run>& runs, std::string* md) {
  // One series per (run, temperature) of the runs with a lambda sweep.
  std::map<std::string, std::map<double, double>> series;
  std::set<double> lambdas;
  for (const auto& r : runs) {
    const json sweep = r.result.value("sweep", json::array());
    for (const auto& row : sweep) {
      const std::string s = Safe(r.name) + "_T" + Cell(row.value("temperature", json()));
      series[s][row.value("lambda", 0.0)] = row.value("perplexity", 0.0);
      lambdas.insert(row.value("lambda", 0.0));
    }
  }
  if (!series.empty()) {
    std::string data = "lambda";
    for (const auto& [s, _] : series) data += " " + s;
    data += "\n";
    for (double l : lambdas) {
      data += Cell(l);
      for (const auto& [s, points] : series) {
        auto it = points.find(l);
        data += " " + (it == points.end() ? std::string("?") : Cell(it->second));
      }
      data += "\n";
    }
    const std::string script =
        "set title 'Perplexity against lambda (p = lambda p_knn + (1 - lambda) p_lm)'\nset xlabel 'lambda'\n"
        "set ylabel 'perplexity'\nplot for [i=2:" +
        std::to_string(series.size() + 1) +
        "] 'perplexity_lambda.dat' using 1:i with linespoints lw 2 pt 7 title columnheader(i)\n";
    RAG_RETURN_IF_ERROR(Plot(dir, "perplexity_lambda", data, script));
  }
  *md += "## Perplexity\n\n| run | mode | split | tokens | perplexity |\n|---|---|---|---|---|\n";
  for (const auto& r : runs) {
    char line[512];
    std::snprintf(line, sizeof(line), "| %s | %s | %s | %lld | %.2f |\n", r.name.c_str(),
                  r.result.value("mode", "").c_str(), r.result.value("split", "").c_str(),
                  static_cast<long long>(r.result.value("tokens", 0)), r.result.value("perplexity", 0.0));
    *md += line;
  }
  if (!series.empty()) *md += "\n![perplexity against lambda](perplexity_lambda.png)\n";
  *md += "\n";
  return absl::OkStatus();
}

// RETRO by overlap: perplexity per overlap bucket, a line per run and arm.
absl::Status OverlapPlots(const fs::path& dir, const std::vector<Run>& runs, std::string* md) {
  static const char* kArms[] = {"on", "off", "random"};
  std::string data = "overlap";
  for (const auto& r : runs) {
    for (const char* arm : kArms) data += " " + Safe(r.name) + "_" + arm;
  }
  data += "\n";
  const size_t buckets = runs[0].result.value("buckets", json::array()).size();
  for (size_t b = 0; b < buckets; ++b) {
    const json lo_hi = runs[0].result["buckets"][b].value("overlap", json::array({0.0, 0.0}));
    data += Cell(100 * (lo_hi[0].get<double>() + lo_hi[1].get<double>()) / 2);
    for (const auto& r : runs) {
      const json row = r.result.value("buckets", json::array()).size() > b ? r.result["buckets"][b] : json::object();
      for (const char* arm : kArms) {
        const bool empty = row.value("tokens", 0) == 0;
        data += " " + (empty ? std::string("?") : Cell(row.value("perplexity", json::object()).value(arm, json())));
      }
    }
    data += "\n";
  }
  const std::string script =
      "set title 'RETRO: perplexity by how much of a chunk its neighbours hold (Borgeaud et al. 2022, fig. 6)'\n"
      "set xlabel 'overlap of the chunk with its neighbours (%, bucket middle)'\nset ylabel 'perplexity'\n"
      "set logscale y\nset xrange [0:100]\nplot for [i=2:" + std::to_string(3 * runs.size() + 1) +
      "] 'overlap.dat' using 1:i with linespoints lw 2 pt 7 title columnheader(i)\n";
  RAG_RETURN_IF_ERROR(Plot(dir, "overlap", data, script));
  *md += "## RETRO by overlap\n\n| run | overlap | chunks | tokens | on | off | random |\n|---|---|---|---|---|---|---|\n";
  for (const auto& r : runs) {
    for (const auto& row : r.result.value("buckets", json::array())) {
      if (row.value("tokens", 0) == 0) continue;
      const json ppl = row.value("perplexity", json::object());
      char line[512];
      std::snprintf(line, sizeof(line), "| %s | %.1f-%.1f%% | %lld | %lld | %.2f | %.2f | %.2f |\n", r.name.c_str(),
                    100 * row["overlap"][0].get<double>(), 100 * row["overlap"][1].get<double>(),
                    static_cast<long long>(row.value("chunks", 0)), static_cast<long long>(row.value("tokens", 0)),
                    ppl.value("on", 0.0), ppl.value("off", 0.0), ppl.value("random", 0.0));
      *md += line;
    }
  }
  *md += "\n![RETRO perplexity by overlap](overlap.png)\n\n";
  return absl::OkStatus();
}

constexpr const char* kKinds[] = {"probes", "memorization", "perplexity", "overlap"};

}  // namespace

absl::Status WriteReport(const std::string& dir_name, const std::string& kind, const std::string& run,
                         const std::string& result_json) {
  if (std::find(std::begin(kKinds), std::end(kKinds), kind) == std::end(kKinds)) {
    return absl::InvalidArgumentError("unknown report kind '" + kind + "'");
  }
  if (run.empty() || run.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") !=
                         std::string::npos) {
    return absl::InvalidArgumentError("report run name '" + run + "' must be letters, digits, '-', '_' or '.'");
  }
  const fs::path dir(dir_name);
  std::error_code ec;
  fs::create_directories(dir / kind, ec);
  if (ec) return absl::InternalError("creating '" + (dir / kind).string() + "': " + ec.message());
  RAG_RETURN_IF_ERROR(WriteFileAtomic((dir / kind / (run + ".json")).string(), result_json));
  std::string md = "# Evaluation report\n\nRedrawn from the runs in this directory by `rag eval ... --report`.\n\n";
  for (const char* k : kKinds) {
    RAG_ASSIGN_OR_RETURN(std::vector<Run> runs, LoadRuns(dir, k));
    if (runs.empty()) continue;
    const std::string name(k);
    if (name == "probes") {
      RAG_RETURN_IF_ERROR(ProbePlots(dir, runs, &md));
    } else if (name == "memorization") {
      RAG_RETURN_IF_ERROR(MemorizationPlots(dir, runs, &md));
    } else if (name == "perplexity") {
      RAG_RETURN_IF_ERROR(PerplexityPlots(dir, runs, &md));
    } else {
      RAG_RETURN_IF_ERROR(OverlapPlots(dir, runs, &md));
    }
  }
  return WriteFileAtomic((dir / "summary.md").string(), md);
}

}  // namespace rag::eval

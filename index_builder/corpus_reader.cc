#include "index_builder/corpus_reader.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <nlohmann/json.hpp>
#include <unordered_set>

#include "common/file_util.h"
#include "common/status.h"

namespace rag::index_builder {
namespace fs = std::filesystem;
namespace {

bool HasExtension(const fs::path& p, const char* ext) { return p.extension() == ext; }

// One JSONL line (not blank) at `where` ("file:line") into *doc.
absl::Status ParseJsonlLine(const std::string& line, const std::string& where, Document* doc) {
  nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError(where + ": not valid JSON");
  if (!j.is_object()) return absl::InvalidArgumentError(where + ": expected a JSON object");
  auto text = j.find("text");
  if (text == j.end() || !text->is_string()) {
    return absl::InvalidArgumentError(where + ": missing string field \"text\"");
  }
  auto id = j.find("id");
  if (id == j.end() || id->is_null()) {
    doc->id = where;
  } else if (id->is_string()) {
    doc->id = id->get<std::string>();
  } else if (id->is_number_integer()) {
    doc->id = std::to_string(id->get<int64_t>());
  } else {
    return absl::InvalidArgumentError(where + ": \"id\" must be a string or an integer");
  }
  if (doc->id.empty()) return absl::InvalidArgumentError(where + ": \"id\" is empty");
  doc->text = text->get<std::string>();
  return absl::OkStatus();
}

absl::Status ReadJsonl(std::istream& in, const std::string& display, std::vector<Document>* docs) {
  std::string line;
  size_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    Document doc;
    RAG_RETURN_IF_ERROR(ParseJsonlLine(line, display + ":" + std::to_string(line_no), &doc));
    docs->push_back(std::move(doc));
  }
  return absl::OkStatus();
}

absl::Status ReadJsonl(const fs::path& file, const std::string& display, std::vector<Document>* docs) {
  std::ifstream in(file, std::ios::binary);
  if (!in) return absl::NotFoundError("cannot open '" + file.string() + "'");
  RAG_RETURN_IF_ERROR(ReadJsonl(in, display, docs));
  if (in.bad()) return absl::DataLossError("reading '" + file.string() + "' failed");
  return absl::OkStatus();
}

// Ids unique, empty documents dropped, some text left.
absl::StatusOr<std::vector<Document>> Finish(std::vector<Document> docs, const std::string& what, size_t files,
                                             CorpusStats* stats) {
  std::unordered_set<std::string> ids;
  std::vector<Document> kept;
  size_t bytes = 0;
  for (auto& d : docs) {
    if (!ids.insert(d.id).second) return absl::InvalidArgumentError("duplicate document id '" + d.id + "' in corpus");
    if (d.text.empty()) continue;
    bytes += d.text.size();
    kept.push_back(std::move(d));
  }
  if (kept.empty()) return absl::InvalidArgumentError("corpus '" + what + "' contains no text");
  if (stats != nullptr) *stats = {kept.size(), bytes, files};
  return kept;
}

absl::Status ReadFileInto(const fs::path& file, const std::string& display, std::vector<Document>* docs) {
  if (HasExtension(file, ".jsonl")) return ReadJsonl(file, display, docs);
  RAG_ASSIGN_OR_RETURN(std::string text, ReadFile(file.string()));
  docs->push_back({display, std::move(text)});
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<Document>> ReadCorpus(const std::string& path, CorpusStats* stats) {
  std::error_code ec;
  fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st)) return absl::NotFoundError("corpus '" + path + "' does not exist");
  std::vector<Document> docs;
  size_t files = 0;
  if (fs::is_directory(st)) {
    std::vector<fs::path> found;
    for (auto it = fs::recursive_directory_iterator(path, fs::directory_options::skip_permission_denied, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (it->is_regular_file() && (HasExtension(it->path(), ".txt") || HasExtension(it->path(), ".jsonl"))) {
        found.push_back(it->path());
      }
    }
    if (ec) return absl::InternalError("listing '" + path + "': " + ec.message());
    if (found.empty()) {
      return absl::InvalidArgumentError("corpus directory '" + path + "' has no .txt or .jsonl files");
    }
    std::sort(found.begin(), found.end());
    for (const auto& f : found) {
      RAG_RETURN_IF_ERROR(ReadFileInto(f, fs::relative(f, path).string(), &docs));
    }
    files = found.size();
  } else {
    fs::path p(path);
    if (!HasExtension(p, ".txt") && !HasExtension(p, ".jsonl")) {
      return absl::InvalidArgumentError("corpus file '" + path + "' must end in .txt or .jsonl");
    }
    RAG_RETURN_IF_ERROR(ReadFileInto(p, p.filename().string(), &docs));
    files = 1;
  }
  return Finish(std::move(docs), path, files, stats);
}

absl::StatusOr<std::vector<Document>> ParseJsonlCorpus(const std::string& content, const std::string& display) {
  std::istringstream in(content);
  std::vector<Document> docs;
  RAG_RETURN_IF_ERROR(ReadJsonl(in, display, &docs));
  return Finish(std::move(docs), display, 1, nullptr);
}

}  // namespace rag::index_builder

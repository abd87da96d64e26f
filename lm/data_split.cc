#include "lm/data_split.h"

#include <xxhash.h>

#include <algorithm>

namespace rag::lm {

DataSplit SplitDocuments(std::vector<Document> documents, double validation_fraction, uint64_t seed) {
  // A document is in validation when its seeded id hash, read as a fraction
  // of 2^64, is below `validation_fraction`: independent of the other documents.
  std::vector<uint64_t> hash(documents.size());
  std::vector<bool> is_val(documents.size(), false);
  size_t n_val = 0;
  const double scale = 18446744073709551616.0;  // 2^64
  for (size_t i = 0; i < documents.size(); ++i) {
    hash[i] = XXH3_64bits_withSeed(documents[i].id.data(), documents[i].id.size(), seed);
    is_val[i] = static_cast<double>(hash[i]) / scale < validation_fraction;
    n_val += is_val[i];
  }
  // Tiny corpora: keep at least one document on each side.
  if (documents.size() >= 2 && validation_fraction > 0 && (n_val == 0 || n_val == documents.size())) {
    auto extreme = n_val == 0 ? std::min_element(hash.begin(), hash.end()) : std::max_element(hash.begin(), hash.end());
    size_t i = static_cast<size_t>(extreme - hash.begin());
    is_val[i] = !is_val[i];
  }
  DataSplit split;
  for (size_t i = 0; i < documents.size(); ++i) {
    (is_val[i] ? split.validation : split.train).push_back(std::move(documents[i]));
  }
  return split;
}

}  // namespace rag::lm

#include <nlohmann/json.hpp>
#include <unordered_set>

namespace rag::lm {

std::string SplitToJson(const DataSplit& split, double validation_fraction, uint64_t seed) {
  nlohmann::json ids = nlohmann::json::array();
  for (const auto& d : split.validation) ids.push_back(d.id);
  nlohmann::json j = {{"seed", seed},
                      {"validation_fraction", validation_fraction},
                      {"train_documents", split.train.size()},
                      {"validation_ids", ids}};
  return j.dump(1) + "\n";
}

absl::StatusOr<std::vector<Document>> SelectSplit(std::vector<Document> documents, const std::string& split_json,
                                                  const std::string& which) {
  if (which == "all") return documents;
  if (which != "train" && which != "validation") {
    return absl::InvalidArgumentError("split must be train, validation or all, got '" + which + "'");
  }
  nlohmann::json j = nlohmann::json::parse(split_json, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("validation_ids") || !j["validation_ids"].is_array()) {
    return absl::DataLossError("split file is malformed (no validation_ids array)");
  }
  std::unordered_set<std::string> val;
  for (const auto& id : j["validation_ids"]) {
    if (id.is_string()) val.insert(id.get<std::string>());
  }
  const bool want_val = which == "validation";
  std::vector<Document> kept;
  for (auto& d : documents) {
    if ((val.count(d.id) > 0) == want_val) kept.push_back(std::move(d));
  }
  return kept;
}

}  // namespace rag::lm

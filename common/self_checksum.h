// The checksum a JSON record carries over its own content (manifest.json,
// model_info.json), so that a damaged byte anywhere in it, even in a
// free-text field no other check reads, is caught when it is read: the
// record's key "self_checksum" holds HashHex of the compact dump of
// everything else. Header-only; stateless.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "common/file_util.h"

namespace rag {

inline constexpr char kSelfChecksumKey[] = "self_checksum";

// Sets (*record)[kSelfChecksumKey] over the rest of `record`.
inline void AddSelfChecksum(nlohmann::json* record) {
  record->erase(kSelfChecksumKey);
  (*record)[kSelfChecksumKey] = HashHex(record->dump());
}

// Removes kSelfChecksumKey from `record` and says whether it was a string
// that matches the rest. Whether a record must carry one is the caller's.
inline bool TakeSelfChecksumMatches(nlohmann::json* record) {
  if (!record->is_object() || !record->contains(kSelfChecksumKey)) return false;
  const nlohmann::json stored = (*record)[kSelfChecksumKey];
  record->erase(kSelfChecksumKey);
  return stored.is_string() && stored.get<std::string>() == HashHex(record->dump());
}

}  // namespace rag

#include "retriever/shard.h"

#include <xxhash.h>

#include <cstdlib>
#include <optional>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"

namespace rag::retriever {
namespace {

std::optional<int64_t> ParseInt(const std::string& s) {
  int64_t v = 0;
  if (s.empty() || !absl::SimpleAtoi(s, &v)) return std::nullopt;
  return v;
}

absl::Status CheckRange(int64_t index, int64_t count, const std::string& what) {
  if (count < 1 || count > kMaxShards) {
    return absl::InvalidArgumentError(what + ": shard count " + std::to_string(count) + " is outside 1.." +
                                      std::to_string(kMaxShards));
  }
  if (index < 0 || index >= count) {
    return absl::InvalidArgumentError(what + ": shard " + std::to_string(index) + " is outside 0.." +
                                      std::to_string(count - 1));
  }
  return absl::OkStatus();
}

struct LauncherRank {
  int64_t index = 0;
  std::optional<int64_t> count;  // absent when the launcher gives none
  std::string source;            // the variables read, for messages
};

// The first launcher whose variables are set.
absl::StatusOr<LauncherRank> RankFromEnvironment(const EnvironmentReader& env) {
  struct Pair {
    const char* rank;
    const char* size;
  };
  for (const Pair& p : {Pair{"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"}, Pair{"PMI_RANK", "PMI_SIZE"}}) {
    const std::string r = env(p.rank);
    if (r.empty()) continue;
    const auto rank = ParseInt(r);
    const auto size = ParseInt(env(p.size));
    if (!rank || !size) {
      return absl::InvalidArgumentError(std::string("--shard auto: ") + p.rank + "='" + r + "' / " + p.size + "='" +
                                        env(p.size) + "' are not integers");
    }
    return LauncherRank{*rank, *size, std::string(p.rank) + "/" + p.size};
  }
  if (const std::string id = env("SLURM_ARRAY_TASK_ID"); !id.empty()) {
    const auto task = ParseInt(id);
    const std::string min_text = env("SLURM_ARRAY_TASK_MIN");
    const auto min = min_text.empty() ? std::optional<int64_t>(0) : ParseInt(min_text);
    const std::string count_text = env("SLURM_ARRAY_TASK_COUNT");
    const auto count = count_text.empty() ? std::nullopt : ParseInt(count_text);
    if (!task || !min || (!count_text.empty() && !count)) {
      return absl::InvalidArgumentError("--shard auto: SLURM_ARRAY_TASK_ID / _MIN / _COUNT are not integers");
    }
    return LauncherRank{*task - *min, count, "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT"};
  }
  if (const std::string id = env("JOB_COMPLETION_INDEX"); !id.empty()) {
    const auto index = ParseInt(id);
    if (!index) return absl::InvalidArgumentError("--shard auto: JOB_COMPLETION_INDEX='" + id + "' is not an integer");
    return LauncherRank{*index, std::nullopt, "JOB_COMPLETION_INDEX"};
  }
  return absl::InvalidArgumentError(
      "--shard auto: no launcher rank in the environment (OMPI_COMM_WORLD_RANK, PMI_RANK, SLURM_ARRAY_TASK_ID or "
      "JOB_COMPLETION_INDEX); give --shard i/N");
}

}  // namespace

int ShardOfDocument(std::string_view doc_id, int count) {
  if (count <= 1) return 0;
  return static_cast<int>(XXH3_64bits(doc_id.data(), doc_id.size()) % static_cast<uint64_t>(count));
}

std::string ReadProcessEnvironment(const char* name) {
  const char* v = std::getenv(name);
  return v == nullptr ? std::string() : std::string(v);
}

absl::StatusOr<ShardSpec> ParseShardSpec(const std::string& spec, const EnvironmentReader& env) {
  const std::string what = "--shard '" + spec + "'";
  const std::vector<std::string> parts = absl::StrSplit(spec, '/');
  if (parts.empty() || parts.size() > 2) return absl::InvalidArgumentError(what + ": expected i/N, auto or auto/N");
  std::optional<int64_t> given_count;
  if (parts.size() == 2) {
    given_count = ParseInt(parts[1]);
    if (!given_count) return absl::InvalidArgumentError(what + ": the count after '/' is not an integer");
  }
  if (parts[0] != "auto") {
    const auto index = ParseInt(parts[0]);
    if (!index || !given_count) return absl::InvalidArgumentError(what + ": expected i/N, auto or auto/N");
    if (auto s = CheckRange(*index, *given_count, what); !s.ok()) return s;
    return ShardSpec{static_cast<int>(*index), static_cast<int>(*given_count)};
  }
  auto rank = RankFromEnvironment(env);
  if (!rank.ok()) return rank.status();
  if (given_count && rank->count && *given_count != *rank->count) {
    return absl::InvalidArgumentError(what + ": the launcher's " + rank->source + " gives " +
                                      std::to_string(*rank->count) + " shards, not " + std::to_string(*given_count));
  }
  const std::optional<int64_t> count = given_count ? given_count : rank->count;
  if (!count) {
    return absl::InvalidArgumentError(what + ": " + rank->source +
                                      " gives no shard count; use --shard auto/N");
  }
  if (auto s = CheckRange(rank->index, *count, what + " (from " + rank->source + ")"); !s.ok()) return s;
  return ShardSpec{static_cast<int>(rank->index), static_cast<int>(*count)};
}

}  // namespace rag::retriever

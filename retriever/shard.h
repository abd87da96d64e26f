// Sharding of an index by document: which shard owns a document, and which
// shard this process builds (given as "i/N" or taken from the launcher's
// environment). The one owner of the routing rule: `rag build --shard`
// keeps a shard's documents with it, and the serving front routes live adds
// (Index.AddDocuments) with it, so a document always lands where a rebuild
// would put it. Plain functions, no state.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace rag::retriever {

// The most shards an index may be split into.
inline constexpr int kMaxShards = 4096;

struct ShardSpec {
  int index = 0;  // this shard, 0 .. count - 1
  int count = 1;  // shards in all; 1 = the whole index
  std::string ToString() const { return std::to_string(index) + "/" + std::to_string(count); }
};

// The shard that owns document `doc_id` among `count` (>= 1): XXH3-64 of
// the id's bytes (seed 0, as the xxHash library computes it) modulo
// `count`. Documented and stable: the same id maps to the same shard on
// every machine, build and release.
int ShardOfDocument(std::string_view doc_id, int count);

// Reads a variable of the launcher's environment; returns "" when unset.
// Tests pass a map; the default reads the process environment.
using EnvironmentReader = std::function<std::string(const char* name)>;
std::string ReadProcessEnvironment(const char* name);

// Parses `--shard`:
//   "i/N"     shard i of N (0 <= i < N <= kMaxShards);
//   "auto"    the rank and size from the launcher's environment, the first
//             of: OMPI_COMM_WORLD_RANK / OMPI_COMM_WORLD_SIZE (Open MPI's
//             mpirun), PMI_RANK / PMI_SIZE (MPICH, Intel MPI),
//             SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN /
//             SLURM_ARRAY_TASK_COUNT (a Slurm job array), JOB_COMPLETION_INDEX
//             (a Kubernetes Indexed Job, which carries no count: give it as
//             "auto/N");
//   "auto/N"  the rank from the environment as for "auto", N given; a size
//             the environment also gives must agree.
// InvalidArgument naming what is wrong (malformed, out of range, no launcher
// variables, disagreeing sizes).
absl::StatusOr<ShardSpec> ParseShardSpec(const std::string& spec,
                                         const EnvironmentReader& env = ReadProcessEnvironment);

}  // namespace rag::retriever

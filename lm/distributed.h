// Data parallelism over LibTorch's own distributed engine (c10d): the
// rendezvous read from the environment as torchrun, mpirun or srun set it,
// a ProcessGroupGloo on a TCPStore (rank 0 serves it) or a FileStore, and
// the few collectives the trainers need, each bounded by a timeout so that a
// dead rank stops the others with an error instead of a hang. No collective
// is written here: every one is c10d's. Not thread-safe: one thread per
// DistContext (ranks in one process, as the tests run them, each own one).
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace rag::lm {

// Where this process sits in the job, from the launcher's environment.
struct DistEnv {
  int rank = 0;
  int world_size = 1;
  std::string master_addr;  // rendezvous host (TCPStore on rank 0); "" with a FileStore
  int master_port = 0;      // rendezvous port; 0 with a FileStore
  std::string launcher;     // "torchrun" (RANK/WORLD_SIZE), "mpirun" or "srun": named in errors
};

// Reads RANK and WORLD_SIZE, else OMPI_COMM_WORLD_RANK/SIZE (mpirun), else
// SLURM_PROCID/SLURM_NTASKS (srun), and MASTER_ADDR and MASTER_PORT, which
// every launcher needs (neither mpirun nor srun sets them). `need_master`
// false (a FileStore rendezvous) makes MASTER_* optional. InvalidArgument
// naming the missing or malformed variable. `getenv` is injectable for
// tests; it returns nullptr for an unset variable.
absl::StatusOr<DistEnv> ReadDistEnv(bool need_master,
                                    const std::function<const char*(const char*)>& getenv = nullptr);

struct DistOptions {
  // A FileStore at this path (every rank names the same file, which must not
  // exist yet) instead of a TCPStore at MASTER_ADDR:MASTER_PORT. Default: ""
  std::string store_path;
  // Gloo's device: a network interface name ("eth0") or a hostname or
  // address to bind; "" = the local address that routes to MASTER_ADDR
  // (127.0.0.1 with a FileStore). Default: ""
  std::string interface;
  // Bounds the rendezvous and every collective: a rank silent this long is
  // taken for dead. Default: 300 s
  std::chrono::milliseconds timeout{std::chrono::seconds(300)};
  // Gloo's worker threads. Default: 2
  int threads = 2;
};

// A named part of what every rank must agree on (e.g. {"corpus", "data=.."}).
using FingerprintField = std::pair<std::string, std::string>;

class DistContext {
 public:
  // Joins the group: TCPStore (rank 0 serves; the others connect within
  // options.timeout) or FileStore, then ProcessGroupGloo. Unavailable with
  // "address:port" when the master cannot be reached in time;
  // InvalidArgument for a bad interface or rank.
  static absl::StatusOr<std::unique_ptr<DistContext>> Create(const DistEnv& env, const DistOptions& options);
  // ReadDistEnv() then Create().
  static absl::StatusOr<std::unique_ptr<DistContext>> FromEnvironment(const DistOptions& options);
  ~DistContext();

  int rank() const { return rank_; }
  int world_size() const { return world_size_; }
  bool is_root() const { return rank_ == 0; }
  // "rank 1/2" for log lines.
  std::string Describe() const;

  // Every rank holds the same values for each field, or FailedPrecondition
  // naming the first rank that differs from rank 0, the field and both
  // values (shortened). Every rank gets the same verdict.
  absl::Status CheckSame(const std::vector<FingerprintField>& fields);

  // Copies rank 0's `tensors` (parameters, buffers) into every rank's, as
  // one flat buffer, then checks that the bytes are identical everywhere
  // (Internal naming the rank that differs).
  absl::Status BroadcastFromRoot(const std::vector<torch::Tensor>& tensors);

  // Sums `flat` (one contiguous CPU tensor) over all ranks in place: one
  // c10d allreduce. `what` names it in errors ("gradients at step 12").
  absl::Status AllreduceSum(torch::Tensor& flat, const std::string& what);

  // A barrier that also carries each rank's status: every rank returns OK
  // only when every rank's `local` was OK; else the first failing rank's
  // message (rank 0's own status on rank 0). `what` names the stage.
  absl::Status Agree(const absl::Status& local, const std::string& what);

  // c10d's barrier.
  absl::Status Barrier(const std::string& what);

 private:
  struct Impl;
  DistContext(int rank, int world_size, std::unique_ptr<Impl> impl);
  int rank_;
  int world_size_;
  int checks_ = 0;  // CheckSame calls so far: keys of each call stay apart
  std::unique_ptr<Impl> impl_;
};

}  // namespace rag::lm

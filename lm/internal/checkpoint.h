// The checkpoint file lm::TrainingLoop (so both trainers) writes: model and
// optimizer state, step, the CPU RNG (dropout), the loss history and a
// fingerprint of what must match on resume, and the number of processes of
// a data-parallel run. One file, replaced atomically.
// Stateless functions; not safe to call concurrently on one path.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "lm/training_loop.h"

namespace rag::lm::internal {

absl::Status SaveCheckpoint(const std::string& path, torch::nn::Module& model, torch::optim::Optimizer& optimizer,
                            int64_t step, const std::vector<TrainingRecord>& history,
                            const std::string& fingerprint, int64_t world_size);

// DataLoss for an unreadable file; FailedPrecondition (naming `what`, e.g.
// "model config") when the fingerprint differs, or when the checkpoint was
// written by a run of another number of processes than `world_size`
// (checkpoints from before data parallelism count as 1).
absl::Status LoadCheckpoint(const std::string& path, const std::string& fingerprint, const std::string& what,
                            int64_t world_size, torch::nn::Module& model, torch::optim::Optimizer& optimizer,
                            int64_t* step, std::vector<TrainingRecord>* history);

}  // namespace rag::lm::internal

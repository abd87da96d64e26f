#include "lm/internal/checkpoint.h"

#include <ATen/CPUGeneratorImpl.h>
#include <unistd.h>
#include <xxhash.h>

#include <mutex>

#include "common/file_util.h"

namespace rag::lm::internal {
namespace {

int64_t FingerprintHash(const std::string& fp) {
  return static_cast<int64_t>(XXH3_64bits(fp.data(), fp.size()) >> 1);
}

}  // namespace

absl::Status SaveCheckpoint(const std::string& path, torch::nn::Module& model, torch::optim::Optimizer& optimizer,
                            int64_t step, const std::vector<TrainingRecord>& history,
                            const std::string& fingerprint, int64_t world_size) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  try {
    torch::serialize::OutputArchive archive;
    torch::serialize::OutputArchive model_archive, optim_archive;
    model.save(model_archive);
    optimizer.save(optim_archive);
    archive.write("model", model_archive);
    archive.write("optimizer", optim_archive);
    archive.write("step", torch::tensor(step, torch::kLong));
    {
      auto gen = at::detail::getDefaultCPUGenerator();
      std::lock_guard<std::mutex> lock(gen.mutex());
      archive.write("rng", gen.get_state());  // dropout's RNG
    }
    std::vector<double> losses, lrs;
    for (const auto& r : history) {
      losses.push_back(r.loss);
      lrs.push_back(r.lr);
    }
    archive.write("losses", torch::tensor(losses, torch::kDouble));
    archive.write("lrs", torch::tensor(lrs, torch::kDouble));
    archive.write("fingerprint", torch::tensor(FingerprintHash(fingerprint)));
    archive.write("world_size", torch::tensor(world_size, torch::kLong));
    archive.save_to(tmp);
  } catch (const c10::Error& e) {
    return absl::InternalError("writing checkpoint '" + tmp + "': " + e.what_without_backtrace());
  }
  return DurableRename(tmp, path);
}

absl::Status LoadCheckpoint(const std::string& path, const std::string& fingerprint, const std::string& what,
                            int64_t world_size, torch::nn::Module& model, torch::optim::Optimizer& optimizer,
                            int64_t* step, std::vector<TrainingRecord>* history) {
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(path);
    torch::Tensor fp;
    archive.read("fingerprint", fp);
    if (fp.item<int64_t>() != FingerprintHash(fingerprint)) {
      return absl::FailedPreconditionError("checkpoint '" + path + "' was written with a different " + what +
                                           ", training options or corpus; resume with the same arguments");
    }
    // The dropout RNG saved is rank 0's and each rank's share of a batch
    // depends on N: a resume continues the run it was, with the same N.
    torch::Tensor saved_world;
    const int64_t written_by = archive.try_read("world_size", saved_world) ? saved_world.item<int64_t>() : 1;
    if (written_by != world_size) {
      return absl::FailedPreconditionError(
          "checkpoint '" + path + "' was written by a run of " + std::to_string(written_by) +
          " process(es) and this run has " + std::to_string(world_size) + "; resume it with " +
          (written_by == 1 ? std::string("one process (no --dist, or WORLD_SIZE=1)")
                           : "--dist and WORLD_SIZE=" + std::to_string(written_by)));
    }
    torch::serialize::InputArchive model_archive, optim_archive;
    archive.read("model", model_archive);
    archive.read("optimizer", optim_archive);
    model.load(model_archive);
    optimizer.load(optim_archive);
    torch::Tensor step_t, rng, losses, lrs;
    archive.read("step", step_t);
    archive.read("rng", rng);
    archive.read("losses", losses);
    archive.read("lrs", lrs);
    *step = step_t.item<int64_t>();
    {
      auto gen = at::detail::getDefaultCPUGenerator();
      std::lock_guard<std::mutex> lock(gen.mutex());
      gen.set_state(rng);
    }
    history->clear();
    auto l = losses.accessor<double, 1>();
    auto r = lrs.accessor<double, 1>();
    for (int64_t i = 0; i < losses.size(0); ++i) history->push_back({i, l[i], r[i]});
  } catch (const c10::Error& e) {
    return absl::DataLossError("reading checkpoint '" + path + "': " + e.what_without_backtrace());
  }
  return absl::OkStatus();
}

}  // namespace rag::lm::internal

#include "lm/distributed.h"

// The one file that includes c10d (and, through ProcessGroupGloo.hpp, Gloo's
// headers from libgloo-dev).
#include <arpa/inet.h>
#include <net/if.h>
#include <netdb.h>
#include <sys/socket.h>
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <unistd.h>
#include <xxhash.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "common/status.h"
#include "lm/internal/torch_error.h"

namespace rag::lm {
namespace {

// c10::Error's what() carries a C++ backtrace: users get the message only.
std::string Seconds(std::chrono::milliseconds t) {
  return std::to_string(t.count() / 1000) + (t.count() % 1000 == 0 ? "" : "." + std::to_string(t.count() % 1000)) +
         " s";
}

// Shortened for error messages: configs are long JSON objects.
std::string Shorten(const std::string& s) {
  constexpr size_t kMax = 240;
  return s.size() <= kMax ? s : s.substr(0, kMax) + "...";
}

absl::StatusOr<int> ParseEnvInt(const char* name, const char* value, int min, int max) {
  char* end = nullptr;
  errno = 0;
  const long v = std::strtol(value, &end, 10);
  if (errno != 0 || end == value || *end != '\0' || v < min || v > max) {
    return absl::InvalidArgumentError(std::string("--dist: ") + name + "='" + value + "' is not an integer in [" +
                                      std::to_string(min) + ", " + std::to_string(max) + "]");
  }
  return static_cast<int>(v);
}

// The local address the kernel would send from to reach `host`: a UDP
// connect() picks a route and sends nothing.
absl::StatusOr<std::string> LocalAddressTowards(const std::string& host) {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_DGRAM;
  addrinfo* found = nullptr;
  if (const int rc = ::getaddrinfo(host.c_str(), "9", &hints, &found); rc != 0) {
    return absl::InvalidArgumentError("--dist: cannot resolve MASTER_ADDR '" + host + "': " + ::gai_strerror(rc));
  }
  std::string result;
  const int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
  if (fd >= 0) {
    sockaddr_in local{};
    socklen_t len = sizeof(local);
    char text[INET_ADDRSTRLEN] = {0};
    if (::connect(fd, found->ai_addr, found->ai_addrlen) == 0 &&
        ::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &len) == 0 &&
        ::inet_ntop(AF_INET, &local.sin_addr, text, sizeof(text)) != nullptr) {
      result = text;
    }
    ::close(fd);
  }
  ::freeaddrinfo(found);
  if (result.empty()) {
    return absl::UnavailableError("--dist: no route from this machine to MASTER_ADDR '" + host +
                                  "'; name the interface to use with --dist-interface");
  }
  return result;
}

// The bytes of `tensors`, concatenated in order (contiguous copies).
torch::Tensor FlatBytes(const std::vector<torch::Tensor>& tensors) {
  std::vector<torch::Tensor> parts;
  parts.reserve(tensors.size());
  for (const auto& t : tensors) {
    // view(kByte) reinterprets; a 0-dim tensor needs a dimension first.
    parts.push_back(t.detach().contiguous().reshape({-1}).view(torch::kByte));
  }
  if (parts.empty()) return torch::empty({0}, torch::kByte);
  return torch::cat(parts);
}

int64_t HashBytes(const torch::Tensor& bytes) {
  return static_cast<int64_t>(XXH3_64bits(bytes.data_ptr(), static_cast<size_t>(bytes.numel())) >> 1);
}

}  // namespace

absl::StatusOr<DistEnv> ReadDistEnv(bool need_master, const std::function<const char*(const char*)>& getenv_fn) {
  auto get = [&](const char* name) -> const char* {
    const char* v = getenv_fn ? getenv_fn(name) : std::getenv(name);
    return v != nullptr && *v != '\0' ? v : nullptr;
  };
  DistEnv env;
  // Launchers in torchrun's order of precedence: an explicit RANK wins over
  // what mpirun or srun set, so a user can override a launcher by hand.
  struct Launcher {
    const char* rank;
    const char* size;
    const char* name;
  };
  const Launcher launchers[] = {{"RANK", "WORLD_SIZE", "torchrun"},
                                {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "mpirun"},
                                {"SLURM_PROCID", "SLURM_NTASKS", "srun"}};
  const Launcher* chosen = nullptr;
  for (const auto& l : launchers) {
    if (get(l.rank) != nullptr || get(l.size) != nullptr) {
      chosen = &l;
      break;
    }
  }
  if (chosen == nullptr) {
    return absl::InvalidArgumentError(
        "--dist: no rank in the environment: set RANK and WORLD_SIZE (as torchrun does), or start the ranks "
        "with mpirun or srun (OMPI_COMM_WORLD_RANK/SIZE, SLURM_PROCID/SLURM_NTASKS)");
  }
  for (const char* name : {chosen->rank, chosen->size}) {
    if (get(name) == nullptr) {
      return absl::InvalidArgumentError(std::string("--dist: ") + name + " is not set (" + chosen->name +
                                        " style: " + chosen->rank + " and " + chosen->size + " go together)");
    }
  }
  RAG_ASSIGN_OR_RETURN(env.world_size, ParseEnvInt(chosen->size, get(chosen->size), 1, 1 << 20));
  RAG_ASSIGN_OR_RETURN(env.rank, ParseEnvInt(chosen->rank, get(chosen->rank), 0, env.world_size - 1));
  env.launcher = chosen->name;
  const char* addr = get("MASTER_ADDR");
  const char* port = get("MASTER_PORT");
  if (need_master) {
    // mpirun and srun set neither: the user names rank 0's host and a free port.
    if (addr == nullptr) {
      return absl::InvalidArgumentError("--dist: MASTER_ADDR is not set: the host of rank 0, where the rendezvous "
                                        "(TCPStore) listens");
    }
    if (port == nullptr) {
      return absl::InvalidArgumentError("--dist: MASTER_PORT is not set: a free TCP port on MASTER_ADDR");
    }
  }
  if (addr != nullptr) env.master_addr = addr;
  if (port != nullptr) {
    RAG_ASSIGN_OR_RETURN(env.master_port, ParseEnvInt("MASTER_PORT", port, 1, 65535));
  }
  return env;
}

struct DistContext::Impl {
  std::string where;  // "127.0.0.1:29500" or "file /tmp/store", for messages
  std::chrono::milliseconds timeout;
  c10::intrusive_ptr<c10d::Store> store;  // ours: keys under "rag/", apart from Gloo's
  c10::intrusive_ptr<c10d::ProcessGroupGloo> group;

  // Runs a c10d call; exceptions (a dead peer, a timeout) become Unavailable.
  absl::Status Run(const std::string& what, const std::function<void()>& fn) const {
    try {
      fn();
    } catch (const std::exception& e) {
      return absl::UnavailableError(
          "distributed " + what + " failed (a rank died, stopped responding for " + Seconds(timeout) +
          " or left early): " + internal::TorchErrorText(e));
    }
    return absl::OkStatus();
  }
};

DistContext::DistContext(int rank, int world_size, std::unique_ptr<Impl> impl)
    : rank_(rank), world_size_(world_size), impl_(std::move(impl)) {}

DistContext::~DistContext() = default;

std::string DistContext::Describe() const {
  return "rank " + std::to_string(rank_) + "/" + std::to_string(world_size_);
}

absl::StatusOr<std::unique_ptr<DistContext>> DistContext::FromEnvironment(const DistOptions& options) {
  RAG_ASSIGN_OR_RETURN(DistEnv env, ReadDistEnv(options.store_path.empty()));
  return Create(env, options);
}

absl::StatusOr<std::unique_ptr<DistContext>> DistContext::Create(const DistEnv& env, const DistOptions& options) {
  if (env.world_size < 1 || env.rank < 0 || env.rank >= env.world_size) {
    return absl::InvalidArgumentError("--dist: rank " + std::to_string(env.rank) + " outside a world of " +
                                      std::to_string(env.world_size));
  }
  if (options.timeout.count() <= 0) return absl::InvalidArgumentError("--dist: the timeout must be positive");
  auto impl = std::make_unique<Impl>();
  impl->timeout = options.timeout;
  c10::intrusive_ptr<c10d::Store> store;
  if (!options.store_path.empty()) {
    impl->where = "file " + options.store_path;
    try {
      store = c10::make_intrusive<c10d::FileStore>(options.store_path, env.world_size);
      store->setTimeout(options.timeout);
    } catch (const std::exception& e) {
      return absl::UnavailableError("--dist: opening the rendezvous file '" + options.store_path +
                                    "': " + internal::TorchErrorText(e));
    }
  } else {
    if (env.master_addr.empty() || env.master_port == 0) {
      return absl::InvalidArgumentError("--dist: MASTER_ADDR and MASTER_PORT are required for a TCP rendezvous");
    }
    impl->where = env.master_addr + ":" + std::to_string(env.master_port);
    c10d::TCPStoreOptions o;
    o.port = static_cast<std::uint16_t>(env.master_port);
    o.isServer = env.rank == 0;
    o.numWorkers = static_cast<std::size_t>(env.world_size);
    // The group's own rendezvous waits for every rank (bounded by the
    // timeout); the server need not block in its constructor too.
    o.waitWorkers = false;
    o.timeout = options.timeout;
    try {
      store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, o);
    } catch (const std::exception& e) {
      if (env.rank == 0) {
        return absl::UnavailableError("--dist: rank 0 cannot serve the rendezvous at " + impl->where +
                                      " (MASTER_ADDR:MASTER_PORT; is the port free and the address this "
                                      "machine's?): " + internal::TorchErrorText(e));
      }
      return absl::UnavailableError("--dist: cannot reach the rendezvous master at " + impl->where +
                                    " (MASTER_ADDR:MASTER_PORT) within " + Seconds(options.timeout) +
                                    "; is rank 0 running and the port open? " + internal::TorchErrorText(e));
    }
  }
  impl->store = c10::make_intrusive<c10d::PrefixStore>("rag/", store);

  std::string iface = options.interface;
  if (iface.empty()) {
    if (options.store_path.empty()) {
      RAG_ASSIGN_OR_RETURN(iface, LocalAddressTowards(env.master_addr));
    } else {
      iface = "127.0.0.1";  // a FileStore is one machine's (or a shared filesystem's): tests
    }
  }
  auto gloo_options = c10d::ProcessGroupGloo::Options::create(options.timeout);
  gloo_options->threads = std::max(1, options.threads);
  try {
    // An interface name ("eth0", "lo") or else a hostname/address to bind.
    gloo_options->devices.push_back(::if_nametoindex(iface.c_str()) != 0
                                        ? c10d::ProcessGroupGloo::createDeviceForInterface(iface)
                                        : c10d::ProcessGroupGloo::createDeviceForHostname(iface));
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError("--dist-interface '" + iface + "': " + internal::TorchErrorText(e));
  }
  try {
    impl->group = c10::make_intrusive<c10d::ProcessGroupGloo>(store, env.rank, env.world_size, gloo_options);
  } catch (const std::exception& e) {
    return absl::UnavailableError("--dist: rank " + std::to_string(env.rank) + " could not connect to all " +
                                  std::to_string(env.world_size) + " ranks through the rendezvous at " +
                                  impl->where + " within " + Seconds(options.timeout) + ": " + internal::TorchErrorText(e));
  }
  return std::unique_ptr<DistContext>(new DistContext(env.rank, env.world_size, std::move(impl)));
}

absl::Status DistContext::CheckSame(const std::vector<FingerprintField>& fields) {
  const std::string prefix = "check/" + std::to_string(checks_++) + "/";
  auto key = [&](int rank, size_t i) { return prefix + std::to_string(rank) + "/" + std::to_string(i); };
  auto hashes = torch::empty({static_cast<int64_t>(fields.size()) + 1}, torch::kLong);
  hashes[0] = static_cast<int64_t>(fields.size());  // a different count shows up as a field mismatch
  std::vector<std::vector<torch::Tensor>> gathered(1);
  RAG_RETURN_IF_ERROR(impl_->Run("fingerprint check", [&] {
    for (size_t i = 0; i < fields.size(); ++i) {
      const std::string& v = fields[i].second;
      // The value is published so that a mismatch can be shown, not just detected.
      impl_->store->set(key(rank_, i), std::vector<uint8_t>(v.begin(), v.end()));
      const std::string both = fields[i].first + '\0' + v;
      hashes[static_cast<int64_t>(i) + 1] = static_cast<int64_t>(XXH3_64bits(both.data(), both.size()) >> 1);
    }
    for (int r = 0; r < world_size_; ++r) gathered[0].push_back(torch::empty_like(hashes));
    std::vector<torch::Tensor> input{hashes};
    c10d::AllgatherOptions opts;
    opts.timeout = impl_->timeout;
    impl_->group->allgather(gathered, input, opts)->wait();
  }));
  const auto root = gathered[0][0];
  for (int r = 1; r < world_size_; ++r) {
    const auto other = gathered[0][static_cast<size_t>(r)];
    if (other[0].item<int64_t>() != root[0].item<int64_t>()) {
      return absl::FailedPreconditionError("--dist: rank " + std::to_string(r) + " checks " +
                                           std::to_string(other[0].item<int64_t>()) + " fields, rank 0 " +
                                           std::to_string(root[0].item<int64_t>()) + ": different versions of rag");
    }
    for (size_t i = 0; i < fields.size(); ++i) {
      if (other[static_cast<int64_t>(i) + 1].item<int64_t>() == root[static_cast<int64_t>(i) + 1].item<int64_t>()) {
        continue;
      }
      std::string mine, theirs;
      RAG_RETURN_IF_ERROR(impl_->Run("fingerprint check", [&] {
        const auto a = impl_->store->get(key(0, i));
        const auto b = impl_->store->get(key(r, i));
        mine.assign(a.begin(), a.end());
        theirs.assign(b.begin(), b.end());
      }));
      return absl::FailedPreconditionError("--dist: rank " + std::to_string(r) + "'s " + fields[i].first +
                                           " differs from rank 0's (rank 0: '" + Shorten(mine) + "', rank " +
                                           std::to_string(r) + ": '" + Shorten(theirs) +
                                           "'); every rank must run with the same arguments and data");
    }
  }
  return absl::OkStatus();
}

absl::Status DistContext::BroadcastFromRoot(const std::vector<torch::Tensor>& tensors) {
  torch::NoGradGuard no_grad;
  torch::Tensor flat = FlatBytes(tensors);  // [bytes] uint8: any mix of dtypes travels as one buffer
  RAG_RETURN_IF_ERROR(impl_->Run("broadcast of the initial weights", [&] {
    std::vector<torch::Tensor> v{flat};
    c10d::BroadcastOptions opts;
    opts.rootRank = 0;
    opts.timeout = impl_->timeout;
    impl_->group->broadcast(v, opts)->wait();
  }));
  if (rank_ != 0) {
    int64_t offset = 0;
    for (const auto& t : tensors) {
      const int64_t n = t.numel() * static_cast<int64_t>(t.element_size());
      // clone(): a slice at an odd byte offset cannot be viewed as float.
      auto src = flat.narrow(0, offset, n).clone().view(t.scalar_type()).view(t.sizes());
      t.copy_(src);
      offset += n;
    }
  }
  // Verify rather than trust: bitwise-equal weights are what keeps the ranks'
  // optimizer steps identical.
  auto hash = torch::full({1}, HashBytes(FlatBytes(tensors)), torch::kLong);
  std::vector<std::vector<torch::Tensor>> gathered(1);
  for (int r = 0; r < world_size_; ++r) gathered[0].push_back(torch::empty_like(hash));
  RAG_RETURN_IF_ERROR(impl_->Run("check of the broadcast weights", [&] {
    std::vector<torch::Tensor> input{hash};
    c10d::AllgatherOptions opts;
    opts.timeout = impl_->timeout;
    impl_->group->allgather(gathered, input, opts)->wait();
  }));
  for (int r = 1; r < world_size_; ++r) {
    if (gathered[0][static_cast<size_t>(r)].item<int64_t>() != gathered[0][0].item<int64_t>()) {
      return absl::InternalError("--dist: after the broadcast rank " + std::to_string(r) +
                                 "'s weights still differ from rank 0's");
    }
  }
  return absl::OkStatus();
}

absl::Status DistContext::AllreduceSum(torch::Tensor& flat, const std::string& what) {
  if (!flat.is_contiguous() || flat.device().type() != torch::kCPU) {
    return absl::InternalError("AllreduceSum: expected a contiguous CPU tensor");
  }
  return impl_->Run("allreduce of " + what, [&] {
    std::vector<torch::Tensor> v{flat};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    opts.timeout = impl_->timeout;
    impl_->group->allreduce(v, opts)->wait();
  });
}

absl::Status DistContext::Agree(const absl::Status& local, const std::string& what) {
  const std::string key = "agree/" + std::to_string(checks_++) + "/";
  auto failed = torch::zeros({world_size_}, torch::kLong);
  if (!local.ok()) failed[rank_] = 1;
  RAG_RETURN_IF_ERROR(impl_->Run(what, [&] {
    if (!local.ok()) {
      const std::string m(local.message());
      impl_->store->set(key + std::to_string(rank_), std::vector<uint8_t>(m.begin(), m.end()));
    }
    std::vector<torch::Tensor> v{failed};
    c10d::AllreduceOptions opts;
    opts.timeout = impl_->timeout;
    impl_->group->allreduce(v, opts)->wait();
  }));
  if (!local.ok()) return local;
  for (int r = 0; r < world_size_; ++r) {
    if (failed[r].item<int64_t>() == 0) continue;
    std::string message;
    RAG_RETURN_IF_ERROR(impl_->Run(what, [&] {
      const auto m = impl_->store->get(key + std::to_string(r));
      message.assign(m.begin(), m.end());
    }));
    return absl::AbortedError("--dist: rank " + std::to_string(r) + " failed at " + what + ": " + message);
  }
  return absl::OkStatus();
}

absl::Status DistContext::Barrier(const std::string& what) {
  return impl_->Run("barrier (" + what + ")", [&] {
    c10d::BarrierOptions opts;
    opts.timeout = impl_->timeout;
    impl_->group->barrier(opts)->wait();
  });
}

}  // namespace rag::lm

// Data-parallel training (issue 23) on loopback: ranks run as threads of
// this process, each with its own c10d ProcessGroupGloo over a FileStore
// (or a TCPStore) pinned to 127.0.0.1. N = 2 against one process on the
// tiny LM and on a RETRO retrofit (dropout 0, 20 steps), resume, and every
// mismatch a user can make.
#include "lm/distributed.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "lm/data_split.h"
#include "lm/retro_trainer.h"
#include "lm/trainer.h"
#include "tests/status_matchers.h"
#include "tests/test_util.h"

namespace rag::lm {
namespace {

using std::chrono::milliseconds;

struct LmFixture {
  TrainingData data;
  TransformerConfig config;
};

LmFixture MakeLmFixture() {
  auto docs = testing::MakeCorpus(24, 3);
  DataSplit split = SplitDocuments(docs, 0.2, 1);
  std::vector<std::string> texts;
  for (const auto& d : split.train) texts.push_back(d.text);
  TokenizerTrainOptions topts;
  topts.vocab_size = 320;
  topts.show_progress = false;
  auto tok = Tokenizer::Train(texts, topts);
  EXPECT_TRUE(tok.ok());
  LmFixture f{{}, *TransformerConfig::Preset("tiny")};
  for (const auto& d : split.train) {
    for (auto id : tok->Encode(d.text)) f.data.train.push_back(id);
    f.data.train.push_back(tok->eot_id());
  }
  for (const auto& d : split.validation) {
    for (auto id : tok->Encode(d.text)) f.data.validation.push_back(id);
    f.data.validation.push_back(tok->eot_id());
  }
  f.config.vocab_size = tok->vocab_size();
  f.config.context = 32;
  f.config.dropout = 0.0;  // N = 1 and N = 2 draw different dropout masks
  return f;
}

TrainerOptions LmOptions() {
  TrainerOptions o;
  o.steps = 20;
  o.batch_size = 8;
  o.lr = 3e-3;
  o.warmup_steps = 5;
  o.checkpoint_every = 10;  // rank 0 writes, the others wait: exercised mid-run
  o.eval_every = 0;
  o.show_progress = false;
  return o;
}

DistOptions LoopbackOptions(const std::string& store_path) {
  DistOptions o;
  o.store_path = store_path;
  o.interface = "127.0.0.1";
  o.timeout = milliseconds(20000);
  o.threads = 1;
  return o;
}

// Runs fn(rank, context) on `world` threads, each a rank with its own
// process group over a fresh FileStore. A rank whose group cannot be made
// gets a null context.
void RunRanks(int world, const std::string& store_path,
              const std::function<void(int, DistContext*)>& fn, DistOptions options = {}) {
  if (options.store_path.empty()) options = LoopbackOptions(store_path);
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) {
    threads.emplace_back([&, r] {
      DistEnv env;
      env.rank = r;
      env.world_size = world;
      auto ctx = DistContext::Create(env, options);
      EXPECT_TRUE(ctx.ok()) << ctx.status();
      fn(r, ctx.ok() ? ctx->get() : nullptr);
    });
  }
  for (auto& t : threads) t.join();
}

std::vector<torch::Tensor> Weights(torch::nn::Module& m) {
  std::vector<torch::Tensor> out;
  for (const auto& p : m.parameters()) out.push_back(p.detach().clone());
  return out;
}

double MaxAbsDiff(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, (a[i] - b[i]).abs().max().item<double>());
  return worst;
}

bool Identical(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (!torch::equal(a[i], b[i])) return false;
  }
  return true;
}

void ExpectLossesMatch(const std::vector<TrainingRecord>& single, const std::vector<TrainingRecord>& dist) {
  ASSERT_EQ(single.size(), dist.size());
  for (size_t i = 0; i < single.size(); ++i) {
    EXPECT_NEAR(dist[i].loss, single[i].loss, 1e-5 * std::abs(single[i].loss)) << "step " << i;
  }
}

// What one run leaves: per-step losses and final weights.
struct RunResult {
  std::vector<TrainingRecord> history;
  std::vector<torch::Tensor> weights;
};

RunResult TrainLm(const LmFixture& f, const TrainerOptions& o, const std::string& ckpt) {
  auto t = Trainer::Create(f.config, o, f.data, ckpt, false);
  EXPECT_TRUE(t.ok()) << t.status();
  if (!t.ok()) return {};
  EXPECT_TRUE((*t)->Run().ok());
  return {(*t)->history(), Weights(*(*t)->model())};
}

TEST(DistTrainTest, TwoRanksTrainTheSingleProcessLm) {
  const LmFixture f = MakeLmFixture();
  testing::TempDir dir;
  const RunResult single = TrainLm(f, LmOptions(), dir / "single.pt");
  std::vector<RunResult> ranks(2);
  RunRanks(2, dir / "store", [&](int rank, DistContext* ctx) {
    if (ctx == nullptr) return;
    TrainerOptions o = LmOptions();
    o.dist = ctx;
    ranks[static_cast<size_t>(rank)] = TrainLm(f, o, dir / "dist.pt");
  });
  ExpectLossesMatch(single.history, ranks[0].history);
  ExpectLossesMatch(single.history, ranks[1].history);
  EXPECT_TRUE(Identical(ranks[0].weights, ranks[1].weights)) << "ranks diverged";
  const double diff = MaxAbsDiff(single.weights, ranks[0].weights);
  EXPECT_LT(diff, 1e-4) << "N = 2 moved away from the single-process weights";
  // The sum of two partial gradients rounds differently from one full one:
  // equal bits would mean the ranks did not split the batch.
  std::printf("max |w(N=2) - w(N=1)| after 20 steps: %.3g\n", diff);
  // Rank 0 wrote the checkpoint, as a run of 2.
  EXPECT_TRUE(std::filesystem::exists(dir / "dist.pt"));
}

TEST(DistTrainTest, OneRankGroupEqualsOneProcess) {
  const LmFixture f = MakeLmFixture();
  testing::TempDir dir;
  const RunResult single = TrainLm(f, LmOptions(), dir / "single.pt");
  RunResult one;
  RunRanks(1, dir / "store", [&](int, DistContext* ctx) {
    if (ctx == nullptr) return;
    TrainerOptions o = LmOptions();
    o.dist = ctx;
    one = TrainLm(f, o, dir / "dist.pt");
  });
  ExpectLossesMatch(single.history, one.history);
  EXPECT_TRUE(Identical(single.weights, one.weights));
}

TEST(DistTrainTest, ResumeWithTheSameWorldGivesTheUninterruptedWeights) {
  const LmFixture f = MakeLmFixture();
  testing::TempDir dir;
  std::vector<RunResult> whole(2), resumed(2);
  RunRanks(2, dir / "store1", [&](int rank, DistContext* ctx) {
    if (ctx == nullptr) return;
    TrainerOptions o = LmOptions();
    o.dist = ctx;
    whole[static_cast<size_t>(rank)] = TrainLm(f, o, dir / "whole.pt");
  });
  // 7 steps, a checkpoint, the group torn down (as a killed run would leave it).
  RunRanks(2, dir / "store2", [&](int, DistContext* ctx) {
    if (ctx == nullptr) return;
    TrainerOptions o = LmOptions();
    o.dist = ctx;
    auto t = Trainer::Create(f.config, o, f.data, dir / "part.pt", false);
    ASSERT_TRUE(t.ok()) << t.status();
    for (int i = 0; i < 7; ++i) (*t)->Step();
    RAG_EXPECT_OK((*t)->SaveCheckpoint());
  });
  RunRanks(2, dir / "store3", [&](int rank, DistContext* ctx) {
    if (ctx == nullptr) return;
    TrainerOptions o = LmOptions();
    o.dist = ctx;
    auto t = Trainer::Create(f.config, o, f.data, dir / "part.pt", true);
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ((*t)->step(), 7);
    RAG_EXPECT_OK((*t)->Run());
    resumed[static_cast<size_t>(rank)] = {(*t)->history(), Weights(*(*t)->model())};
  });
  EXPECT_TRUE(Identical(whole[0].weights, resumed[0].weights));
  EXPECT_TRUE(Identical(resumed[0].weights, resumed[1].weights));
  ASSERT_EQ(resumed[0].history.size(), 20u);
  for (size_t i = 0; i < 20; ++i) EXPECT_EQ(resumed[0].history[i].loss, whole[0].history[i].loss) << i;
}

TEST(DistTrainTest, ResumeRefusesAnotherWorldSize) {
  const LmFixture f = MakeLmFixture();
  testing::TempDir dir;
  TrainerOptions o = LmOptions();
  o.steps = 3;
  TrainLm(f, o, dir / "one.pt");  // written by one process
  std::vector<absl::Status> got(2);
  RunRanks(2, dir / "store", [&](int rank, DistContext* ctx) {
    if (ctx == nullptr) return;
    TrainerOptions d = LmOptions();
    d.dist = ctx;
    got[static_cast<size_t>(rank)] = Trainer::Create(f.config, d, f.data, dir / "one.pt", true).status();
  });
  for (const auto& s : got) {
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    EXPECT_NE(s.message().find("run of 1 process"), std::string::npos) << s;
  }
}

TEST(DistTrainTest, BatchNotDivisibleByTheRanksIsAnError) {
  const LmFixture f = MakeLmFixture();
  testing::TempDir dir;
  std::vector<absl::Status> got(2);
  RunRanks(2, dir / "store", [&](int rank, DistContext* ctx) {
    if (ctx == nullptr) return;
    TrainerOptions o = LmOptions();
    o.batch_size = 7;
    o.dist = ctx;
    got[static_cast<size_t>(rank)] = Trainer::Create(f.config, o, f.data, dir / "c.pt", false).status();
  });
  for (const auto& s : got) {
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(s.message().find("batch of 7 sequences is not divisible by the 2 ranks"), std::string::npos) << s;
  }
}

TEST(DistTrainTest, DifferentCorporaAreAnErrorNamingRankAndField) {
  const LmFixture f = MakeLmFixture();
  LmFixture other = f;
  other.data.train.pop_back();
  testing::TempDir dir;
  std::vector<absl::Status> got(2);
  RunRanks(2, dir / "store", [&](int rank, DistContext* ctx) {
    if (ctx == nullptr) return;
    TrainerOptions o = LmOptions();
    o.dist = ctx;
    const LmFixture& mine = rank == 0 ? f : other;
    got[static_cast<size_t>(rank)] = Trainer::Create(mine.config, o, mine.data, dir / "c.pt", false).status();
  });
  for (const auto& s : got) {
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    EXPECT_NE(s.message().find("rank 1's corpus differs from rank 0's"), std::string::npos) << s;
    EXPECT_NE(s.message().find(std::to_string(f.data.train.size()) + " training tokens"), std::string::npos) << s;
  }
}

TEST(DistTrainTest, DifferentOptionsAreAnError) {
  const LmFixture f = MakeLmFixture();
  testing::TempDir dir;
  std::vector<absl::Status> got(2);
  RunRanks(2, dir / "store", [&](int rank, DistContext* ctx) {
    if (ctx == nullptr) return;
    TrainerOptions o = LmOptions();
    if (rank == 1) o.lr = 1e-3;
    o.dist = ctx;
    got[static_cast<size_t>(rank)] = Trainer::Create(f.config, o, f.data, dir / "c.pt", false).status();
  });
  for (const auto& s : got) {
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    EXPECT_NE(s.message().find("rank 1's training options differ"), std::string::npos) << s;
  }
}

TEST(DistTrainTest, ADeadRankStopsTheOthersWithAnError) {
  const LmFixture f = MakeLmFixture();
  testing::TempDir dir;
  absl::Status survivor;
  RunRanks(2, dir / "store", [&](int rank, DistContext* ctx) {
    if (ctx == nullptr) return;
    TrainerOptions o = LmOptions();
    o.checkpoint_every = 0;
    o.dist = ctx;
    auto t = Trainer::Create(f.config, o, f.data, dir / "c.pt", false);
    ASSERT_TRUE(t.ok()) << t.status();
    if (rank == 1) {
      for (int i = 0; i < 3; ++i) (*t)->Step();
      return;  // leaves the group: its process group closes its connections
    }
    survivor = (*t)->Run();
  });
  EXPECT_EQ(survivor.code(), absl::StatusCode::kUnavailable) << survivor;
  EXPECT_NE(survivor.message().find("allreduce of gradients at step 3"), std::string::npos) << survivor;
}

// A port nothing listens on: bound, then closed.
int UnusedPort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

TEST(DistTrainTest, UnreachableMasterTimesOutNamingAddressAndPort) {
  DistEnv env;
  env.rank = 1;
  env.world_size = 2;
  env.master_addr = "127.0.0.1";
  env.master_port = UnusedPort();
  DistOptions o;
  o.interface = "127.0.0.1";
  o.timeout = milliseconds(1500);
  const auto started = std::chrono::steady_clock::now();
  auto ctx = DistContext::Create(env, o);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  ASSERT_FALSE(ctx.ok());
  EXPECT_EQ(ctx.status().code(), absl::StatusCode::kUnavailable) << ctx.status();
  EXPECT_NE(ctx.status().message().find("127.0.0.1:" + std::to_string(env.master_port)), std::string::npos)
      << ctx.status();
  EXPECT_LT(secs, 30.0);
}

TEST(DistTrainTest, TcpStoreRendezvousOnLoopback) {
  // The path `rag train --dist` takes: rank 0 serves a TCPStore.
  const int port = UnusedPort();
  std::vector<double> sums(2, 0);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      DistEnv env;
      env.rank = r;
      env.world_size = 2;
      env.master_addr = "127.0.0.1";
      env.master_port = port;
      DistOptions o;  // default interface: the address that reaches MASTER_ADDR
      o.timeout = milliseconds(20000);
      auto ctx = DistContext::Create(env, o);
      ASSERT_TRUE(ctx.ok()) << ctx.status();
      auto t = torch::full({3}, static_cast<float>(r + 1));
      RAG_ASSERT_OK((*ctx)->AllreduceSum(t, "test"));
      sums[static_cast<size_t>(r)] = t[2].item<double>();
      RAG_EXPECT_OK((*ctx)->Barrier("end"));
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(sums[0], 3.0);
  EXPECT_EQ(sums[1], 3.0);
}

TEST(DistTrainTest, AgreeCarriesAFailedRanksError) {
  testing::TempDir dir;
  std::vector<absl::Status> got(2);
  RunRanks(2, dir / "store", [&](int rank, DistContext* ctx) {
    if (ctx == nullptr) return;
    const absl::Status local = rank == 0 ? absl::InternalError("disk full") : absl::OkStatus();
    got[static_cast<size_t>(rank)] = ctx->Agree(local, "the checkpoint");
  });
  EXPECT_EQ(got[0].message(), "disk full");
  EXPECT_EQ(got[1].code(), absl::StatusCode::kAborted);
  EXPECT_NE(got[1].message().find("rank 0 failed at the checkpoint: disk full"), std::string::npos) << got[1];
}

// ---- RETRO retrofit ----

constexpr int64_t kVocab = 64;
constexpr int64_t kChunk = 4;
constexpr TokenId kEot = kVocab - 1;

RetroConfig TinyRetroConfig() {
  RetroConfig c;
  c.decoder.vocab_size = kVocab;
  c.decoder.context = 32;
  c.decoder.d_model = 32;
  c.decoder.n_layers = 2;
  c.decoder.n_heads = 4;
  c.decoder.d_ff = 64;
  c.decoder.dropout = 0.0;
  c.chunk_size = kChunk;
  c.neighbours = 2;
  c.neighbour_tokens = 4;
  c.encoder_layers = 1;
  c.cca_layers = {1};
  return c;
}

// Documents of 3..12 chunks (the context holds 8): windows near a document's
// end hold fewer targets, so the ranks' token counts differ.
RetroDocuments MakeRetroDocs(int n_docs, uint64_t seed) {
  std::mt19937_64 rng(seed);
  RetroDocuments docs;
  for (int d = 0; d < n_docs; ++d) {
    const int64_t chunks = 3 + static_cast<int64_t>(rng() % 10);
    const int64_t tokens = chunks * kChunk - static_cast<int64_t>(rng() % kChunk);
    std::vector<TokenId> t(static_cast<size_t>(tokens));
    for (auto& x : t) x = static_cast<TokenId>(1 + rng() % 40);
    std::vector<int32_t> sets(static_cast<size_t>(chunks * 2 * 4));
    for (auto& x : sets) x = static_cast<int32_t>(1 + rng() % 40);
    std::vector<uint8_t> present(static_cast<size_t>(chunks * 2));
    for (auto& x : present) x = rng() % 4 != 0;
    docs.tokens.push_back(std::move(t));
    docs.neighbours.push_back(std::move(sets));
    docs.present.push_back(std::move(present));
  }
  return docs;
}

RetroTrainerOptions RetroOptions() {
  RetroTrainerOptions o;
  o.steps = 20;
  o.batch_size = 8;
  o.lr = 3e-3;
  o.warmup_steps = 5;
  o.checkpoint_every = 0;
  o.eval_every = 0;
  o.show_progress = false;
  o.freeze_decoder = true;
  return o;
}

// The LM being retrofitted, made once: ranks (threads) only read it.
TransformerLM& RetroInit() {
  static TransformerLM init = [] {
    torch::manual_seed(3);
    return TransformerLM(TinyRetroConfig().decoder);
  }();
  return init;
}

RunResult TrainRetro(const RetroTrainerOptions& o, const RetroTrainingData& data, const std::string& ckpt) {
  auto t = RetroTrainer::Create(TinyRetroConfig(), o, data, kEot, ckpt, false, &RetroInit());
  EXPECT_TRUE(t.ok()) << t.status();
  if (!t.ok()) return {};
  EXPECT_TRUE((*t)->Run().ok());
  return {(*t)->history(), Weights(*(*t)->model())};
}

TEST(DistTrainTest, TwoRanksRetrofitRetroAsOneProcess) {
  testing::TempDir dir;
  const RetroTrainingData data{MakeRetroDocs(60, 5), MakeRetroDocs(4, 6), {}, {}};
  RetroInit();
  const RunResult single = TrainRetro(RetroOptions(), data, dir / "single.pt");
  std::vector<RunResult> ranks(2);
  RunRanks(2, dir / "store", [&](int rank, DistContext* ctx) {
    if (ctx == nullptr) return;
    RetroTrainerOptions o = RetroOptions();
    o.dist = ctx;
    ranks[static_cast<size_t>(rank)] = TrainRetro(o, data, dir / "dist.pt");
  });
  ExpectLossesMatch(single.history, ranks[0].history);
  EXPECT_TRUE(Identical(ranks[0].weights, ranks[1].weights)) << "ranks diverged";
  EXPECT_LT(MaxAbsDiff(single.weights, ranks[0].weights), 1e-4);
}

// ---- the launcher's environment ----

std::function<const char*(const char*)> Env(std::map<std::string, std::string> vars) {
  auto shared = std::make_shared<std::map<std::string, std::string>>(std::move(vars));
  return [shared](const char* name) -> const char* {
    auto it = shared->find(name);
    return it == shared->end() ? nullptr : it->second.c_str();
  };
}

TEST(ReadDistEnvTest, TorchrunMpirunAndSrunVariables) {
  auto t = ReadDistEnv(true, Env({{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "29500"}}));
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->rank, 1);
  EXPECT_EQ(t->world_size, 2);
  EXPECT_EQ(t->master_addr, "h");
  EXPECT_EQ(t->master_port, 29500);
  EXPECT_EQ(t->launcher, "torchrun");
  auto m = ReadDistEnv(true, Env({{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "4"},
                                  {"MASTER_ADDR", "h"}, {"MASTER_PORT", "1"}}));
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->world_size, 4);
  EXPECT_EQ(m->launcher, "mpirun");
  auto s = ReadDistEnv(true, Env({{"SLURM_PROCID", "2"}, {"SLURM_NTASKS", "3"}, {"MASTER_ADDR", "h"},
                                  {"MASTER_PORT", "1"}}));
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->rank, 2);
  EXPECT_EQ(s->launcher, "srun");
  auto f = ReadDistEnv(false, Env({{"RANK", "0"}, {"WORLD_SIZE", "1"}}));
  EXPECT_TRUE(f.ok()) << f.status();  // a FileStore needs no master
}

TEST(ReadDistEnvTest, MissingOrBadVariablesAreNamed) {
  auto no_port = ReadDistEnv(true, Env({{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "2"},
                                        {"MASTER_ADDR", "h"}}));
  EXPECT_NE(no_port.status().message().find("MASTER_PORT is not set"), std::string::npos) << no_port.status();
  auto no_addr = ReadDistEnv(true, Env({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}, {"MASTER_PORT", "5"}}));
  EXPECT_NE(no_addr.status().message().find("MASTER_ADDR is not set"), std::string::npos) << no_addr.status();
  auto no_world = ReadDistEnv(true, Env({{"RANK", "0"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "5"}}));
  EXPECT_NE(no_world.status().message().find("WORLD_SIZE is not set"), std::string::npos) << no_world.status();
  auto none = ReadDistEnv(true, Env({}));
  EXPECT_NE(none.status().message().find("no rank in the environment"), std::string::npos) << none.status();
  auto too_big = ReadDistEnv(true, Env({{"RANK", "2"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"},
                                        {"MASTER_PORT", "5"}}));
  EXPECT_NE(too_big.status().message().find("RANK='2'"), std::string::npos) << too_big.status();
  auto bad_port = ReadDistEnv(true, Env({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"},
                                         {"MASTER_PORT", "http"}}));
  EXPECT_NE(bad_port.status().message().find("MASTER_PORT='http'"), std::string::npos) << bad_port.status();
}

}  // namespace
}  // namespace rag::lm

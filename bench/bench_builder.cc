// Index builder against its raw parts, measured in one run:
//  (a) throughput of the whole BuildIndex (chunking, the chunk store,
//      embedding, FAISS training and adding, saving) against the raw
//      embedding forward (Embedder::Embed alone on the same chunk batches);
//      issue 24 target: ratio >= 0.9 with a trained IVF-PQ factory on all of
//      Brown. The embed stage alone (read chunks, embed, append) is printed
//      next to it. Median of --rounds rounds, the order flipped every round;
//  (b) memory growth of a build over the size of the index it writes:
//      (peak RSS of the build - peak RSS of loading the model) / index bytes
//      on disk (issue 24 target: <= 2, on Brown and on a corpus >= 4x
//      larger). Each build runs in a forked child and its peak is
//      ru_maxrss from wait4, so nothing else this process does counts.
//      Two corpus sizes (the first --docs-small and the first --docs
//      documents) give the marginal ratio (peak_big - peak_small) /
//      (index_big - index_small): the memory the build costs per byte of
//      index once the fixed costs (LibTorch, the model) are paid (printed for
//      reference, as issue 3 compared it); the raw ratio peak / index of each
//      size next to it, with the index size at which it would reach 2x.
//      Both sizes are also built again with the real build's embeddings read
//      back instead of computed ("replay"): same index, no forward pass, so
//      the peak is the builder's own memory, not the embedding working set.
//
//   build/bench/bench_builder --model MODEL_DIR [--corpus data/brown/brown.jsonl] [--docs N]
//       [--docs-small N (default: a quarter of --docs)] [--batch N (default: rag build's)] [--chunk-tokens 64]
//       [--index-factory F] [--rounds 5] [--threads N] [--memory-only] [--out bench/results/builder.json]
//
// Every round's figures and the memory figures go to --out as JSON.
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_report.h"
#include "bench/proc_status.h"
#include "common/file_util.h"
#include "common/status.h"
#include "index_builder/corpus_reader.h"
#include "index_builder/index_builder.h"
#include "lm/embedder.h"
#include "lm/language_model.h"
#include "lm/runtime.h"
#include "retriever/chunk_store.h"
#include "retriever/manifest.h"

namespace {

namespace fs = std::filesystem;

struct Flags {
  std::string corpus = "data/brown/brown.jsonl";
  std::string model;
  std::string index_factory;  // "" = the builder's choice, as `rag build`
  int64_t docs = 0;           // 0 = all
  int64_t docs_small = 0;     // the small corpus of (b); 0 = a quarter of the --docs corpus
  int64_t batch = rag::index_builder::BuildOptions{}.embed_batch;  // chunks per embedding batch, as `rag build`
  int chunk_tokens = 64;
  int64_t rounds = 5;
  std::string out;            // JSON result file; "" = none
  int threads = static_cast<int>(std::thread::hardware_concurrency());
  bool run_a = true;          // false (--memory-only): part (b) alone, for corpora too big for 5 rounds of (a)
};

double Seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// CPU seconds of this process, all threads.
double CpuSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

double Mb(double bytes) { return bytes / (1024.0 * 1024.0); }

// Sum of the sizes of the regular files under `dir`.
double DirBytes(const fs::path& dir) {
  double total = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) total += static_cast<double>(e.file_size());
  }
  return total;
}

// Runs `job` in a forked child; returns the child's peak RSS in bytes
// (ru_maxrss from wait4), or -1 when it fails. Call before this process
// starts any LibTorch or OpenMP threads: they do not survive a fork.
double PeakRssOfChild(const char* what, const std::function<int()>& job) {
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid < 0) {
    std::perror("fork");
    return -1;
  }
  if (pid == 0) {
    int code = job();
    std::fflush(nullptr);
    _exit(code);
  }
  int status = 0;
  struct rusage usage {};
  if (wait4(pid, &status, 0, &usage) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::fprintf(stderr, "bench_builder: child '%s' failed (status %d)\n", what, status);
    return -1;
  }
  return static_cast<double>(usage.ru_maxrss) * 1024.0;  // Linux: kilobytes
}

int Fail(const char* what, const absl::Status& s) {
  std::fprintf(stderr, "bench_builder: %s: %s\n", what, s.ToString().c_str());
  return 1;
}

rag::index_builder::BuildOptions Options(const Flags& f, const fs::path& out, rag::index_builder::BuildTimings* t) {
  rag::index_builder::BuildOptions o;
  o.out_dir = out.string();
  o.corpus_path = f.corpus;
  o.index_factory = f.index_factory;
  o.chunk_tokens = f.chunk_tokens;
  o.embed_batch = f.batch;
  o.show_progress = false;
  o.timings = t;
  return o;
}

// What `rag build --corpus C --model M --out OUT` does, from a fresh process.
int BuildJob(const Flags& f, const std::string& corpus, const fs::path& out) {
  rag::lm::ConfigureRuntime(f.threads);
  auto model = rag::lm::LanguageModel::Open(f.model);
  if (!model.ok()) return Fail("opening the model", model.status());
  auto docs = rag::index_builder::ReadCorpus(corpus);
  if (!docs.ok()) return Fail("reading the corpus", docs.status());
  auto embedder = rag::lm::MakeLmEmbedder(model->get());
  auto m = rag::index_builder::BuildIndex(*docs, (*model)->tokenizer(), *embedder, (*model)->content_hash(),
                                          Options(f, out, nullptr));
  if (!m.ok()) return Fail("building", m.status());
  return 0;
}

// Hands back the embeddings a real build wrote, in order, under the real
// embedder's dim and hash: BuildIndex then runs without a LibTorch forward
// pass, so its peak shows the builder's own memory and not the headroom the
// embedding working set leaves behind in the heap.
class ReplayEmbedder : public rag::lm::Embedder {
 public:
  ReplayEmbedder(const std::string& path, const rag::lm::Embedder& real)
      : in_(path, std::ios::binary),
        dim_(real.dim()),
        max_tokens_(real.max_tokens()),
        hash_(real.hash()),
        description_(real.description()) {}
  int dim() const override { return dim_; }
  int64_t max_tokens() const override { return max_tokens_; }
  std::string hash() const override { return hash_; }
  std::string description() const override { return description_; }
  absl::Status Embed(const std::vector<std::vector<rag::lm::TokenId>>& sequences, std::vector<float>* out) override {
    out->resize(sequences.size() * static_cast<size_t>(dim_));
    in_.read(reinterpret_cast<char*>(out->data()), static_cast<std::streamsize>(out->size() * sizeof(float)));
    if (!in_) return absl::DataLossError("replayed embeddings ran out");
    return absl::OkStatus();
  }

 private:
  std::ifstream in_;
  int dim_;
  int64_t max_tokens_;
  std::string hash_, description_;
};

// BuildJob with the embeddings of the finished build at `real` replayed.
int ReplayJob(const Flags& f, const std::string& corpus, const fs::path& real, const fs::path& out) {
  rag::lm::ConfigureRuntime(f.threads);
  auto model = rag::lm::LanguageModel::Open(f.model);
  if (!model.ok()) return Fail("opening the model", model.status());
  auto docs = rag::index_builder::ReadCorpus(corpus);
  if (!docs.ok()) return Fail("reading the corpus", docs.status());
  ReplayEmbedder embedder((real / rag::retriever::kEmbeddingsFile).string(), *rag::lm::MakeLmEmbedder(model->get()));
  auto m = rag::index_builder::BuildIndex(*docs, (*model)->tokenizer(), embedder, (*model)->content_hash(),
                                          Options(f, out, nullptr));
  if (!m.ok()) return Fail("building with replayed embeddings", m.status());
  return 0;
}

// (a)'s figures, each vector one entry per round.
struct Throughput {
  std::vector<double> builder_s, raw_s, store_s, index_s, total_s, raw_cpu, total_cpu, whole_ratio;
  double ratio = 0;  // embed stage / raw forward, chunks/s of the medians
  double whole = 0;  // median of whole_ratio
  bool identical = true;
};

// (a) Throughput, in this process (so run after every fork of (b)): the
// whole BuildIndex of `subset` against the raw forward over the chunks of
// the finished build at `rss_index`.
int MeasureThroughput(const Flags& f, const std::string& subset, const fs::path& tmp, const fs::path& rss_index,
                      const rag::retriever::Manifest& manifest, Throughput* tp) {
  rag::lm::ConfigureRuntime(f.threads);
  auto model = rag::lm::LanguageModel::Open(f.model);
  if (!model.ok()) return Fail("opening the model", model.status());
  auto docs = rag::index_builder::ReadCorpus(subset);
  if (!docs.ok()) return Fail("reading the corpus", docs.status());
  auto embedder = rag::lm::MakeLmEmbedder(model->get());  // as `rag build`: at most 32 per forward

  // The builder's batches: consecutive runs of --batch chunks in chunk order.
  std::vector<std::vector<std::vector<rag::lm::TokenId>>> batches(1);
  {
    rag::retriever::ChunkStoreOptions so;
    so.chunk_tokens = f.chunk_tokens;
    so.continuation_tokens = manifest.continuation_tokens;
    so.create_if_missing = false;
    so.read_only = true;
    auto store = rag::retriever::ChunkStore::Open((rss_index / rag::retriever::kChunkStoreDir).string(), so);
    if (!store.ok()) return Fail("opening the chunk store", store.status());
    absl::Status visit = (*store)->ForEachChunk(0, [&](const rag::retriever::ChunkRecord& rec) {
      if (static_cast<int64_t>(batches.back().size()) == f.batch) batches.emplace_back();
      batches.back().emplace_back(rec.tokens.begin(), rec.tokens.end());
      return true;
    });
    if (!visit.ok()) return Fail("reading chunks", visit);
  }
  const int64_t chunks = manifest.chunks;

  // Warm-up: first forward passes allocate and pick kernels.
  std::vector<float> out;
  for (size_t i = 0; i < std::min<size_t>(2, batches.size()); ++i) {
    if (auto s = embedder->Embed(batches[i], &out); !s.ok()) return Fail("embedding", s);
  }

  auto& [builder_s, raw_s, store_s, index_s, total_s, raw_cpu, total_cpu, whole_ratio, ratio, whole, identical] = *tp;
  for (int64_t r = 0; r < f.rounds; ++r) {  // alternated rounds: drift hits both sides alike
    const fs::path out_dir = tmp / ("round" + std::to_string(r));
    std::string raw;
    auto raw_pass = [&]() -> absl::Status {
      raw.clear();
      raw.reserve(static_cast<size_t>(chunks) * static_cast<size_t>(embedder->dim()) * sizeof(float));
      const auto t0 = std::chrono::steady_clock::now();
      const double c0 = CpuSeconds();
      for (const auto& batch : batches) {
        RAG_RETURN_IF_ERROR(embedder->Embed(batch, &out));
        raw.append(reinterpret_cast<const char*>(out.data()), out.size() * sizeof(float));
      }
      raw_s.push_back(Seconds(t0));
      raw_cpu.push_back(CpuSeconds() - c0);
      return absl::OkStatus();
    };
    if (r % 2 == 1) {
      if (auto s = raw_pass(); !s.ok()) return Fail("embedding", s);
    }
    rag::index_builder::BuildTimings t;
    auto t0 = std::chrono::steady_clock::now();
    double c0 = CpuSeconds();
    auto m = rag::index_builder::BuildIndex(*docs, (*model)->tokenizer(), *embedder, (*model)->content_hash(),
                                            Options(f, out_dir, &t));
    total_s.push_back(Seconds(t0));
    total_cpu.push_back(CpuSeconds() - c0);
    if (!m.ok()) return Fail("building", m.status());
    if (m->chunks != chunks) { std::fprintf(stderr, "chunk count differs between builds\n"); return 1; }
    builder_s.push_back(t.embed_s);
    store_s.push_back(t.store_s);
    index_s.push_back(t.index_s);
    if (r % 2 == 0) {
      if (auto s = raw_pass(); !s.ok()) return Fail("embedding", s);
    }
    // Same batches, same function: the builder's file must hold exactly these bytes.
    auto written = rag::ReadFile((out_dir / rag::retriever::kEmbeddingsFile).string());
    identical = identical && written.ok() && *written == raw;
    std::error_code ec;
    fs::remove_all(out_dir, ec);
  }

  auto best = [](const std::vector<double>& v) { return rag::bench::Median(v); };  // medians over the rounds
  const double n = static_cast<double>(chunks);
  const double builder_cps = n / best(builder_s), raw_cps = n / best(raw_s);
  ratio = builder_cps / raw_cps;  // whole_ratio: raw forward s / whole BuildIndex s, per round
  for (size_t r = 0; r < raw_s.size(); ++r) whole_ratio.push_back(raw_s[r] / total_s[r]);
  whole = rag::bench::Median(whole_ratio);
  std::printf("corpus: %s, %lld documents (--docs %lld), %lld tokens, %lld chunks of <= %d tokens\n",
              f.corpus.c_str(), static_cast<long long>(manifest.documents), static_cast<long long>(f.docs),
              static_cast<long long>(manifest.tokens), static_cast<long long>(chunks), f.chunk_tokens);
  std::printf("model: %s, dim %d; index %s; embed batch %lld chunks; %lld rounds\n", f.model.c_str(), manifest.dim,
              manifest.index_factory.c_str(), static_cast<long long>(f.batch), static_cast<long long>(f.rounds));
  std::printf("\n(a) throughput, seconds per pass over all chunks\n");
  std::printf("  round  raw Embed  builder embed stage  builder store  builder index  whole BuildIndex"
              "  | CPU s: raw Embed  whole BuildIndex\n");
  for (int64_t r = 0; r < f.rounds; ++r) {
    std::printf("  %5lld  %9.3f  %19.3f  %13.3f  %13.3f  %16.3f  |  %15.3f  %16.3f\n", static_cast<long long>(r),
                raw_s[r], builder_s[r], store_s[r], index_s[r], total_s[r], raw_cpu[r], total_cpu[r]);
  }
  std::printf("  median of %lld rounds                            seconds   chunks/s\n",
              static_cast<long long>(f.rounds));
  std::printf("  raw Embedder::Embed, same batches             %8.3f %10.1f\n", best(raw_s), raw_cps);
  std::printf("  BuildIndex embed stage (read+embed+append)    %8.3f %10.1f\n", best(builder_s), builder_cps);
  std::printf("  whole BuildIndex (chunk, store, embed, FAISS) %8.3f %10.1f\n", best(total_s), n / best(total_s));
  std::printf("  builder output identical to raw embeddings: %s\n", identical ? "yes" : "NO");
  std::printf("  ratio embed stage/raw (for reference): %.3f\n", ratio);
  std::printf("  ratio whole build/raw forward (median of the rounds' ratios, %.3f .. %.3f): %.3f (target >= 0.9) %s\n",
              *std::min_element(whole_ratio.begin(), whole_ratio.end()),
              *std::max_element(whole_ratio.begin(), whole_ratio.end()), whole, whole >= 0.9 ? "PASS" : "FAIL");
  // CPU time is less sensitive to other processes taking the cores; the
  // builder side is its whole BuildIndex call, which only counts against it.
  const double cpu_ratio = best(raw_cpu) / best(total_cpu);
  std::printf("  for reference, CPU-time ratio raw Embed / whole BuildIndex (medians): %.3f\n", cpu_ratio);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  rag::lm::RestartWithPassiveOpenMP(argv);  // as `rag` runs
  Flags f;
  CLI::App app{"bench_builder: BuildIndex's embed stage against Embedder::Embed alone, and a build's peak RSS "
               "against its index size"};
  app.add_option("--model", f.model, "model directory (tokenizer, embedder)")->required();
  app.add_option("--corpus", f.corpus, "corpus: .txt, .jsonl or directory")->capture_default_str();
  app.add_option("--docs", f.docs, "documents of the big corpus (0: all)")->capture_default_str();
  app.add_option("--docs-small", f.docs_small, "documents of the small corpus (0: a quarter of --docs)")
      ->capture_default_str();
  app.add_option("--batch", f.batch, "chunks per embedding batch (`rag build --batch-size`)")->capture_default_str();
  app.add_option("--chunk-tokens", f.chunk_tokens, "tokens per chunk")->capture_default_str();
  app.add_option("--index-factory", f.index_factory, "FAISS factory string (default: the builder's choice)");
  app.add_option("--rounds", f.rounds, "alternated throughput rounds (medians over them)")->capture_default_str();
  app.add_option("--out", f.out, "JSON file for each round's figures and the memory figures");
  app.add_option("--threads", f.threads, "LibTorch intra-op threads (default: every core)");
  bool memory_only = false;
  app.add_flag("--memory-only", memory_only, "part (b) alone: no throughput rounds");
  CLI11_PARSE(app, argc, argv);
  f.run_a = !memory_only;
  if (!fs::exists(f.corpus)) { std::fprintf(stderr, "corpus '%s' does not exist (--corpus)\n", f.corpus.c_str()); return 2; }
  if (f.rounds < 1 || f.batch < 1) { std::fprintf(stderr, "--rounds and --batch must be >= 1\n"); return 2; }
  if (f.docs < 0 || f.docs_small < 0) { std::fprintf(stderr, "--docs and --docs-small must be >= 0\n"); return 2; }
  if (f.docs > 0 && f.docs_small >= f.docs) {
    std::fprintf(stderr, "--docs-small must be below --docs: (b) needs two corpus sizes\n");
    return 2;
  }

  std::printf("command:");
  for (int i = 0; i < argc; ++i) std::printf(" %s", argv[i]);
  std::printf("\nmachine: %u cores (nproc), %d intra-op threads\n", std::thread::hardware_concurrency(), f.threads);

  std::string templ = (fs::temp_directory_path() / "bench_builder_XXXXXX").string();
  if (::mkdtemp(templ.data()) == nullptr) { std::perror("mkdtemp"); return 1; }
  const fs::path tmp = templ;

  // The --docs and --docs-small subsets as their own corpus files, written
  // by a child so that the full corpus never inflates this process (forked
  // children inherit it). The small one is a prefix of the big one.
  const std::string subset = (tmp / "corpus.jsonl").string();
  const std::string subset_small = (tmp / "corpus_small.jsonl").string();
  if (PeakRssOfChild("subset", [&] {
        auto docs = rag::index_builder::ReadCorpus(f.corpus);
        if (!docs.ok()) return Fail("reading the corpus", docs.status());
        if (f.docs > 0 && static_cast<int64_t>(docs->size()) > f.docs) docs->resize(static_cast<size_t>(f.docs));
        const size_t small = f.docs_small > 0 ? static_cast<size_t>(f.docs_small) : docs->size() / 4;
        if (small < 1 || small >= docs->size()) {
          std::fprintf(stderr,
                       "bench_builder: the small corpus needs at least 1 document and fewer than the %zu"
                       " of the big one, got %zu (--docs-small)\n",
                       docs->size(), small);
          return 1;
        }
        std::ofstream out(subset), out_small(subset_small);
        for (size_t i = 0; i < docs->size(); ++i) {
          const std::string line = nlohmann::json{{"id", (*docs)[i].id}, {"text", (*docs)[i].text}}.dump() + "\n";
          out << line;
          if (i < small) out_small << line;
        }
        return out.good() && out_small.good() ? 0 : 1;
      }) < 0) {
    return 1;
  }

  // (b) Peak RSS. Both children start from this process as it is now (no
  // LibTorch threads, no model, no corpus).
  const double parent_rss = rag::bench::ProcStatusBytes("VmRSS:");
  const double load_peak = PeakRssOfChild("load model", [&] {
    rag::lm::ConfigureRuntime(f.threads);
    auto model = rag::lm::LanguageModel::Open(f.model);
    return model.ok() ? 0 : Fail("opening the model", model.status());
  });
  // For the breakdown only: the model plus LibTorch's working set for one
  // embedding batch (activations; the heap keeps them, see lm/runtime.h).
  const double embed_peak = PeakRssOfChild("embed one batch", [&] {
    rag::lm::ConfigureRuntime(f.threads);
    auto model = rag::lm::LanguageModel::Open(f.model);
    if (!model.ok()) return Fail("opening the model", model.status());
    std::mt19937 rng(1);
    const int64_t vocab = (*model)->config().vocab_size;
    std::vector<std::vector<rag::lm::TokenId>> batch(static_cast<size_t>(f.batch));
    for (auto& seq : batch) {
      for (int i = 0; i < f.chunk_tokens; ++i) seq.push_back(static_cast<rag::lm::TokenId>(rng() % vocab));
    }
    std::vector<float> out;
    auto s = rag::lm::MakeLmEmbedder(model->get())->Embed(batch, &out);
    return s.ok() ? 0 : Fail("embedding", s);
  });
  const fs::path rss_index_small = tmp / "rss_index_small";
  const fs::path rss_index = tmp / "rss_index";
  const double build_peak_small =
      PeakRssOfChild("build small", [&] { return BuildJob(f, subset_small, rss_index_small); });
  const double build_peak = PeakRssOfChild("build", [&] { return BuildJob(f, subset, rss_index); });
  if (load_peak < 0 || embed_peak < 0 || build_peak_small < 0 || build_peak < 0) return 1;
  const double index_bytes_small = DirBytes(rss_index_small);
  const double index_bytes = DirBytes(rss_index);
  auto manifest_small = rag::retriever::Manifest::Load(rss_index_small.string());
  if (!manifest_small.ok()) return Fail("reading the manifest", manifest_small.status());
  auto manifest = rag::retriever::Manifest::Load(rss_index.string());
  if (!manifest.ok()) return Fail("reading the manifest", manifest.status());
  const fs::path replay_index_small = tmp / "replay_index_small";
  const fs::path replay_index = tmp / "replay_index";
  const double replay_peak_small =
      PeakRssOfChild("replay small", [&] { return ReplayJob(f, subset_small, rss_index_small, replay_index_small); });
  const double replay_peak = PeakRssOfChild("replay", [&] { return ReplayJob(f, subset, rss_index, replay_index); });
  if (replay_peak_small < 0 || replay_peak < 0) return 1;
  const double replay_bytes_small = DirBytes(replay_index_small);
  const double replay_bytes = DirBytes(replay_index);
  auto replay_manifest_small = rag::retriever::Manifest::Load(replay_index_small.string());
  auto replay_manifest = rag::retriever::Manifest::Load(replay_index.string());
  const bool replay_same = replay_manifest_small.ok() && replay_manifest.ok() &&
                           replay_manifest_small->checksums == manifest_small->checksums &&
                           replay_manifest->checksums == manifest->checksums;

  Throughput tp;
  if (f.run_a) {
    if (int rc = MeasureThroughput(f, subset, tmp, rss_index, *manifest, &tp); rc != 0) return rc;
  }


  // (b) The marginal ratio (for reference) is
  // the slope of peak RSS against index size through the two builds, and
  // the fixed cost is where that line meets zero index size (compare it
  // with the model-load child). Peak = fixed + marginal * index, so the raw
  // ratio reaches 2 at index = fixed / (2 - marginal). The replayed builds
  // give a second line, without the embedding working set; the real peak is
  // about the larger of the two lines, so the raw ratio reaches 2 where both
  // lines are under 2 * index.
  struct Line {
    double marginal, fixed;
  };
  auto line = [](double peak_small, double peak_big, double bytes_small, double bytes_big) {
    const double marginal = (peak_big - peak_small) / (bytes_big - bytes_small);
    return Line{marginal, peak_small - marginal * bytes_small};
  };
  auto crossing = [](const Line& l) {  // index bytes where fixed + marginal * index = 2 * index; < 0: never
    return l.marginal < 2.0 ? std::max(0.0, l.fixed) / (2.0 - l.marginal) : -1.0;
  };
  const Line real = line(build_peak_small, build_peak, index_bytes_small, index_bytes);
  const Line replay = line(replay_peak_small, replay_peak, replay_bytes_small, replay_bytes);
  const double bytes_per_chunk = index_bytes / static_cast<double>(manifest->chunks);
  const rag::index_builder::BuildOptions defaults;
  constexpr double kNoiseBytes = 4.0 * 1024 * 1024;  // run-to-run movement of a peak seen on this machine
  std::printf("\n(b) memory (peak RSS = ru_maxrss of a forked child, from wait4)\n");
  std::printf("  this process at fork, before any model or corpus (VmRSS)      %8.1f MiB\n", Mb(parent_rss));
  std::printf("  child that only loads the model (one child, used for both)    %8.1f MiB\n", Mb(load_peak));
  std::printf("  child that loads the model and embeds one batch               %8.1f MiB\n", Mb(embed_peak));
  std::printf("  builds, each a fresh child: read corpus + load model + BuildIndex, as `rag build`;\n");
  std::printf("  'replay' builds are the same with the embeddings of the real build read back from its file\n");
  std::printf("  instead of computed (no forward pass); they write the same index: %s\n",
              replay_same ? "yes (checksums equal)" : "NO (checksums differ)");
  std::printf("                                         %12s %12s\n", "small", "big");
  std::printf("    documents (--docs-small, --docs)     %12lld %12lld\n",
              static_cast<long long>(manifest_small->documents), static_cast<long long>(manifest->documents));
  std::printf("    chunks                               %12lld %12lld\n",
              static_cast<long long>(manifest_small->chunks), static_cast<long long>(manifest->chunks));
  std::printf("    index factory                        %12s %12s\n", manifest_small->index_factory.c_str(),
              manifest->index_factory.c_str());
  std::printf("    raw peak RSS of the build (MiB)      %12.1f %12.1f\n", Mb(build_peak_small), Mb(build_peak));
  std::printf("    model-load-only peak (MiB)           %12.1f %12.1f\n", Mb(load_peak), Mb(load_peak));
  std::printf("    peak minus model load (MiB)          %12.1f %12.1f\n", Mb(build_peak_small - load_peak),
              Mb(build_peak - load_peak));
  std::printf("    index on disk, all files (MiB)       %12.2f %12.2f\n", Mb(index_bytes_small), Mb(index_bytes));
  std::printf("    raw ratio peak / index               %12.2f %12.2f\n", build_peak_small / index_bytes_small,
              build_peak / index_bytes);
  std::printf("    (peak - model load) / index          %12.2f %12.2f   (for reference only)\n",
              (build_peak_small - load_peak) / index_bytes_small, (build_peak - load_peak) / index_bytes);
  std::printf("    replay build peak RSS (MiB)          %12.1f %12.1f\n", Mb(replay_peak_small), Mb(replay_peak));
  std::printf("    replay raw ratio peak / index        %12.2f %12.2f\n", replay_peak_small / replay_bytes_small,
              replay_peak / replay_bytes);
  std::printf("  marginal ratio (peak_big - peak_small) / (index_big - index_small), not the target's measure:\n");
  std::printf("    real builds   %6.1f MiB / %6.2f MiB = %.2f   (for reference)\n",
              Mb(build_peak - build_peak_small), Mb(index_bytes - index_bytes_small), real.marginal);
  std::printf("    replay builds %6.1f MiB / %6.2f MiB = %.2f   (the builder's own cost per byte)\n",
              Mb(replay_peak - replay_peak_small), Mb(replay_bytes - replay_bytes_small), replay.marginal);
  if (std::abs(build_peak - build_peak_small) < kNoiseBytes) {
    std::printf("  NOTE: the real peak did not grow with the corpus (%.1f vs %.1f MiB): in both builds it is set by\n"
                "    a phase that does not depend on the corpus (embedding: the child that embeds one batch peaks\n"
                "    at %.1f MiB), and the corpus-sized memory fits in the heap it leaves behind. So the real\n"
                "    marginal ratio says only that; the replay builds' ratio is the slope the real builds take\n"
                "    once the corpus-sized memory outgrows that headroom.\n",
                Mb(build_peak_small), Mb(build_peak), Mb(embed_peak));
  }
  std::printf("  fixed cost (each line at index size 0): real %.1f MiB, replay %.1f MiB; model-load-only child %.1f MiB\n",
              Mb(real.fixed), Mb(replay.fixed), Mb(load_peak));
  const double at_real = crossing(real), at_replay = crossing(replay);
  if (at_real >= 0 && at_replay >= 0) {
    const double at = std::max(at_real, at_replay);
    std::printf("  the raw ratio reaches 2.0 at an index of %.1f MiB (about %.0f chunks at %.0f bytes of index per\n"
                "    chunk): real line alone %.1f MiB, replay line alone %.1f MiB; the peak is about the larger\n"
                "    of the two lines, so the later crossing counts (extrapolated, if the lines hold)\n",
                Mb(at), at / bytes_per_chunk, bytes_per_chunk, Mb(at_real), Mb(at_replay));
  } else {
    std::printf("  the raw ratio never reaches 2.0: a marginal ratio is >= 2 (real %.2f, replay %.2f)\n", real.marginal,
                replay.marginal);
  }
  std::printf("  raw ratio (not compared): %.2f on the big build, %s; at this size it is mostly the fixed cost\n",
              build_peak / index_bytes, build_peak / index_bytes <= 2.0 ? "within 2.0" : "ABOVE 2.0");
  std::printf("  caveats: straight lines through two points; peaks move by a few MiB between runs (allocator,\n"
              "    threads); the add buffer is min(chunks, add_batch = %lld) vectors, so below %lld chunks it grows\n"
              "    with the corpus and is in the marginal ratio, above it is fixed; the caller's documents are\n"
              "    in every peak, as in `rag build`%s\n",
              static_cast<long long>(defaults.add_batch), static_cast<long long>(defaults.add_batch),
              manifest_small->index_factory != manifest->index_factory
                  ? "; the two sizes use different index factories, so the slopes mix two index types"
                  : "");

  // The issue 24 measure: what the build adds to a process that holds the
  // model, over what it leaves on disk.
  const double growth_small = (build_peak_small - load_peak) / index_bytes_small;
  const double growth = (build_peak - load_peak) / index_bytes;
  std::printf("  memory growth (peak - model load) / index on disk: small %.2f, big %.2f (target <= 2.0) %s\n",
              growth_small, growth, growth <= 2.0 ? "PASS" : "FAIL");

  if (!f.out.empty()) {
    nlohmann::json report = {
        {"bench", "bench_builder"},
        {"machine", rag::bench::MachineJson()},
        {"threads", f.threads},
        {"rounds", f.run_a ? f.rounds : 0},  // throughput rounds; (b) is one build per size
        {"inputs",
         {{"corpus", f.corpus}, {"model", f.model}, {"docs", manifest->documents}, {"docs_small", manifest_small->documents},
          {"tokens", manifest->tokens}, {"chunks", manifest->chunks}, {"chunks_small", manifest_small->chunks},
          {"index_factory", manifest->index_factory}, {"index_factory_small", manifest_small->index_factory},
          {"embed_batch", f.batch}, {"chunk_tokens", f.chunk_tokens}}},
        {"memory",
         {{"model_load_peak_bytes", load_peak},
          {"embed_one_batch_peak_bytes", embed_peak},
          {"build_peak_bytes", build_peak},
          {"build_peak_bytes_small", build_peak_small},
          {"index_bytes", index_bytes},
          {"index_bytes_small", index_bytes_small},
          {"growth_over_index", growth},
          {"growth_over_index_small", growth_small},
          {"replay_peak_bytes", replay_peak},
          {"replay_peak_bytes_small", replay_peak_small}}},
        {"throughput", nullptr},
        {"pass", {{"whole_build", nullptr}, {"memory_growth", growth <= 2.0}}}};
    if (f.run_a) {
      report["throughput"] = {{"raw_forward_s", rag::bench::RoundsJson(tp.raw_s)},
                              {"embed_stage_s", rag::bench::RoundsJson(tp.builder_s)},
                              {"store_s", rag::bench::RoundsJson(tp.store_s)},
                              {"index_s", rag::bench::RoundsJson(tp.index_s)},
                              {"whole_build_s", rag::bench::RoundsJson(tp.total_s)},
                              {"ratio_whole_build_over_raw", rag::bench::RoundsJson(tp.whole_ratio)},
                              {"ratio_embed_stage_over_raw_medians", tp.ratio},
                              {"embeddings_identical", tp.identical}};
      report["pass"]["whole_build"] = tp.whole >= 0.9;
    }
    if (!rag::bench::WriteJson(f.out, report)) {
      std::fprintf(stderr, "cannot write %s\n", f.out.c_str());
      return 1;
    }
  }
  std::error_code ec;
  fs::remove_all(tmp, ec);
  return 0;
}

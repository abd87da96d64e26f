// Search latency over gRPC against the in-process Engine, on the same index
// and the same queries, in one run (issue 3 target: p50 ratio <= 1.3 at
// nq = 1). The server runs in this process on a loopback port, so the ratio
// is the cost of the service layer (serialisation, HTTP/2, thread hand-off).
//
//   build/bench/bench_search --model MODEL_DIR --index INDEX_DIR
//       [--corpus data/brown/brown.jsonl] [--queries 200] [--k 10] [--threads N]
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <thread>
#include <vector>

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
  std::string model, index, corpus = "data/brown/brown.jsonl";
  int queries = 200, k = 10;
  int threads = rag::lm::kDefaultThreads;
  CLI::App app{"bench_search: Search latency over gRPC against the in-process Engine"};
  app.add_option("--model", model, "model directory")->required();
  app.add_option("--index", index, "index directory")->required();
  app.add_option("--corpus", corpus, "corpus the queries are cut from")->capture_default_str();
  app.add_option("--queries", queries, "queries (nq = 1 calls)")->capture_default_str();
  app.add_option("--k", k, "chunks per query")->capture_default_str();
  app.add_option("--threads", threads, "LibTorch intra-op threads")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
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

  std::printf("bench_search: model %s, index %s, %d queries, k %d, threads %d, %u cores\n", model.c_str(),
              index.c_str(), queries, k, threads, std::thread::hardware_concurrency());
  std::printf("%-6s %-11s %10s %10s %10s\n", "nq", "path", "p50 ms", "p99 ms", "QPS");
  double ratio_nq1 = 0;
  for (int nq : {1, 32}) {
    const int calls = nq == 1 ? queries : std::max(8, queries / 8);
    std::vector<rag::v1::SearchRequest> requests(static_cast<size_t>(calls));
    for (int c = 0; c < calls; ++c) {
      requests[c].set_k(k);
      for (int q = 0; q < nq; ++q) requests[c].add_texts(texts[(c * nq + q) % texts.size()]);
    }
    // Warm up both paths, then alternate them call by call so drift in the
    // machine's load hits both equally.
    for (int w = 0; w < 3; ++w) {
      (void)(*engine)->Search(requests[0]);
      (void)(*client)->Search(requests[0]);
    }
    std::vector<double> local_ms, remote_ms;
    for (const auto& req : requests) {
      auto t0 = std::chrono::steady_clock::now();
      auto a = (*engine)->Search(req);
      auto t1 = std::chrono::steady_clock::now();
      auto b = (*client)->Search(req);
      auto t2 = std::chrono::steady_clock::now();
      if (!a.ok() || !b.ok()) {
        std::fprintf(stderr, "search failed: %s\n", (!a.ok() ? a.status() : b.status()).ToString().c_str());
        return 1;
      }
      if (a->SerializeAsString() != b->SerializeAsString()) {
        std::fprintf(stderr, "gRPC and in-process answers differ\n");
        return 1;
      }
      local_ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
      remote_ms.push_back(std::chrono::duration<double, std::milli>(t2 - t1).count());
    }
    const Latency l = Summarise(local_ms, nq), r = Summarise(remote_ms, nq);
    std::printf("%-6d %-11s %10.2f %10.2f %10.1f\n", nq, "in-process", l.p50_ms, l.p99_ms, l.qps);
    std::printf("%-6d %-11s %10.2f %10.2f %10.1f\n", nq, "gRPC", r.p50_ms, r.p99_ms, r.qps);
    std::printf("%-6d %-11s %10.3f %10.3f %10.3f\n", nq, "ratio", r.p50_ms / l.p50_ms, r.p99_ms / l.p99_ms,
                l.qps / r.qps);
    if (nq == 1) ratio_nq1 = r.p50_ms / l.p50_ms;
  }
  std::printf("p50 latency ratio gRPC / in-process at nq=1: %.3f (target <= 1.3): %s\n", ratio_nq1,
              ratio_nq1 <= 1.3 ? "PASS" : "FAIL");
  (*server)->Shutdown();
  return ratio_nq1 <= 1.3 ? 0 : 1;
}

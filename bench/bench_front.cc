// Search latency through a sharded front (`rag serve --shards ...`) against
// one server holding the same documents (issue 22 target: front p50 <= 1.2x
// the single server's at N = 2), with the front's parts timed on their own:
// embedding the query (in this process, same model and thread count as a
// server), and each shard's SearchVectors for the query's vector (what the
// front fans out). Arms alternate query by query, and which arm goes first
// alternates round by round, so drift in the machine's load hits all of them.
// Every front answer is compared with the single server's (doc id, offset,
// distance of each neighbour) and the number that differ is reported.
//
//   build/bench/bench_front --model M --single ADDR --front ADDR --shard ADDR ...
//       [--corpus data/brown/brown.jsonl] [--queries 200] [--rounds 3] [--k 10]
//       [--nprobe 16] [--json FILE]
#include <CLI/CLI.hpp>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "index_builder/corpus_reader.h"
#include "lm/embedder.h"
#include "lm/language_model.h"
#include "lm/runtime.h"
#include "proto/rag.grpc.pb.h"
#include "services/client.h"

namespace {

using Clock = std::chrono::steady_clock;

double Ms(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); }

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())))];
}

double Mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / static_cast<double>(v.size());
}

// Same neighbours in the same order: doc id, offset and (when `distances`)
// distance, bitwise.
bool SameAnswer(const rag::v1::SearchResponse& a, const rag::v1::SearchResponse& b, bool distances) {
  if (a.results_size() != b.results_size()) return false;
  for (int q = 0; q < a.results_size(); ++q) {
    const auto& x = a.results(q).neighbours();
    const auto& y = b.results(q).neighbours();
    if (x.size() != y.size()) return false;
    for (int i = 0; i < x.size(); ++i) {
      if (x[i].doc_id() != y[i].doc_id() || x[i].offset() != y[i].offset() ||
          (distances && x[i].distance() != y[i].distance())) {
        return false;
      }
    }
  }
  return true;
}

int Fail(const std::string& what) {
  std::fprintf(stderr, "bench_front: %s\n", what.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  rag::lm::RestartWithPassiveOpenMP(argv);  // as `rag` runs
  std::string model_dir, single_addr, front_addr, corpus = "data/brown/brown.jsonl", json_path;
  std::vector<std::string> shard_addrs;
  int queries = 200, rounds = 3, k = 10, nprobe = 16, threads = 0;
  CLI::App app{"bench_front: Search latency through a sharded front against one server"};
  app.add_option("--model", model_dir, "the served model (to embed queries for the shard arm)")->required();
  app.add_option("--single", single_addr, "server of the single index (host:port)")->required();
  app.add_option("--front", front_addr, "the front over the shards (host:port)")->required();
  app.add_option("--shard", shard_addrs, "each shard server (host:port), for the fan-out arm")->required();
  app.add_option("--corpus", corpus, "corpus the queries are cut from")->capture_default_str();
  app.add_option("--queries", queries, "queries per round (one per call)")->capture_default_str();
  app.add_option("--rounds", rounds, "rounds over all queries")->capture_default_str();
  app.add_option("--k", k, "neighbours per query")->capture_default_str();
  app.add_option("--nprobe", nprobe, "IVF lists visited")->capture_default_str();
  app.add_option("--threads", threads, "LibTorch intra-op threads of the embed arm (0: lm::DefaultThreads())")
      ->capture_default_str();
  app.add_option("--json", json_path, "write the raw latencies here");
  CLI11_PARSE(app, argc, argv);
  rag::lm::ConfigureRuntime(threads);

  auto model = rag::lm::LanguageModel::Open(model_dir);
  if (!model.ok()) return Fail(model.status().ToString());
  auto embedder = rag::lm::MakeLmEmbedder(model->get());
  auto single = rag::services::GrpcBackend::Connect(single_addr);
  auto front = rag::services::GrpcBackend::Connect(front_addr);
  if (!single.ok()) return Fail(single.status().ToString());
  if (!front.ok()) return Fail(front.status().ToString());
  std::vector<std::unique_ptr<rag::services::GrpcBackend>> shard_backends;
  std::vector<std::unique_ptr<rag::v1::Shard::Stub>> shards;
  for (const auto& a : shard_addrs) {
    auto b = rag::services::GrpcBackend::Connect(a);
    if (!b.ok()) return Fail(b.status().ToString());
    shards.push_back(rag::v1::Shard::NewStub((*b)->channel()));
    shard_backends.push_back(std::move(*b));
  }

  // Queries: seeded 200-byte windows of the corpus's documents (as bench_search).
  auto docs = rag::index_builder::ReadCorpus(corpus);
  if (!docs.ok() || docs->empty()) return Fail("cannot read --corpus " + corpus);
  std::mt19937_64 rng(7);
  std::vector<std::string> texts;
  while (static_cast<int>(texts.size()) < queries) {
    const auto& d = (*docs)[rng() % docs->size()];
    if (d.text.size() < 400) continue;
    texts.push_back(d.text.substr(rng() % (d.text.size() - 300), 200));
  }

  enum Arm { kSingle, kFront, kEmbed, kShards };
  std::vector<std::string> arm_names = {"single", "front", "embed"};
  for (size_t s = 0; s < shards.size(); ++s) arm_names.push_back("shard" + std::to_string(s) + "_search_vectors");
  std::vector<std::vector<double>> ms(arm_names.size());
  std::vector<std::vector<double>> round_ratio;  // per round: p50 front / p50 single
  int64_t differing = 0, reordered = 0, compared = 0;

  auto search = [&](rag::services::GrpcBackend* b, const std::string& text, rag::v1::SearchResponse* out) {
    rag::v1::SearchRequest r;
    r.add_texts(text);
    r.set_k(k);
    r.set_nprobe(nprobe);
    auto t0 = Clock::now();
    auto resp = b->Search(r);
    const double t = Ms(t0, Clock::now());
    if (!resp.ok()) throw std::runtime_error(resp.status().ToString());
    *out = std::move(*resp);
    return t;
  };
  try {
    // Warm-up: every arm a few times (connections, first-touch of the index).
    for (int w = 0; w < 5; ++w) {
      rag::v1::SearchResponse a;
      search(single->get(), texts[w % texts.size()], &a);
      search(front->get(), texts[w % texts.size()], &a);
    }
    for (int round = 0; round < rounds; ++round) {
      std::vector<double> single_ms, front_ms;
      for (const auto& text : texts) {
        rag::v1::SearchResponse a, b;
        double ts, tf;
        if (round % 2 == 0) {
          ts = search(single->get(), text, &a);
          tf = search(front->get(), text, &b);
        } else {
          tf = search(front->get(), text, &b);
          ts = search(single->get(), text, &a);
        }
        single_ms.push_back(ts);
        front_ms.push_back(tf);
        ms[kSingle].push_back(ts);
        ms[kFront].push_back(tf);
        ++compared;
        if (!SameAnswer(a, b, true)) ++differing;
        if (!SameAnswer(a, b, false)) ++reordered;

        // The front's parts: embed here, then each shard's vector search.
        std::vector<float> vec;
        const auto ids = (*model)->tokenizer().Encode(text);
        auto t0 = Clock::now();
        if (absl::Status st = embedder->Embed({ids}, &vec); !st.ok()) throw std::runtime_error(st.ToString());
        ms[kEmbed].push_back(Ms(t0, Clock::now()));
        rag::v1::SearchVectorsRequest vr;
        vr.mutable_vectors()->Add(vec.begin(), vec.end());
        vr.set_dim(static_cast<int32_t>(vec.size()));
        vr.set_k(k);
        vr.set_nprobe(nprobe);
        for (size_t s = 0; s < shards.size(); ++s) {
          grpc::ClientContext ctx;
          rag::v1::SearchResponse out;
          auto t1 = Clock::now();
          grpc::Status st = shards[s]->SearchVectors(&ctx, vr, &out);
          ms[kShards + s].push_back(Ms(t1, Clock::now()));
          if (!st.ok()) throw std::runtime_error("shard " + std::to_string(s) + ": " + st.error_message());
        }
      }
      round_ratio.push_back({Percentile(single_ms, 0.5), Percentile(front_ms, 0.5),
                             Percentile(front_ms, 0.5) / Percentile(single_ms, 0.5)});
      std::fprintf(stderr, "bench_front: round %d/%d: p50 single %.2f ms, front %.2f ms, ratio %.3f\n", round + 1,
                   rounds, round_ratio.back()[0], round_ratio.back()[1], round_ratio.back()[2]);
    }
  } catch (const std::exception& e) {
    return Fail(e.what());
  }

  std::printf("bench_front: %d queries x %d rounds, k %d, nprobe %d, %zu shards\n", queries, rounds, k, nprobe,
              shards.size());
  std::printf("%-28s %9s %9s %9s %9s\n", "arm", "p50 ms", "p99 ms", "mean ms", "calls");
  nlohmann::json out;
  for (size_t a = 0; a < arm_names.size(); ++a) {
    std::printf("%-28s %9.2f %9.2f %9.2f %9zu\n", arm_names[a].c_str(), Percentile(ms[a], 0.5), Percentile(ms[a], 0.99),
                Mean(ms[a]), ms[a].size());
    out["arms"][arm_names[a]] = {{"p50_ms", Percentile(ms[a], 0.5)},
                                 {"p99_ms", Percentile(ms[a], 0.99)},
                                 {"mean_ms", Mean(ms[a])},
                                 {"ms", ms[a]}};
  }
  const double ratio = Percentile(ms[kFront], 0.5) / Percentile(ms[kSingle], 0.5);
  std::printf(
      "p50 front / single: %.3f (target <= 1.2): %s; answers not bit-identical: %lld of %lld, with other "
      "neighbours or order: %lld\n",
      ratio, ratio <= 1.2 ? "met" : "missed", static_cast<long long>(differing), static_cast<long long>(compared),
      static_cast<long long>(reordered));
  out["config"] = {{"queries", queries}, {"rounds", rounds}, {"k", k},           {"nprobe", nprobe},
                   {"shards", shard_addrs}, {"single", single_addr}, {"front", front_addr}, {"threads", threads}};
  out["p50_ratio_front_over_single"] = ratio;
  out["rounds"] = round_ratio;
  out["answers_compared"] = compared;
  out["answers_differing"] = differing;  // any neighbour's doc, offset or distance bits
  out["answers_other_neighbours"] = reordered;  // doc or offset
  if (!json_path.empty()) {
    std::ofstream f(json_path);
    f << out.dump(1) << "\n";
    if (!f) return Fail("cannot write " + json_path);
  }
  return 0;
}

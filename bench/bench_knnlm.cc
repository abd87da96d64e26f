// kNN-LM against the plain LM, measured in one run (issue 4 targets):
//  (a) scoring speed: Engine::Score tokens/s in mode knnlm against mode lm,
//      same model, same validation texts, calls alternated text by text so
//      load drift hits both; one row per --nprobe (target: ratio >= 0.5 at
//      the served default, on an IVF-PQ datastore of >= 1M keys). The
//      perplexity of each row is printed too, so speed is never bought with
//      quality unnoticed;
//  (b) datastore build: BuildDatastore keys/s (hidden states, fp16 keys to
//      disk, checkpoints, then FAISS training and adding) against the raw
//      forward (lm::HiddenStates on the same documents, nothing written);
//      target: ratio >= 0.85. Best of --rounds alternated rounds each;
//  (c) memory per key: the datastore's bytes on disk per key, file by file,
//      and the resident memory Datastore::Open adds per key.
//
//   build/bench/bench_knnlm --model MODEL_DIR --index INDEX_DIR (built with --datastore)
//       [--corpus data/brown/brown.jsonl] [--docs 6] [--nprobe 4,8,16] [--k 1024] [--lambda 0.25]
//       [--build-docs 20 (0 = all training documents)] [--build-factory IVF256,PQ32] [--rounds 2]
//       [--parts ab (a: scoring, b: build)] [--threads N]
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "bench/proc_status.h"
#include "common/file_util.h"
#include "index_builder/corpus_reader.h"
#include "index_builder/datastore_builder.h"
#include "lm/data_split.h"
#include "lm/runtime.h"
#include "lm/scorer.h"
#include "retriever/datastore.h"
#include "retriever/manifest.h"
#include "services/engine.h"

namespace {

namespace fs = std::filesystem;

double Seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::vector<int> ParseInts(const std::string& csv) {
  std::vector<int> out;
  size_t start = 0;
  while (start <= csv.size()) {
    const size_t comma = std::min(csv.find(',', start), csv.size());
    if (comma > start) out.push_back(std::stoi(csv.substr(start, comma - start)));
    start = comma + 1;
  }
  return out;
}

int Fail(const std::string& what) {
  std::fprintf(stderr, "bench_knnlm: %s\n", what.c_str());
  return 1;
}

struct Row {
  std::string label;
  rag::v1::ScoreRequest request;
  double seconds = 0, logprob = 0;
  int64_t tokens = 0;
};

}  // namespace

int main(int argc, char** argv) {
  std::string model_dir, index_dir, corpus = "data/brown/brown.jsonl", nprobes = "4,8,16";
  std::string build_factory = "IVF256,PQ32";
  int docs = 6, k = 1024, build_docs = 20, rounds = 2;
  std::string parts = "ab";
  float lambda = 0.25f;
  int threads = rag::lm::kDefaultThreads;
  CLI::App app{"bench_knnlm: kNN-LM against the plain LM (scoring speed, datastore build, memory per key)"};
  app.add_option("--model", model_dir, "model directory")->required();
  app.add_option("--index", index_dir, "index directory, built with --datastore")->required();
  app.add_option("--corpus", corpus, "corpus of the model's validation documents")->capture_default_str();
  app.add_option("--docs", docs, "validation documents scored in part (a)")->capture_default_str();
  app.add_option("--nprobe", nprobes, "comma-separated nprobe values, one row each in part (a)")
      ->capture_default_str();
  app.add_option("--k", k, "kNN-LM neighbours per token")->capture_default_str();
  app.add_option("--lambda", lambda, "kNN-LM interpolation weight")->capture_default_str();
  app.add_option("--build-docs", build_docs, "training documents of part (b)'s datastore (0: all)")
      ->capture_default_str();
  app.add_option("--build-factory", build_factory, "FAISS factory string of part (b)'s datastore")
      ->capture_default_str();
  app.add_option("--rounds", rounds, "alternated rounds of part (b) (the best counts)")->capture_default_str();
  app.add_option("--parts", parts, "parts to run (a: scoring, b: build)")->capture_default_str();
  app.add_option("--threads", threads, "LibTorch intra-op threads")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  rag::lm::ConfigureRuntime(threads);

  // (c, first half) Resident memory of the datastore alone, before anything
  // else is loaded that could blur the difference.
  const std::string datastore_dir = (fs::path(index_dir) / rag::retriever::kDatastoreDir).string();
  double anon_per_key = 0, file_per_key = 0, disk_per_key = 0;
  int64_t keys = 0;
  std::string factory;
  {
    const double anon = rag::bench::ProcStatusBytes("RssAnon:"), file = rag::bench::ProcStatusBytes("RssFile:");
    auto ds = rag::retriever::Datastore::Open(datastore_dir);
    if (!ds.ok()) return Fail(ds.status().ToString());
    keys = (*ds)->size();
    factory = (*ds)->factory();
    const double per = 1.0 / static_cast<double>(std::max<int64_t>(1, keys));
    anon_per_key = (rag::bench::ProcStatusBytes("RssAnon:") - anon) * per;
    file_per_key = (rag::bench::ProcStatusBytes("RssFile:") - file) * per;
    disk_per_key = (*ds)->bytes_per_key();
  }

  rag::services::EngineOptions eo;
  eo.model_dir = model_dir;
  eo.index_dir = index_dir;
  auto engine = rag::services::Engine::Open(eo);
  if (!engine.ok()) return Fail(engine.status().ToString());
  auto& model = (*engine)->model();

  auto all = rag::index_builder::ReadCorpus(corpus);
  if (!all.ok()) return Fail(all.status().ToString());
  auto split = rag::ReadFile((fs::path(model_dir) / rag::lm::kSplitFile).string());
  if (!split.ok()) return Fail("the model has no split file: " + split.status().ToString());
  auto validation = rag::lm::SelectSplit(*all, *split, "validation");
  auto train = rag::lm::SelectSplit(*all, *split, "train");
  if (!validation.ok() || !train.ok()) return Fail("cannot split the corpus by the model's split");
  if (validation->empty() || train->empty()) return Fail("the model's split has no validation or no train documents");
  validation->resize(std::min<size_t>(validation->size(), static_cast<size_t>(docs)));

  std::printf("bench_knnlm: model %s, datastore %s: %lld keys, %s; %d threads, %u cores\n", model_dir.c_str(),
              datastore_dir.c_str(), static_cast<long long>(keys), factory.c_str(), threads,
              std::thread::hardware_concurrency());

  // (a) Scoring speed.
  std::vector<Row> rows;
  double lm_rate = 0;
  if (parts.find('a') != std::string::npos) {
    Row lm;
    lm.label = "lm";
    lm.request.set_mode("lm");
    rows.push_back(lm);
    for (int np : ParseInts(nprobes)) {
      Row r;
      r.label = "knnlm nprobe " + std::to_string(np);
      r.request.set_mode("knnlm");
      r.request.mutable_knn()->set_nprobe(np);
      r.request.mutable_knn()->set_k(k);
      r.request.mutable_knn()->set_lambda(lambda);
      rows.push_back(r);
    }
    Row exact = rows.size() > 1 ? rows[1] : rows[0];
    if (rows.size() > 1) {
      exact.label += " exact";
      exact.request.mutable_knn()->set_exact_distances(true);
      rows.push_back(exact);
    }
  }
  // Warm-up: one short call per row (page in the model and the index lists).
  for (auto& r : rows) {
    rag::v1::ScoreRequest req = r.request;
    req.set_text((*validation)[0].text.substr(0, 2000));
    auto s = (*engine)->Score(req);
    if (!s.ok()) return Fail(r.label + ": " + s.status().ToString());
  }
  for (const auto& doc : *validation) {
    for (auto& r : rows) {
      rag::v1::ScoreRequest req = r.request;
      req.set_text(doc.text);
      const auto t0 = std::chrono::steady_clock::now();
      auto s = (*engine)->Score(req);
      r.seconds += Seconds(t0);
      if (!s.ok()) return Fail(r.label + ": " + s.status().ToString());
      r.tokens += s->tokens();
      r.logprob += s->logprob_sum();
    }
  }
  if (!rows.empty()) {
    lm_rate = static_cast<double>(rows[0].tokens) / rows[0].seconds;
    std::printf("\n(a) scoring %zu validation documents, %lld tokens; k %d, lambda %.2f, T 1\n", validation->size(),
                static_cast<long long>(rows[0].tokens), k, lambda);
    std::printf("%-26s %12s %10s %12s\n", "mode", "tokens/s", "vs lm", "perplexity");
    for (const auto& r : rows) {
      const double rate = static_cast<double>(r.tokens) / r.seconds;
      std::printf("%-26s %12.1f %10.3f %12.2f\n", r.label.c_str(), rate, rate / lm_rate,
                  std::exp(-r.logprob / static_cast<double>(r.tokens)));
    }
  }

  // (b) Datastore build against the raw forward, on the first training
  // documents (--build-docs 0: all of them).
  const bool run_b = parts.find('b') != std::string::npos;
  if (!run_b) rounds = 0;
  if (build_docs > 0) train->resize(std::min<size_t>(train->size(), static_cast<size_t>(build_docs)));
  std::vector<std::vector<rag::lm::TokenId>> tokens;
  int64_t build_keys = 0;
  for (const auto& d : *train) {
    tokens.push_back(model.tokenizer().Encode(d.text));
    build_keys += static_cast<int64_t>(tokens.back().size());
  }
  std::vector<size_t> selected(train->size());
  std::vector<int32_t> doc_index(train->size());
  for (size_t i = 0; i < selected.size(); ++i) {
    selected[i] = i;
    doc_index[i] = static_cast<int32_t>(i);
  }
  const fs::path scratch = fs::temp_directory_path() / ("bench_knnlm." + std::to_string(::getpid()));
  double best_raw = 1e30, best_build = 1e30, best_keys_stage = 1e30, index_seconds = 0;
  model.module()->eval();
  for (int round = 0; round < rounds; ++round) {
    {
      torch::NoGradGuard no_grad;
      const auto t0 = std::chrono::steady_clock::now();
      double checksum = 0;
      for (const auto& t : tokens) {
        torch::Tensor h = rag::lm::HiddenStates(model.module(), t, model.tokenizer().eot_id());
        checksum += h.to(torch::kFloat32).contiguous().select(0, 0).sum().item<double>();
      }
      best_raw = std::min(best_raw, Seconds(t0));
      if (!std::isfinite(checksum)) return Fail("raw forward gave non-finite hidden states");
    }
    {
      fs::remove_all(scratch);
      rag::index_builder::DatastoreBuildOptions bo;
      bo.dir = scratch.string();
      bo.index_factory = build_factory;
      bo.show_progress = false;
      const auto t0 = std::chrono::steady_clock::now();
      auto info = rag::index_builder::BuildDatastore(*train, selected, doc_index, model, bo);
      const double s = Seconds(t0);
      if (!info.ok()) return Fail(info.status().ToString());
      if (info->rows != build_keys) return Fail("the builder wrote a different number of keys");
      if (s < best_build) {
        best_build = s;
        index_seconds = info->index_seconds;
        best_keys_stage = s - info->index_seconds;
      }
    }
  }
  std::error_code ignored;
  fs::remove_all(scratch, ignored);
  if (run_b) {
    const double raw_rate = static_cast<double>(build_keys) / best_raw;
    const double build_rate = static_cast<double>(build_keys) / best_build;
    const double stage_rate = static_cast<double>(build_keys) / best_keys_stage;
    std::printf("\n(b) datastore build over %zu training documents, %lld keys, factory %s, best of %d rounds\n",
                train->size(), static_cast<long long>(build_keys), build_factory.c_str(), rounds);
    std::printf("%-40s %12s %10s\n", "path", "keys/s", "vs raw");
    std::printf("%-40s %12.1f %10.3f\n", "raw forward (lm::HiddenStates)", raw_rate, 1.0);
    std::printf("%-40s %12.1f %10.3f\n", "builder, until the keys are on disk", stage_rate, stage_rate / raw_rate);
    // FAISS trains and adds in a background thread while the keys are
    // computed; index_seconds is what is left of it after the last key.
    std::printf("%-40s %12.1f %10.3f   (FAISS after the last key: %.1f s)\n", "builder, whole (keys + FAISS)",
                build_rate, build_rate / raw_rate, index_seconds);
  }

  // (c) Memory per key.
  std::printf(
      "\n(c) memory per key: %.1f bytes on disk (fp16 key %d + value 4 + doc 4 + index); "
      "Datastore::Open adds %.1f bytes of heap (the FAISS index) and %.1f bytes of mapped file "
      "pages (its checksum pass reads every file; the kernel may reclaim them)\n",
      disk_per_key, 2 * static_cast<int>(model.config().d_model), anon_per_key, file_per_key);

  double knn_ratio = 0, build_ratio = 0;
  for (const auto& r : rows) {
    if (r.request.mode() == "knnlm" && !r.request.knn().exact_distances() &&
        r.request.knn().nprobe() == rag::services::kDefaultKnnNprobe) {
      knn_ratio = static_cast<double>(r.tokens) / r.seconds / lm_rate;
    }
  }
  if (run_b) build_ratio = static_cast<double>(build_keys) / best_build / (static_cast<double>(build_keys) / best_raw);
  bool pass = true;
  if (!rows.empty()) {
    const bool ok = knn_ratio >= 0.5 && keys >= 1000000;
    std::printf("\nknnlm/lm tokens/s at the default nprobe %d: %.3f (target >= 0.5, datastore >= 1M keys: %s): %s\n",
                rag::services::kDefaultKnnNprobe, knn_ratio, keys >= 1000000 ? "yes" : "NO", ok ? "PASS" : "FAIL");
    pass = pass && ok;
  }
  if (run_b) {
    std::printf("datastore build/raw forward keys/s: %.3f (target >= 0.85): %s\n", build_ratio,
                build_ratio >= 0.85 ? "PASS" : "FAIL");
    pass = pass && build_ratio >= 0.85;
  }
  return pass ? 0 : 1;
}

// kNN-LM against the plain LM, measured in one run (issue 24 targets):
//  (a) scoring speed and the speed/perplexity trade-off: tokens/s of
//      Backend::Score in mode knnlm against mode lm, same model, same
//      documents, every arm called on each document in turn (the order
//      rotated every round) so load drift hits all arms; --rounds rounds,
//      the ratio to lm taken within each round, median over rounds. Arms:
//      the served defaults (a request that sets no kNN option) in-process
//      and over gRPC (a Server on 127.0.0.1 in this process, answered by the
//      same Engine; its lm arm is the gRPC lm), and one in-process arm per
//      (--nprobe, --k) pair for the curve. The perplexity of every arm is
//      set against the reference: the same datastore searched with nprobe
//      --ref-nprobe and exact re-ranked distances (run once, untimed).
//      Target: >= 0.8 of lm at <= 1% perplexity above the reference, in
//      process and over gRPC, on a datastore of >= 1M keys. Choose settings
//      on one set of documents (--docs-offset) and report on another;
//  (b) datastore build: BuildDatastore keys/s (hidden states, fp16 keys to
//      disk, checkpoints, then FAISS training and adding) against the raw
//      forward (lm::HiddenStates on the same documents, nothing written);
//      target: ratio >= 0.85. Median of --rounds alternated rounds;
//  (c) memory per key: the datastore's bytes on disk per key, file by file,
//      and the resident memory Datastore::Open adds per key.
// Every figure, each round's raw numbers included, goes to --out as JSON.
//
//   build/bench/bench_knnlm --model MODEL_DIR --index INDEX_DIR (built with --datastore)
//       [--corpus data/brown/brown.jsonl] [--docs 6] [--docs-offset 0] [--nprobe 1,2,4,8,16] [--k 1024]
//       [--ref-nprobe 64] [--lambda 0.25] [--build-docs 20 (0 = all training documents)]
//       [--build-factory IVF256,PQ32] [--rounds 5] [--parts ab (a: scoring, b: build)] [--threads N]
//       [--out bench/results/knnlm.json]
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

#include "absl/strings/str_split.h"
#include "bench/bench_report.h"
#include "bench/proc_status.h"
#include "common/file_util.h"
#include "index_builder/corpus_reader.h"
#include "index_builder/datastore_builder.h"
#include "lm/data_split.h"
#include "lm/knnlm.h"
#include "lm/runtime.h"
#include "lm/scorer.h"
#include "retriever/datastore.h"
#include "retriever/manifest.h"
#include "services/client.h"
#include "services/engine.h"
#include "services/request_parsing.h"
#include "services/server.h"

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

double Seconds(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}


// The non-empty fields of a comma-separated list.
std::vector<std::string> Split(const std::string& csv) { return absl::StrSplit(csv, ',', absl::SkipEmpty()); }

std::vector<int> ParseInts(const std::string& csv) {
  std::vector<int> out;
  for (const std::string& s : Split(csv)) out.push_back(std::stoi(s));
  return out;
}

int Fail(const std::string& what) {
  std::fprintf(stderr, "bench_knnlm: %s\n", what.c_str());
  return 1;
}

// One arm of part (a): a request sent through a backend (the Engine itself,
// or the gRPC client of a server on it), and what each round measured.
struct Arm {
  std::string label;
  std::string path;  // "in-process" or "grpc"
  rag::services::Backend* backend = nullptr;
  rag::v1::ScoreRequest request;
  int lm_arm = 0;  // index of the lm arm on the same path
  std::vector<double> seconds, ratio;
  double logprob = 0;  // of the first round (every round scores the same)
  int64_t tokens = 0, retrievals = 0;
  double Perplexity() const { return std::exp(-logprob / static_cast<double>(std::max<int64_t>(1, tokens))); }
};

}  // namespace

int main(int argc, char** argv) {
  rag::lm::RestartWithPassiveOpenMP(argv);  // as `rag` runs
  std::string model_dir, index_dir, corpus = "data/brown/brown.jsonl", nprobes = "1,2,4,8,16", ks = "1024";
  std::string min_entropies = "0", min_pointers = "0";
  bool curve_grpc = false;
  std::string build_factory = "IVF256,PQ32", out_path;
  int docs = 6, docs_offset = 0, ref_nprobe = 64, build_docs = 20, rounds = 5;
  std::string parts = "ab";
  float lambda = static_cast<float>(rag::lm::kDefaultKnnLambda);
  int threads = 0;
  CLI::App app{"bench_knnlm: kNN-LM against the plain LM (scoring speed, datastore build, memory per key)"};
  app.add_option("--model", model_dir, "model directory")->required();
  app.add_option("--index", index_dir, "index directory, built with --datastore")->required();
  app.add_option("--corpus", corpus, "corpus of the model's validation documents")->capture_default_str();
  app.add_option("--docs", docs, "validation documents scored in part (a)")->capture_default_str();
  app.add_option("--docs-offset", docs_offset, "validation documents skipped before them (tune on one set, report on another)")
      ->capture_default_str();
  app.add_option("--nprobe", nprobes, "comma-separated nprobe values of the trade-off curve")->capture_default_str();
  app.add_option("--k", ks, "comma-separated k values of the trade-off curve")->capture_default_str();
  app.add_option("--min-entropy", min_entropies,
                 "comma-separated adaptive-retrieval thresholds (nats) of the trade-off curve")
      ->capture_default_str();
  app.add_option("--min-pointers", min_pointers,
                 "comma-separated RetoMaton thresholds of the trade-off curve (0: search every position); "
                 "not combined with --min-entropy values > 0")
      ->capture_default_str();
  app.add_flag("--curve-grpc", curve_grpc, "also run every arm of the trade-off curve over gRPC");
  app.add_option("--ref-nprobe", ref_nprobe,
                 "nprobe of the reference search (exact distances); 0 skips it (no perplexity vs reference)")
      ->capture_default_str();
  app.add_option("--lambda", lambda, "kNN-LM interpolation weight of the curve's arms")->capture_default_str();
  app.add_option("--build-docs", build_docs, "training documents of part (b)'s datastore (0: all)")
      ->capture_default_str();
  app.add_option("--build-factory", build_factory, "FAISS factory string of part (b)'s datastore")
      ->capture_default_str();
  app.add_option("--rounds", rounds, "alternated rounds of each part (medians over them)")->capture_default_str();
  app.add_option("--parts", parts, "parts to run (a: scoring, b: build)")->capture_default_str();
  app.add_option("--threads", threads, "LibTorch intra-op threads (0: lm::DefaultThreads(), by BLAS build)")
      ->capture_default_str();
  app.add_option("--out", out_path, "JSON file for every figure and each round's raw numbers");
  CLI11_PARSE(app, argc, argv);
  if (rounds < 1) return Fail("--rounds must be >= 1");
  rag::lm::ConfigureRuntime(threads);
  json report = {{"bench", "bench_knnlm"},
                 {"machine", rag::bench::MachineJson()},
                 {"threads", torch::get_num_threads()},
                 {"rounds", rounds}};

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
  if (docs_offset < 0 || static_cast<size_t>(docs_offset) >= validation->size()) {
    return Fail("--docs-offset " + std::to_string(docs_offset) + " leaves no validation document (there are " +
                std::to_string(validation->size()) + ")");
  }
  validation->erase(validation->begin(), validation->begin() + docs_offset);
  validation->resize(std::min<size_t>(validation->size(), static_cast<size_t>(docs)));
  json doc_ids = json::array();
  for (const auto& d : *validation) doc_ids.push_back(d.id);

  std::printf("bench_knnlm: model %s, datastore %s: %lld keys, %s; %d threads, %u cores\n", model_dir.c_str(),
              datastore_dir.c_str(), static_cast<long long>(keys), factory.c_str(), threads,
              std::thread::hardware_concurrency());
  report["inputs"] = {{"model", model_dir},       {"index", index_dir},       {"corpus", corpus},
                      {"keys", keys},             {"factory", factory},       {"validation_docs", doc_ids},
                      {"docs_offset", docs_offset}, {"lambda_curve", lambda}, {"ref_nprobe", ref_nprobe}};

  // (a) Scoring speed and the trade-off curve.
  bool pass = true;
  if (parts.find('a') != std::string::npos) {
    rag::services::ServerOptions so;
    so.listen = "127.0.0.1:0";
    auto server = rag::services::Server::Start(engine->get(), so);
    if (!server.ok()) return Fail(server.status().ToString());
    auto client = rag::services::GrpcBackend::Connect("127.0.0.1:" + std::to_string((*server)->port()));
    if (!client.ok()) return Fail(client.status().ToString());

    std::vector<Arm> arms;
    auto add = [&](const std::string& label, const std::string& path, rag::services::Backend* b,
                   const rag::v1::ScoreRequest& r, int lm_arm) {
      Arm a;
      a.label = label;
      a.path = path;
      a.backend = b;
      a.request = r;
      a.lm_arm = lm_arm;
      arms.push_back(a);
    };
    rag::v1::ScoreRequest lm_req, default_req;
    lm_req.set_mode("lm");
    default_req.set_mode("knnlm");  // no kNN option set: the served defaults
    add("lm", "in-process", engine->get(), lm_req, 0);
    add("knnlm served defaults", "in-process", engine->get(), default_req, 0);
    add("lm", "grpc", client->get(), lm_req, 2);
    add("knnlm served defaults", "grpc", client->get(), default_req, 2);
    for (const std::string& me : Split(min_entropies)) {
      for (int mp : ParseInts(min_pointers)) {
        if (mp > 0 && std::stof(me) > 0) continue;  // the server refuses the two together
        for (int k : ParseInts(ks)) {
          for (int np : ParseInts(nprobes)) {
            rag::v1::ScoreRequest r;
            r.set_mode("knnlm");
            r.mutable_knn()->set_nprobe(np);
            r.mutable_knn()->set_k(k);
            r.mutable_knn()->set_lambda(lambda);
            r.mutable_knn()->set_min_lm_entropy(std::stof(me));
            r.mutable_knn()->set_min_pointers(mp);
            const std::string label = "knnlm nprobe " + std::to_string(np) + " k " + std::to_string(k) + " H>=" + me +
                                      (mp > 0 ? " P>=" + std::to_string(mp) : "");
            add(label, "in-process", engine->get(), r, 0);
            if (curve_grpc) add(label, "grpc", client->get(), r, 2);
          }
        }
      }
    }
    Arm ref;
    ref.label = "reference: nprobe " + std::to_string(ref_nprobe) + ", exact distances";
    ref.request.set_mode("knnlm");
    ref.request.mutable_knn()->set_nprobe(ref_nprobe);
    ref.request.mutable_knn()->set_exact_distances(true);
    ref.request.mutable_knn()->set_lambda(lambda);
    ref.request.mutable_knn()->set_min_lm_entropy(0);  // every position searched
    ref.request.mutable_knn()->set_min_pointers(0);
    rag::v1::ScoreRequest ref_default = ref.request;  // the reference of the served defaults' lambda
    ref_default.mutable_knn()->set_lambda(rag::lm::kDefaultKnnLambda);

    // The references, once (untimed): exhaustive enough to be the quality
    // bar, far too slow to serve.
    double ref_logprob = 0, ref_default_logprob = 0;
    int64_t ref_tokens = 0;
    const size_t ref_docs = ref_nprobe > 0 ? validation->size() : 0;
    for (size_t d = 0; d < ref_docs; ++d) {
      const auto& doc = (*validation)[d];
      const bool same_lambda = ref_default.knn().lambda() == ref.request.knn().lambda();
      for (auto* r : {&ref.request, &ref_default}) {
        if (r == &ref_default && same_lambda) {
          ref_default_logprob = ref_logprob;
          continue;
        }
        rag::v1::ScoreRequest req = *r;
        req.set_text(doc.text);
        auto s = (*engine)->Score(req);
        if (!s.ok()) return Fail(ref.label + ": " + s.status().ToString());
        (r == &ref.request ? ref_logprob : ref_default_logprob) += s->logprob_sum();
        if (r == &ref.request) ref_tokens += s->tokens();
      }
    }
    const bool has_ref = ref_tokens > 0;
    const double ref_ppl = has_ref ? std::exp(-ref_logprob / static_cast<double>(ref_tokens)) : std::nan("");
    const double ref_default_ppl =
        has_ref ? std::exp(-ref_default_logprob / static_cast<double>(ref_tokens)) : std::nan("");

    // Warm-up: one short call per arm (page in the model and the index lists).
    for (auto& a : arms) {
      rag::v1::ScoreRequest req = a.request;
      req.set_text((*validation)[0].text.substr(0, 2000));
      auto s = a.backend->Score(req);
      if (!s.ok()) return Fail(a.label + " (" + a.path + "): " + s.status().ToString());
    }
    for (int round = 0; round < rounds; ++round) {
      std::vector<double> seconds(arms.size(), 0.0);
      for (const auto& doc : *validation) {
        for (size_t step = 0; step < arms.size(); ++step) {
          const size_t i = (step + static_cast<size_t>(round)) % arms.size();
          Arm& a = arms[i];
          rag::v1::ScoreRequest req = a.request;
          req.set_text(doc.text);
          const auto t0 = std::chrono::steady_clock::now();
          auto s = a.backend->Score(req);
          seconds[i] += Seconds(t0);
          if (!s.ok()) return Fail(a.label + " (" + a.path + "): " + s.status().ToString());
          if (round == 0) {
            a.tokens += s->tokens();
            a.logprob += s->logprob_sum();
            a.retrievals += s->retrievals();
          }
        }
      }
      for (size_t i = 0; i < arms.size(); ++i) arms[i].seconds.push_back(seconds[i]);
      for (auto& a : arms) a.ratio.push_back(arms[static_cast<size_t>(a.lm_arm)].seconds.back() / a.seconds.back());
      std::fprintf(stderr, "bench_knnlm: (a) round %d of %d done\n", round + 1, rounds);
    }
    (*server)->Shutdown(1.0);

    std::printf("\n(a) scoring %zu validation documents (from #%d), %lld tokens; lambda %.2f (served: %.2f), "
                "median of %d rounds\n",
                validation->size(), docs_offset, static_cast<long long>(arms[0].tokens), lambda,
                rag::lm::kDefaultKnnLambda, rounds);
    std::printf("reference (%s): perplexity %.3f at lambda %.2f, %.3f at the served lambda\n", ref.label.c_str(),
                ref_ppl, lambda, ref_default_ppl);
    std::printf("%-36s %-11s %10s %8s %15s %9s %11s %9s\n", "arm", "path", "tokens/s", "vs lm", "(min .. max)",
                "searched", "perplexity", "vs ref");
    json arms_json = json::array();
    for (const auto& a : arms) {
      const bool is_lm = a.request.mode() == "lm";
      const bool served = a.request.mode() == "knnlm" && !a.request.has_knn();
      const double ppl = a.Perplexity();
      const double ppl_vs_ref = is_lm ? 0.0 : ppl / (served ? ref_default_ppl : ref_ppl) - 1.0;
      std::vector<double> rates;
      for (double s : a.seconds) rates.push_back(static_cast<double>(a.tokens) / s);
      const json ratio = rag::bench::RoundsJson(a.ratio);
      const double searched = static_cast<double>(a.retrievals) / static_cast<double>(std::max<int64_t>(1, a.tokens));
      std::printf("%-36s %-11s %10.1f %8.3f  (%.3f .. %.3f) %8.1f%% %11.3f %+8.2f%%\n", a.label.c_str(),
                  a.path.c_str(), rag::bench::Median(rates), ratio["median"].get<double>(), ratio["min"].get<double>(),
                  ratio["max"].get<double>(), 100 * searched, ppl, 100 * ppl_vs_ref);
      json aj = {{"label", a.label},
                 {"path", a.path},
                 {"request_knn", a.request.has_knn() ? json{{"nprobe", a.request.knn().nprobe()},
                                                            {"k", a.request.knn().k()},
                                                            {"lambda", a.request.knn().lambda()},
                                                            {"min_lm_entropy", a.request.knn().min_lm_entropy()},
                                                            {"min_pointers", a.request.knn().min_pointers()}}
                                                     : json(nullptr)},
                 {"tokens", a.tokens},
                 {"searched_fraction", is_lm ? json(nullptr) : json(searched)},
                 {"seconds", rag::bench::RoundsJson(a.seconds)},
                 {"tokens_per_s", rag::bench::RoundsJson(rates)},
                 {"ratio_to_lm", ratio},
                 {"perplexity", ppl},
                 {"perplexity_over_reference", is_lm || !has_ref ? json(nullptr) : json(ppl_vs_ref)}};
      arms_json.push_back(aj);
      if (served) {
        const bool ok = ratio["median"].get<double>() >= 0.8 && ppl_vs_ref <= 0.01 && keys >= 1000000;
        std::printf("  -> served defaults, %s: %.3f of lm (target >= 0.8), perplexity %+.2f%% of the reference "
                    "(target <= +1%%), datastore >= 1M keys: %s: %s\n",
                    a.path.c_str(), ratio["median"].get<double>(), 100 * ppl_vs_ref, keys >= 1000000 ? "yes" : "NO",
                    ok ? "PASS" : "FAIL");
        pass = pass && ok;
      }
    }
    report["scoring"] = {
        {"tokens", arms[0].tokens},
        {"served_defaults",
         {{"k", rag::lm::kDefaultKnnK},
          {"nprobe", rag::services::kDefaultKnnNprobe},
          {"lambda", rag::lm::kDefaultKnnLambda},
          {"min_lm_entropy", rag::lm::kDefaultKnnMinEntropy},
          {"min_pointers", rag::lm::kDefaultKnnMinPointers}}},
        {"reference",
         has_ref ? json{{"label", ref.label}, {"perplexity", ref_ppl}, {"perplexity_served_lambda", ref_default_ppl}}
                 : json(nullptr)},
        {"arms", arms_json}};
  }

  // (b) Datastore build against the raw forward, on the first training
  // documents (--build-docs 0: all of them).
  const bool run_b = parts.find('b') != std::string::npos;
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
  std::vector<double> raw_s, build_s, faiss_after_s, ratios;
  model.module()->eval();
  for (int round = 0; run_b && round < rounds; ++round) {
    // The two arms alternate their order every round.
    for (int step = 0; step < 2; ++step) {
      if ((step + round) % 2 == 0) {
        torch::NoGradGuard no_grad;
        const auto t0 = std::chrono::steady_clock::now();
        double checksum = 0;
        for (const auto& t : tokens) {
          torch::Tensor h = rag::lm::HiddenStates(model.module(), t, model.tokenizer().eot_id());
          checksum += h.to(torch::kFloat32).contiguous().select(0, 0).sum().item<double>();
        }
        raw_s.push_back(Seconds(t0));
        if (!std::isfinite(checksum)) return Fail("raw forward gave non-finite hidden states");
      } else {
        fs::remove_all(scratch);
        rag::index_builder::DatastoreBuildOptions bo;
        bo.dir = scratch.string();
        bo.index_factory = build_factory;
        bo.show_progress = false;
        const auto t0 = std::chrono::steady_clock::now();
        auto info = rag::index_builder::BuildDatastore(*train, selected, doc_index, model, bo);
        build_s.push_back(Seconds(t0));
        if (!info.ok()) return Fail(info.status().ToString());
        if (info->rows != build_keys) return Fail("the builder wrote a different number of keys");
        faiss_after_s.push_back(info->index_seconds);
      }
    }
    ratios.push_back(raw_s.back() / build_s.back());
  }
  std::error_code ignored;
  fs::remove_all(scratch, ignored);
  if (run_b) {
    const double ratio = rag::bench::Median(ratios);
    std::printf("\n(b) datastore build over %zu training documents, %lld keys, factory %s, median of %d rounds\n",
                train->size(), static_cast<long long>(build_keys), build_factory.c_str(), rounds);
    std::printf("%-40s %12s %10s\n", "path", "keys/s", "vs raw");
    std::printf("%-40s %12.1f %10.3f\n", "raw forward (lm::HiddenStates)",
                static_cast<double>(build_keys) / rag::bench::Median(raw_s), 1.0);
    // FAISS trains and adds in a background thread while the keys are
    // computed; index_seconds is what is left of it after the last key.
    std::printf("%-40s %12.1f %10.3f   (FAISS after the last key: %.1f s)\n", "builder, whole (keys + FAISS)",
                static_cast<double>(build_keys) / rag::bench::Median(build_s), ratio,
                rag::bench::Median(faiss_after_s));
    const bool ok = ratio >= 0.85;
    std::printf("datastore build/raw forward keys/s: %.3f (target >= 0.85): %s\n", ratio, ok ? "PASS" : "FAIL");
    pass = pass && ok;
    report["build"] = {{"train_docs", train->size()},
                       {"keys", build_keys},
                       {"factory", build_factory},
                       {"raw_forward_s", rag::bench::RoundsJson(raw_s)},
                       {"build_s", rag::bench::RoundsJson(build_s)},
                       {"faiss_after_last_key_s", rag::bench::RoundsJson(faiss_after_s)},
                       {"ratio_build_over_raw", rag::bench::RoundsJson(ratios)}};
  }

  // (c) Memory per key.
  std::printf(
      "\n(c) memory per key: %.1f bytes on disk (fp16 key %d + value 4 + doc 4 + index); "
      "Datastore::Open adds %.1f bytes of heap (the FAISS index) and %.1f bytes of mapped file "
      "pages (its checksum pass reads every file; the kernel may reclaim them)\n",
      disk_per_key, 2 * static_cast<int>(model.config().d_model), anon_per_key, file_per_key);
  report["memory_per_key"] = {{"disk_bytes", disk_per_key},
                              {"open_heap_bytes", anon_per_key},
                              {"open_mapped_bytes", file_per_key}};
  report["pass"] = pass;
  if (!out_path.empty()) {
    if (!rag::bench::WriteJson(out_path, report)) return Fail("cannot write " + out_path);
    std::printf("\nJSON: %s\n", out_path.c_str());
  }
  return pass ? 0 : 1;
}

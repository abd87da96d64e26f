// rag_load: drives a running `rag serve` with N concurrent clients over
// loopback for a bounded time, mixing Search, Score, NextToken and streaming
// Generate, and prints per-rpc QPS and p50/p99/p999 latency, the error count
// and the server's resident memory at the start and the end.
//
//   rag_load --server 127.0.0.1:50051 [--server-pid PID (0: no RSS)] [--clients 32]
//            [--seconds 60] [--mix search=4,score=2,next=2,generate=1]
//            [--corpus JSONL (default: built-in sentences)] [--mode lm|knnlm]
//            [--generate-tokens 16] [--auth-token-file F] [--json FILE]
//
// Each client has its own channel (its own connection), as separate
// processes would. Texts are seeded windows of the corpus (or built-in
// sentences). Exits 1 when any call failed, so scripts can assert on it.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "common/file_util.h"
#include "index_builder/corpus_reader.h"
#include "services/client.h"

namespace {

using Clock = std::chrono::steady_clock;

enum Rpc { kSearch, kScore, kNext, kGenerate, kRpcs };
const char* const kRpcNames[kRpcs] = {"search", "score", "next", "generate"};

struct Options {
  std::string server, auth_token_file, corpus, json_path, mode = "lm", mix = "search=4,score=2,next=2,generate=1";
  int server_pid = 0, clients = 32, generate_tokens = 16;
  double seconds = 60;
};

// VmRSS of `pid` in bytes; 0 when unknown.
int64_t ResidentBytes(int pid) {
  if (pid <= 0) return 0;
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  }
  return 0;
}

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(q * static_cast<double>(v.size())));
  return v[i];
}

// Per client: latencies (ms) by rpc, errors, the first error message.
struct ClientResult {
  std::vector<double> ms[kRpcs];
  int64_t errors[kRpcs] = {};
  std::string first_error;
};

bool ParseMix(const std::string& mix, std::vector<int>* weights) {
  weights->assign(kRpcs, 0);
  size_t at = 0;
  while (at < mix.size()) {
    const size_t end = std::min(mix.find(',', at), mix.size());
    const std::string item = mix.substr(at, end - at);
    const size_t eq = item.find('=');
    if (eq == std::string::npos) return false;
    const std::string name = item.substr(0, eq);
    const auto* it = std::find(kRpcNames, kRpcNames + kRpcs, name);
    if (it == kRpcNames + kRpcs) return false;
    try {
      (*weights)[static_cast<size_t>(it - kRpcNames)] = std::stoi(item.substr(eq + 1));
    } catch (...) {
      return false;
    }
    at = end + 1;
  }
  int total = 0;
  for (int w : *weights) {
    if (w < 0) return false;
    total += w;
  }
  return total > 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"rag_load: N concurrent clients against a running `rag serve`"};
  app.add_option("--server", o.server, "HOST:PORT of the server")->required();
  app.add_option("--server-pid", o.server_pid, "the server's pid, for its resident memory (0: not measured)");
  app.add_option("--clients", o.clients, "concurrent clients, one connection each")->capture_default_str();
  app.add_option("--seconds", o.seconds, "how long to run")->capture_default_str();
  app.add_option("--mix", o.mix, "weights of the rpcs")->capture_default_str();
  app.add_option("--corpus", o.corpus, "corpus the texts are cut from (default: built-in sentences)");
  app.add_option("--mode", o.mode, "mode of Score, NextToken and Generate (lm, knnlm)")->capture_default_str();
  app.add_option("--generate-tokens", o.generate_tokens, "tokens per Generate call")->capture_default_str();
  app.add_option("--auth-token-file", o.auth_token_file, "file holding the server's bearer token");
  app.add_option("--json", o.json_path, "also write the results as JSON to this file");
  CLI11_PARSE(app, argc, argv);
  std::vector<int> weights;
  if (o.server.empty() || o.clients < 1 || !(o.seconds > 0) || !ParseMix(o.mix, &weights)) {
    std::fprintf(stderr, "rag_load: need --server, --clients >= 1, --seconds > 0 and a valid --mix (got '%s')\n",
                 o.mix.c_str());
    return 2;
  }
  rag::services::ClientSecurity security;
  if (!o.auth_token_file.empty()) {
    auto token = rag::ReadFile(o.auth_token_file);
    if (!token.ok()) {
      std::fprintf(stderr, "rag_load: %s\n", token.status().ToString().c_str());
      return 1;
    }
    security.auth_token = std::string(absl::StripAsciiWhitespace(*token));
  }

  // Query texts: seeded windows of 60-400 bytes.
  std::vector<std::string> texts;
  std::mt19937_64 rng(11);
  if (!o.corpus.empty()) {
    auto docs = rag::index_builder::ReadCorpus(o.corpus);
    if (!docs.ok() || docs->empty()) {
      std::fprintf(stderr, "rag_load: cannot read --corpus %s\n", o.corpus.c_str());
      return 1;
    }
    for (int i = 0; i < 1000; ++i) {
      const auto& d = (*docs)[rng() % docs->size()];
      if (d.text.size() < 80) continue;
      const size_t len = std::min<size_t>(d.text.size(), 60 + rng() % 340);
      texts.push_back(d.text.substr(rng() % (d.text.size() - len + 1), len));
    }
  }
  if (texts.empty()) {
    texts = {"The jury said the election was conducted well.", "She looked at him and smiled.",
             "The committee met on Tuesday to discuss the budget for the coming year."};
  }

  std::vector<std::unique_ptr<rag::services::GrpcBackend>> clients;
  for (int c = 0; c < o.clients; ++c) {
    auto client = rag::services::GrpcBackend::Connect(o.server, 10, security);
    if (!client.ok()) {
      std::fprintf(stderr, "rag_load: %s\n", client.status().ToString().c_str());
      return 1;
    }
    clients.push_back(std::move(*client));
  }
  const int64_t rss_start = ResidentBytes(o.server_pid);
  std::printf("rag_load: server %s (pid %d), %d clients, %.0f s, mix %s, mode %s, %u cores here\n", o.server.c_str(),
              o.server_pid, o.clients, o.seconds, o.mix.c_str(), o.mode.c_str(), std::thread::hardware_concurrency());
  std::fflush(stdout);

  std::vector<ClientResult> results(static_cast<size_t>(o.clients));
  const auto start = Clock::now();
  const auto end = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.seconds));
  std::vector<std::thread> threads;
  for (int c = 0; c < o.clients; ++c) {
    threads.emplace_back([&, c] {
      auto& client = *clients[static_cast<size_t>(c)];
      ClientResult& r = results[static_cast<size_t>(c)];
      std::mt19937_64 gen(1000 + static_cast<uint64_t>(c));
      std::discrete_distribution<int> pick(weights.begin(), weights.end());
      while (Clock::now() < end) {
        const int rpc = pick(gen);
        const std::string& text = texts[gen() % texts.size()];
        const auto t0 = Clock::now();
        absl::Status s;
        switch (rpc) {
          case kSearch: {
            rag::v1::SearchRequest q;
            q.add_texts(text);
            q.set_k(5);
            s = client.Search(q).status();
            break;
          }
          case kScore: {
            rag::v1::ScoreRequest q;
            q.set_text(text);
            q.set_mode(o.mode);
            s = client.Score(q).status();
            break;
          }
          case kNext: {
            rag::v1::NextTokenRequest q;
            q.set_text(text);
            q.set_mode(o.mode);
            q.set_top_n(5);
            s = client.NextToken(q).status();
            break;
          }
          default: {
            rag::v1::GenerateRequest q;
            q.set_prompt(text.substr(0, 80));
            q.set_mode(o.mode);
            q.set_max_tokens(o.generate_tokens);
            q.set_ignore_eot(true);
            q.mutable_sampling()->set_temperature(0.8f);
            q.mutable_sampling()->set_seed(gen());
            s = client.Generate(q, [](const rag::v1::GenerateResponse&) { return true; }).status();
          }
        }
        const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
        if (s.ok()) {
          r.ms[rpc].push_back(ms);
        } else {
          ++r.errors[rpc];
          if (r.first_error.empty()) r.first_error = std::string(kRpcNames[rpc]) + ": " + s.ToString();
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  // Let the server release per-call memory before the last reading.
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const int64_t rss_end = ResidentBytes(o.server_pid);

  nlohmann::json j = {{"server", o.server}, {"clients", o.clients}, {"seconds", elapsed}, {"mix", o.mix},
                      {"mode", o.mode}};
  std::printf("%-9s %9s %9s %9s %9s %9s %8s\n", "rpc", "calls", "QPS", "p50 ms", "p99 ms", "p999 ms", "errors");
  std::vector<double> all;
  int64_t errors = 0;
  std::string first_error;
  for (int rpc = 0; rpc <= kRpcs; ++rpc) {
    std::vector<double> ms;
    int64_t err = 0;
    if (rpc < kRpcs) {
      for (const auto& r : results) {
        ms.insert(ms.end(), r.ms[rpc].begin(), r.ms[rpc].end());
        err += r.errors[rpc];
      }
      all.insert(all.end(), ms.begin(), ms.end());
      errors += err;
    } else {
      ms = all;
      err = errors;
    }
    if (rpc < kRpcs && weights[static_cast<size_t>(rpc)] == 0) continue;
    const char* name = rpc < kRpcs ? kRpcNames[rpc] : "all";
    const double qps = static_cast<double>(ms.size()) / elapsed;
    std::printf("%-9s %9zu %9.1f %9.2f %9.2f %9.2f %8lld\n", name, ms.size(), qps, Percentile(ms, 0.5),
                Percentile(ms, 0.99), Percentile(ms, 0.999), static_cast<long long>(err));
    j["rpcs"][name] = {{"calls", ms.size()},          {"qps", qps},
                       {"p50_ms", Percentile(ms, 0.5)}, {"p99_ms", Percentile(ms, 0.99)},
                       {"p999_ms", Percentile(ms, 0.999)}, {"errors", err}};
  }
  for (const auto& r : results) {
    if (!r.first_error.empty()) {
      first_error = r.first_error;
      break;
    }
  }
  if (!first_error.empty()) std::printf("first error: %s\n", first_error.c_str());
  if (o.server_pid > 0) {
    const double mib = 1024.0 * 1024.0;
    std::printf("server RSS: start %.1f MiB, end %.1f MiB (%+.1f MiB, %+.1f%%)\n", rss_start / mib, rss_end / mib,
                (rss_end - rss_start) / mib, rss_start > 0 ? 100.0 * (rss_end - rss_start) / rss_start : 0.0);
  }
  j["errors"] = errors;
  j["rss_start_bytes"] = rss_start;
  j["rss_end_bytes"] = rss_end;
  if (!o.json_path.empty()) {
    if (auto s = rag::WriteFileAtomic(o.json_path, j.dump(2) + "\n"); !s.ok()) {
      std::fprintf(stderr, "rag_load: %s\n", s.ToString().c_str());
      return 1;
    }
  }
  return errors == 0 && !all.empty() ? 0 : 1;
}

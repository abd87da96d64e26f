#include "services/metrics.h"

#include <httplib.h>
#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/text_serializer.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <atomic>
#include <thread>
#include <fstream>
#include <string>
#include <vector>

#include "services/engine.h"

namespace rag::services {
namespace {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;

// Latency buckets, seconds: 1 ms to 60 s.
const prometheus::Histogram::BucketBoundaries kLatencyBuckets = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                                 0.25,  0.5,    1,     2.5,  5,     10,   30, 60};

// Resident memory of this process, bytes (0 if /proc cannot be read).
double ResidentBytes() {
  std::ifstream in("/proc/self/statm");
  long pages = 0, resident = 0;
  if (!(in >> pages >> resident)) return 0;
  return static_cast<double>(resident) * 4096.0;
}

// Values read when Prometheus scrapes, not kept up to date by every call:
// the served index's sizes and the process's memory.
class ScrapeTimeValues : public prometheus::Collectable {
 public:
  void SetEngine(Engine* engine) { engine_ = engine; }

  std::vector<prometheus::MetricFamily> Collect() const override {
    std::vector<prometheus::MetricFamily> out;
    auto add = [&](const char* name, const char* help, prometheus::MetricType type, double value) {
      prometheus::MetricFamily f;
      f.name = name;
      f.help = help;
      f.type = type;
      prometheus::ClientMetric m;
      (type == prometheus::MetricType::Counter ? m.counter.value : m.gauge.value) = value;
      f.metric.push_back(m);
      out.push_back(std::move(f));
    };
    auto gauge = [&](const char* name, const char* help, double value) {
      add(name, help, prometheus::MetricType::Gauge, value);
    };
    gauge("process_resident_memory_bytes", "Resident memory size in bytes.", ResidentBytes());
    Engine* engine = engine_.load();
    if (engine != nullptr && engine->has_index()) {
      auto stats = engine->Stats();
      if (stats.ok()) {
        gauge("rag_index_vectors", "Vectors in the served chunk index.", static_cast<double>(stats->vectors()));
        gauge("rag_index_documents", "Documents in the served index.", static_cast<double>(stats->documents()));
        gauge("rag_index_chunks", "Chunks in the served index.", static_cast<double>(stats->chunks()));
        gauge("rag_datastore_keys", "Keys in the served kNN-LM datastore (0: none).",
              static_cast<double>(stats->datastore_keys()));
      }
    }
    if (engine != nullptr) {
      if (const auto b = engine->embedding_batches()) {
        gauge("rag_embed_batch_waiting", "Searches and adds queued for the embedding batcher now.",
              static_cast<double>(b->waiting));
        add("rag_embed_batches_total", "Forward passes of the server-side embedding batcher.",
            prometheus::MetricType::Counter, static_cast<double>(b->batches));
        add("rag_embed_batch_sequences_total",
            "Sequences embedded by the batcher (over rag_embed_batches_total: the mean batch).",
            prometheus::MetricType::Counter, static_cast<double>(b->sequences));
        gauge("rag_embed_largest_batch", "Largest batch of sequences the batcher has run.",
              static_cast<double>(b->largest_batch));
      }
    }
    return out;
  }

 private:
  std::atomic<Engine*> engine_{nullptr};
};

}  // namespace

// The HTTP side is cpp-httplib's, not prometheus-cpp's Exposer: Debian
// builds the Exposer's civetweb with 100 KB worker stacks, below glibc's
// minimum in a process that loads Debian's LibTorch (its libraries' static
// TLS), so its threads cannot start there (pthread_create: EINVAL).
struct Metrics::State {
  ~State() {
    http.stop();
    if (thread.joinable()) thread.join();
  }
  httplib::Server http;
  std::thread thread;
  int port = 0;
  std::shared_ptr<prometheus::Registry> registry = std::make_shared<prometheus::Registry>();
  std::shared_ptr<ScrapeTimeValues> scrape_time = std::make_shared<ScrapeTimeValues>();
  prometheus::Family<prometheus::Counter>* calls = nullptr;
  prometheus::Family<prometheus::Histogram>* latency = nullptr;
  prometheus::Family<prometheus::Counter>* stage_seconds = nullptr;
  prometheus::Family<prometheus::Gauge>* in_flight = nullptr;
  prometheus::Family<prometheus::Counter>* tokens_scored = nullptr;
  prometheus::Family<prometheus::Counter>* tokens_generated = nullptr;
  prometheus::Counter* neighbours = nullptr;
  prometheus::Counter* documents_added = nullptr;
};

absl::StatusOr<std::unique_ptr<Metrics>> Metrics::Start(const std::string& listen) {
  const size_t colon = listen.rfind(':');
  int port = -1;
  if (colon != std::string::npos) {
    try {
      port = std::stoi(listen.substr(colon + 1));
    } catch (const std::exception&) {
      port = -1;
    }
  }
  if (port < 0 || port > 65535) {
    return absl::InvalidArgumentError("--metrics-listen wants HOST:PORT, got '" + listen + "'");
  }
  std::string host = listen.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  auto s = std::make_unique<State>();
  auto& r = *s->registry;
  s->calls = &BuildCounter().Name("rag_requests_total").Help("Calls answered, by rpc, mode and gRPC status code.").Register(r);
  s->latency = &BuildHistogram()
                    .Name("rag_request_duration_seconds")
                    .Help("Wall time of a call on the server, by rpc and mode.")
                    .Register(r);
  s->stage_seconds = &BuildCounter()
                          .Name("rag_stage_seconds_total")
                          .Help("Seconds spent per stage (embed, search, datastore, forward, fusion) of successful "
                                "calls, by rpc and mode: the responses' StageTimings summed.")
                          .Register(r);
  s->in_flight = &BuildGauge().Name("rag_requests_in_flight").Help("Calls running now, by rpc.").Register(r);
  s->tokens_scored = &BuildCounter().Name("rag_tokens_scored_total").Help("Tokens scored by Score, by mode.").Register(r);
  s->tokens_generated =
      &BuildCounter().Name("rag_tokens_generated_total").Help("Tokens generated by Generate, by mode.").Register(r);
  s->neighbours = &BuildCounter()
                       .Name("rag_neighbours_returned_total")
                       .Help("Neighbours returned by Search.")
                       .Register(r)
                       .Add({});
  s->documents_added = &BuildCounter()
                            .Name("rag_documents_added_total")
                            .Help("Documents added by AddDocuments since the server started.")
                            .Register(r)
                            .Add({});
  State* state = s.get();
  s->http.Get("/metrics", [state](const httplib::Request&, httplib::Response& res) {
    std::vector<prometheus::MetricFamily> families = state->registry->Collect();
    for (auto& f : state->scrape_time->Collect()) families.push_back(std::move(f));
    res.set_content(prometheus::TextSerializer().Serialize(families), "text/plain; version=0.0.4; charset=utf-8");
  });
  s->port = port == 0 ? s->http.bind_to_any_port(host) : (s->http.bind_to_port(host, port) ? port : -1);
  if (s->port <= 0) return absl::UnavailableError("cannot serve metrics on '" + listen + "' (address in use?)");
  s->thread = std::thread([state] { state->http.listen_after_bind(); });
  return std::unique_ptr<Metrics>(new Metrics(std::move(s)));
}

Metrics::Metrics(std::unique_ptr<State> state) : state_(std::move(state)) {}
Metrics::~Metrics() = default;

int Metrics::port() const { return state_->port; }

void Metrics::SetEngine(Engine* engine) { state_->scrape_time->SetEngine(engine); }

void Metrics::CallStarted(const std::string& rpc) { state_->in_flight->Add({{"rpc", rpc}}).Increment(); }

void Metrics::CallFinished(const std::string& rpc, const std::string& mode, const std::string& code, double seconds) {
  state_->in_flight->Add({{"rpc", rpc}}).Decrement();
  state_->calls->Add({{"rpc", rpc}, {"mode", mode}, {"code", code}}).Increment();
  state_->latency->Add({{"rpc", rpc}, {"mode", mode}}, kLatencyBuckets).Observe(seconds);
}

void Metrics::RecordStages(const std::string& rpc, const std::string& mode, const v1::StageTimings& t) {
  auto add = [&](const char* stage, int64_t us) {
    if (us > 0) state_->stage_seconds->Add({{"rpc", rpc}, {"mode", mode}, {"stage", stage}}).Increment(us * 1e-6);
  };
  add("embed", t.embed_us());
  add("search", t.search_us());
  add("datastore", t.datastore_us());
  add("forward", t.forward_us());
  add("fusion", t.fusion_us());
}

void Metrics::Succeeded(const std::string& rpc, const std::string& mode, const v1::SearchResponse& r) {
  RecordStages(rpc, mode, r.timings());
  for (const auto& list : r.results()) state_->neighbours->Increment(list.neighbours_size());
}

void Metrics::Succeeded(const std::string& rpc, const std::string& mode, const v1::ScoreResponse& r) {
  RecordStages(rpc, mode, r.timings());
  state_->tokens_scored->Add({{"mode", mode}}).Increment(static_cast<double>(r.tokens()));
}

void Metrics::Succeeded(const std::string& rpc, const std::string& mode, const v1::NextTokenResponse& r) {
  RecordStages(rpc, mode, r.timings());
}

void Metrics::Succeeded(const std::string& rpc, const std::string& mode, const v1::GenerateResponse& r) {
  RecordStages(rpc, mode, r.timings());
  state_->tokens_generated->Add({{"mode", mode}}).Increment(static_cast<double>(r.tokens()));
}

void Metrics::Succeeded(const std::string&, const std::string&, const v1::AddDocumentsResponse& r) {
  state_->documents_added->Increment(static_cast<double>(r.documents_added()));
}

}  // namespace rag::services

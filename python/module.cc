// The `rag` Python module: a services::Engine in-process, as researchers use
// FAISS from Python. The same engine answers `rag serve` and the in-process
// CLI commands, so the module gives the CLI's answers (tests/python_module_test.sh
// checks it). Every call releases the GIL while it works: threads can search
// and score at once, as gRPC clients can. Vectors come and go as NumPy arrays.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "lm/runtime.h"
#include "python/convert.h"
#include "services/engine.h"
#include "services/mode_strategy.h"

namespace rag::python {
namespace {

using services::Engine;

std::vector<std::string> Texts(const py::object& texts) {
  if (py::isinstance<py::str>(texts)) return {texts.cast<std::string>()};
  return texts.cast<std::vector<std::string>>();
}

// One call into the engine: the GIL released, so Python threads run
// meanwhile, and calls from several Python threads at once share the cores
// as a server's calls do (lm::CallThreads).
struct EngineCall {
  py::gil_scoped_release gil;
  lm::CallThreads threads;
};

std::string PathString(const py::object& path) {
  return py::str(py::module_::import("os").attr("fspath")(path)).cast<std::string>();
}

class PyEngine {
 public:
  PyEngine(const py::object& model, const py::object& index, bool writable, const py::object& embedder,
           bool batch_embeddings) {
    services::EngineOptions o;
    o.model_dir = PathString(model);
    if (!index.is_none()) o.index_dir = PathString(index);
    if (!embedder.is_none()) o.embedder_path = PathString(embedder);
    o.writable_index = writable;
    o.batch_embeddings = batch_embeddings;
    o.limits.max_text_bytes = services::kLocalMaxTextBytes;
    py::gil_scoped_release release;
    engine_ = Check(Engine::Open(o));
    // Fixed once open; Info() also serialises the tokenizer, too much for a property read.
    const v1::InfoResponse info = Check(engine_->Info());
    modes_.assign(info.modes().begin(), info.modes().end());
  }

  // One list of neighbours per text; a single str gives its list alone.
  py::list Search(const py::object& texts, int k, int nprobe, const std::vector<std::string>& exclude_doc_ids,
                  const std::string& method) {
    v1::SearchRequest request;
    for (const std::string& t : Texts(texts)) request.add_texts(t);
    request.set_k(k);
    request.set_nprobe(nprobe);
    for (const std::string& id : exclude_doc_ids) request.add_exclude_doc_ids(id);
    request.set_method(method);
    v1::SearchResponse response;
    {
      const EngineCall released;
      response = Check(engine_->Search(request));
    }
    py::list lists = ToPython(response);
    return py::isinstance<py::str>(texts) ? lists[0].cast<py::list>() : lists;
  }

  py::array_t<float> Embed(const py::object& texts) {
    const std::vector<std::string> t = Texts(texts);
    std::vector<float> vectors;
    {
      const EngineCall released;
      vectors = Check(engine_->Embed(t));
    }
    const auto rows = static_cast<py::ssize_t>(t.size());
    py::array_t<float> out({rows, rows == 0 ? 0 : static_cast<py::ssize_t>(vectors.size()) / rows});
    std::copy(vectors.begin(), vectors.end(), out.mutable_data());
    return out;
  }

  py::list SearchVectors(const py::array_t<float, py::array::c_style | py::array::forcecast>& vectors, int k,
                         int nprobe, const std::vector<std::string>& exclude_doc_ids) {
    if (vectors.ndim() != 2) throw py::value_error("vectors must be a 2-d array [queries, dim]");
    v1::SearchVectorsRequest request;
    request.mutable_vectors()->Add(vectors.data(), vectors.data() + vectors.size());
    request.set_dim(static_cast<int32_t>(vectors.shape(1)));
    request.set_k(k);
    request.set_nprobe(nprobe);
    for (const std::string& id : exclude_doc_ids) request.add_exclude_doc_ids(id);
    v1::SearchResponse response;
    {
      const EngineCall released;
      response = Check(engine_->SearchVectors(request));
    }
    // SearchVectors answers a sharded front with token ids only; give the
    // texts as search() does.
    const lm::Tokenizer& tok = engine_->model().tokenizer();
    for (auto& list : *response.mutable_results()) {
      for (auto& n : *list.mutable_neighbours()) {
        n.set_doc_id(ToValidUtf8(n.doc_id()));
        n.set_text(services::DecodeToValidUtf8(tok, {n.token_ids().begin(), n.token_ids().end()}));
        n.set_continuation(
            services::DecodeToValidUtf8(tok, {n.continuation_ids().begin(), n.continuation_ids().end()}));
      }
    }
    return ToPython(response);
  }

  py::dict Score(const std::string& text, const std::string& mode, bool per_token, int stride,
                 const std::string& exclude_doc_id, bool components, int prompt_bytes, const py::object& knn,
                 const py::object& retro, const py::object& infgram, const py::object& ralm) {
    v1::ScoreRequest request;
    request.set_text(text);
    request.set_mode(mode);
    request.set_per_token(per_token);
    request.set_stride(stride);
    request.set_exclude_doc_id(exclude_doc_id);
    request.set_components(components);
    request.set_prompt_bytes(prompt_bytes);
    FillKnnOptions(knn, request.mutable_knn());
    FillRetroOptions(retro, request.mutable_retro());
    FillInfgramOptions(infgram, request.mutable_infgram());
    FillRalmOptions(ralm, request.mutable_ralm());
    v1::ScoreResponse response;
    {
      const EngineCall released;
      response = Check(engine_->Score(request));
    }
    return ToPython(response);
  }

  py::dict NextToken(const std::string& text, int top_n, const std::string& mode, const py::object& knn,
                     const py::object& retro, const py::object& infgram, const py::object& ralm) {
    v1::NextTokenRequest request;
    request.set_text(text);
    request.set_top_n(top_n);
    request.set_mode(mode);
    FillKnnOptions(knn, request.mutable_knn());
    FillRetroOptions(retro, request.mutable_retro());
    FillInfgramOptions(infgram, request.mutable_infgram());
    FillRalmOptions(ralm, request.mutable_ralm());
    v1::NextTokenResponse response;
    {
      const EngineCall released;
      response = Check(engine_->NextToken(request));
    }
    return ToPython(response);
  }

  // on_token(token_id, piece_bytes) is called for every token as it is
  // drawn; returning False stops the generation (rag.Error CANCELLED).
  py::dict Generate(const py::object& prompt, int max_tokens, const std::string& mode, float temperature, int top_k,
                    float top_p, uint64_t seed, float repetition_penalty, int no_repeat_ngram_size, bool ignore_eot,
                    const std::string& exclude_doc_id, const py::object& knn, const py::object& retro,
                    const py::object& infgram, const py::object& ralm, const py::object& on_token) {
    v1::GenerateRequest request;
    if (py::isinstance<py::str>(prompt)) {
      request.set_prompt(prompt.cast<std::string>());
    } else {
      for (int32_t id : prompt.cast<std::vector<int32_t>>()) request.add_prompt_token_ids(id);
    }
    request.set_max_tokens(max_tokens);
    request.set_mode(mode);
    v1::Sampling* s = request.mutable_sampling();
    s->set_temperature(temperature);
    s->set_top_k(top_k);
    s->set_top_p(top_p);
    s->set_seed(seed);
    s->set_repetition_penalty(repetition_penalty);
    s->set_no_repeat_ngram_size(no_repeat_ngram_size);
    request.set_ignore_eot(ignore_eot);
    request.set_exclude_doc_id(exclude_doc_id);
    FillKnnOptions(knn, request.mutable_knn());
    FillRetroOptions(retro, request.mutable_retro());
    FillInfgramOptions(infgram, request.mutable_infgram());
    FillRalmOptions(ralm, request.mutable_ralm());
    std::vector<int32_t> ids;
    std::optional<py::error_already_set> callback_error;
    auto collect = [&](const v1::GenerateResponse& msg) {
      ids.push_back(msg.token_id());
      if (on_token.is_none()) return true;
      py::gil_scoped_acquire gil;
      try {
        py::object go_on = on_token(msg.token_id(), py::bytes(msg.piece()));
        return go_on.is_none() || go_on.cast<bool>();
      } catch (py::error_already_set& e) {
        callback_error = std::move(e);
        return false;
      }
    };
    absl::StatusOr<v1::GenerateResponse> response;
    {
      const EngineCall released;
      response = engine_->Generate(request, collect);
    }
    if (callback_error) throw std::move(*callback_error);
    py::dict d = ToPython(Check(std::move(response)));
    d["token_ids"] = ToArray<int32_t>(ids);
    return d;
  }

  // documents: dicts {"id", "text"[, "metadata_json", "skip_if_exists"]} or
  // (id, text) pairs. Durable and searchable on return (writable=True).
  py::dict Add(const py::iterable& documents) {
    std::vector<v1::Document> docs;
    for (const py::handle& item : documents) {
      v1::Document d;
      if (py::isinstance<py::dict>(item)) {
        const auto doc = item.cast<py::dict>();
        if (!doc.contains("id") || !doc.contains("text")) throw py::value_error("a document needs 'id' and 'text'");
        d.set_id(doc["id"].cast<std::string>());
        d.set_text(doc["text"].cast<std::string>());
        if (doc.contains("metadata_json")) d.set_metadata_json(doc["metadata_json"].cast<std::string>());
        if (doc.contains("skip_if_exists")) d.set_skip_if_exists(doc["skip_if_exists"].cast<bool>());
      } else {
        const auto pair = item.cast<std::pair<std::string, std::string>>();
        d.set_id(pair.first);
        d.set_text(pair.second);
      }
      docs.push_back(std::move(d));
    }
    v1::AddDocumentsResponse response;
    {
      const EngineCall released;
      response = Check(engine_->AddDocuments(docs, nullptr));
    }
    return ToPython(response);
  }

  py::dict Stats() {
    v1::StatsResponse r;
    {
      const EngineCall released;
      r = Check(engine_->Stats());
    }
    return ToPython(r);
  }

  py::dict Info() {
    v1::InfoResponse r;
    {
      const EngineCall released;
      r = Check(engine_->Info());
    }
    return ToPython(r);
  }

  const std::vector<std::string>& Modes() const { return modes_; }

  bool has_index() const { return engine_->has_index(); }

 private:
  std::unique_ptr<Engine> engine_;
  std::vector<std::string> modes_;
};

}  // namespace
}  // namespace rag::python

PYBIND11_MODULE(rag, m) {
  namespace py = pybind11;
  using rag::python::PyEngine;
  namespace lm = rag::lm;
  m.doc() =
      "rag: retrieval-augmented language models in-process (the engine behind `rag serve`).\n"
      "  e = rag.Engine(model='MODEL_DIR', index='INDEX_DIR')\n"
      "  e.search('text', k=5); e.score('text', mode='knnlm'); e.generate('The', max_tokens=20)";
  m.attr("__version__") = RAG_VERSION;
  // The CLI's process settings (LibTorch's threads by BLAS build, large
  // freed blocks kept in the heap), so the module's answers and speed are
  // the CLI's.
  lm::ConfigureRuntime(0);
  m.def("set_threads", &lm::ConfigureRuntime, py::arg("threads"),
        "LibTorch intra-op threads (0: the default, 1 over pthread OpenBLAS, every core over OpenMP OpenBLAS).");
  rag::python::RegisterErrors(m);

  using py::arg;
  py::class_<PyEngine>(m, "Engine",
                       "A model, and optionally an index (with its kNN-LM datastore), opened in-process.")
      .def(py::init<const py::object&, const py::object&, bool, const py::object&, bool>(), arg("model"),
           arg("index") = py::none(), arg("writable") = false, arg("embedder") = py::none(),
           arg("batch_embeddings") = true,
           "Opens MODEL_DIR (rag's own, a Hugging Face GPT-2/GPT-NeoX directory, TorchScript or RETRO) and "
           "INDEX_DIR (refused when built by another model). writable=True allows add().")
      .def("search", &PyEngine::Search, arg("texts"), arg("k") = 0, arg("nprobe") = 0,
           arg("exclude_doc_ids") = std::vector<std::string>(), arg("method") = "",
           "Nearest chunks of each text (k 0 = 10; method 'dense' or 'bm25'): a list of dicts per text "
           "(chunk_id, doc_id, offset, text, continuation, distance, token_ids, continuation_ids); a single "
           "str gives its list. Chunks of exclude_doc_ids are never returned.")
      .def("embed", &PyEngine::Embed, arg("texts"),
           "Query vectors of the texts as search() embeds them: float32 [len(texts), dim].")
      .def("search_vectors", &PyEngine::SearchVectors, arg("vectors"), arg("k") = 0, arg("nprobe") = 0,
           arg("exclude_doc_ids") = std::vector<std::string>(),
           "Nearest chunks of each row of a float32 [queries, dim] array, as search().")
      .def("score", &PyEngine::Score, arg("text"), arg("mode") = "lm", arg("per_token") = true,
           arg("stride") = 0, arg("exclude_doc_id") = "", arg("components") = false, arg("prompt_bytes") = 0,
           arg("knn") = py::none(), arg("retro") = py::none(), arg("infgram") = py::none(), arg("ralm") = py::none(),
           "Log-probabilities of the text's tokens under a mode ('lm', 'knnlm', 'retro', 'infgram', 'ralm'): tokens, "
           "nll, perplexity, token_ids, pieces, logprobs (NumPy), with components=True lm_logprobs and "
           "knn_logprobs (knnlm) or infgram_logprobs, infgram_suffix_tokens, infgram_sparse (infgram), "
           "timings. knn / retro / infgram / ralm: dicts of KnnOptions / RetroOptions / InfgramOptions / RalmOptions fields "
           "(proto/rag.proto).")
      .def("next_token", &PyEngine::NextToken, arg("text"), arg("top_n") = 10, arg("mode") = "lm",
           arg("knn") = py::none(), arg("retro") = py::none(), arg("infgram") = py::none(), arg("ralm") = py::none(),
           "The top_n most likely next tokens: token_ids, pieces, probabilities, logprobs.")
      .def("generate", &PyEngine::Generate, arg("prompt"), arg("max_tokens") = 0, arg("mode") = "lm",
           arg("temperature") = 0.0f, arg("top_k") = 0, arg("top_p") = 0.0f, arg("seed") = 0,
           arg("repetition_penalty") = 0.0f, arg("no_repeat_ngram_size") = 0, arg("ignore_eot") = false,
           arg("exclude_doc_id") = "", arg("knn") = py::none(), arg("retro") = py::none(), arg("infgram") = py::none(), arg("ralm") = py::none(),
           arg("on_token") = py::none(),
           "Continues the prompt (a str, or a list of token ids); temperature 0 is greedy. Returns text, "
           "token_ids, tokens, end_of_text, retrievals (retro, ralm), timings. on_token(id, piece) sees each "
           "token as it comes; returning False stops.")
      .def("add", &PyEngine::Add, arg("documents"),
           "Adds documents (dicts with id and text, or (id, text) pairs) to a writable index.")
      .def("stats", &PyEngine::Stats, "The index's sizes and identity, as `rag stats`.")
      .def("info", &PyEngine::Info, "The model's identity and the modes served.")
      .def_property_readonly("modes", &PyEngine::Modes, "The fusion modes this engine can run.")
      .def_property_readonly("has_index", &PyEngine::has_index);
}

#include "python/convert.h"

#include <pybind11/stl.h>

#include <set>
#include <string>

namespace rag::python {
namespace {

// Set by RegisterErrors; the module keeps the types alive.
PyObject* g_error = nullptr;
PyObject* g_invalid_argument = nullptr;

void RaiseStatus(const absl::Status& status) {
  const bool invalid = status.code() == absl::StatusCode::kInvalidArgument ||
                       status.code() == absl::StatusCode::kOutOfRange;
  PyObject* type = invalid ? g_invalid_argument : g_error;
  py::object error = py::reinterpret_borrow<py::object>(type)(std::string(status.message()));
  error.attr("code") = absl::StatusCodeToString(status.code());
  PyErr_SetObject(type, error.ptr());
}

// The keys of `options` (a dict, or None for none) that are not in `known`.
py::dict OptionsDict(const py::object& options, const std::set<std::string>& known, const char* what) {
  if (options.is_none()) return py::dict();
  if (!py::isinstance<py::dict>(options)) throw py::type_error(std::string(what) + " must be a dict or None");
  py::dict d = options.cast<py::dict>();
  for (const auto& item : d) {
    const std::string key = py::str(item.first);
    if (known.count(key) == 0) {
      std::string names;
      for (const std::string& k : known) names += (names.empty() ? "" : ", ") + k;
      throw py::value_error(std::string("unknown ") + what + " option '" + key + "' (known: " + names + ")");
    }
  }
  return d;
}

py::list Pieces(const google::protobuf::RepeatedPtrField<v1::TokenScore>& scores) {
  py::list pieces;
  for (const auto& s : scores) pieces.append(py::bytes(s.piece()));
  return pieces;
}

}  // namespace

void RegisterErrors(py::module_& m) {
  static py::exception<StatusError> error(m, "Error", PyExc_RuntimeError);
  g_error = error.ptr();
  // Both rag.Error and ValueError: `except ValueError` catches a bad
  // argument as Python code expects.
  py::tuple bases = py::make_tuple(error, py::reinterpret_borrow<py::object>(PyExc_ValueError));
  g_invalid_argument = PyErr_NewException("rag.InvalidArgument", bases.ptr(), nullptr);
  if (g_invalid_argument == nullptr) throw py::error_already_set();
  m.add_object("InvalidArgument", py::reinterpret_borrow<py::object>(g_invalid_argument));
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const StatusError& e) {
      RaiseStatus(e.status());
    }
  });
}

void FillKnnOptions(const py::object& knn, v1::KnnOptions* out) {
  const py::dict d = OptionsDict(
      knn, {"lambda", "temperature", "k", "nprobe", "exact_distances", "min_lm_entropy"}, "knn");
  if (d.contains("lambda")) out->set_lambda(d["lambda"].cast<float>());
  if (d.contains("temperature")) out->set_temperature(d["temperature"].cast<float>());
  if (d.contains("k")) out->set_k(d["k"].cast<int32_t>());
  if (d.contains("nprobe")) out->set_nprobe(d["nprobe"].cast<int32_t>());
  if (d.contains("exact_distances")) out->set_exact_distances(d["exact_distances"].cast<bool>());
  if (d.contains("min_lm_entropy")) out->set_min_lm_entropy(d["min_lm_entropy"].cast<float>());
}

void FillRetroOptions(const py::object& retro, v1::RetroOptions* out) {
  const py::dict d = OptionsDict(retro, {"retrieval", "leakage_filter", "search_method"}, "retro");
  if (d.contains("retrieval")) out->set_retrieval(d["retrieval"].cast<std::string>());
  if (d.contains("leakage_filter")) out->set_leakage_filter(d["leakage_filter"].cast<int32_t>());
  if (d.contains("search_method")) out->set_search_method(d["search_method"].cast<std::string>());
}

void FillInfgramOptions(const py::object& infgram, v1::InfgramOptions* out) {
  const py::dict d = OptionsDict(infgram, {"lambda", "lambda_sparse"}, "infgram");
  if (d.contains("lambda")) out->set_lambda(d["lambda"].cast<float>());
  if (d.contains("lambda_sparse")) out->set_lambda_sparse(d["lambda_sparse"].cast<float>());
}

void FillRalmOptions(const py::object& ralm, v1::RalmOptions* out) {
  const py::dict d = OptionsDict(ralm, {"stride", "query_tokens", "passage_tokens", "search_method"}, "ralm");
  if (d.contains("stride")) out->set_stride(d["stride"].cast<int32_t>());
  if (d.contains("query_tokens")) out->set_query_tokens(d["query_tokens"].cast<int32_t>());
  if (d.contains("passage_tokens")) out->set_passage_tokens(d["passage_tokens"].cast<int32_t>());
  if (d.contains("search_method")) out->set_search_method(d["search_method"].cast<std::string>());
}

py::dict ToPython(const v1::StageTimings& t) {
  py::dict d;
  d["embed_us"] = t.embed_us();
  d["search_us"] = t.search_us();
  d["datastore_us"] = t.datastore_us();
  d["forward_us"] = t.forward_us();
  d["fusion_us"] = t.fusion_us();
  d["total_us"] = t.total_us();
  return d;
}

py::dict ToPython(const v1::Neighbour& n) {
  py::dict d;
  d["chunk_id"] = n.chunk_id();
  d["doc_id"] = n.doc_id();
  d["offset"] = n.offset();
  d["text"] = n.text();
  d["continuation"] = n.continuation();
  d["distance"] = n.distance();
  d["token_ids"] = ToArray<int32_t>(n.token_ids());
  d["continuation_ids"] = ToArray<int32_t>(n.continuation_ids());
  return d;
}

py::list ToPython(const v1::SearchResponse& r) {
  py::list queries;
  for (const auto& list : r.results()) {
    py::list neighbours;
    for (const auto& n : list.neighbours()) neighbours.append(ToPython(n));
    queries.append(neighbours);
  }
  return queries;
}

py::dict ToPython(const v1::ScoreResponse& r) {
  py::dict d;
  d["mode"] = r.mode();
  d["tokens"] = r.tokens();
  d["nll"] = r.nll();
  d["perplexity"] = r.perplexity();
  d["logprob_sum"] = r.logprob_sum();
  std::vector<int32_t> ids;
  std::vector<float> logprobs;
  for (const auto& s : r.token_scores()) {
    ids.push_back(s.id());
    logprobs.push_back(s.logprob());
  }
  d["token_ids"] = ToArray<int32_t>(ids);
  d["pieces"] = Pieces(r.token_scores());
  d["logprobs"] = ToArray<float>(logprobs);
  d["lm_logprobs"] = ToArray<float>(r.lm_logprobs());
  d["knn_logprobs"] = ToArray<float>(r.knn_logprobs());
  d["infgram_logprobs"] = ToArray<float>(r.infgram_logprobs());
  d["infgram_suffix_tokens"] = ToArray<int32_t>(r.infgram_suffix_tokens());
  std::vector<int32_t> sparse(r.infgram_sparse().begin(), r.infgram_sparse().end());
  d["infgram_sparse"] = ToArray<int32_t>(sparse);
  d["retrievals"] = r.retrievals();
  d["neighbours_filtered"] = r.neighbours_filtered();
  d["timings"] = ToPython(r.timings());
  return d;
}

py::dict ToPython(const v1::NextTokenResponse& r) {
  py::dict d;
  d["mode"] = r.mode();
  std::vector<int32_t> ids;
  std::vector<float> probabilities, logprobs;
  py::list pieces;
  for (const auto& t : r.tokens()) {
    ids.push_back(t.id());
    probabilities.push_back(t.probability());
    logprobs.push_back(t.logprob());
    pieces.append(py::bytes(t.piece()));
  }
  d["token_ids"] = ToArray<int32_t>(ids);
  d["pieces"] = pieces;
  d["probabilities"] = ToArray<float>(probabilities);
  d["logprobs"] = ToArray<float>(logprobs);
  d["timings"] = ToPython(r.timings());
  return d;
}

py::dict ToPython(const v1::GenerateResponse& r) {
  py::dict d;
  d["text"] = r.text();
  d["tokens"] = r.tokens();
  d["end_of_text"] = r.end_of_text();
  py::list retrievals;
  for (const auto& c : r.retrievals()) {
    py::dict rd;
    rd["chunk"] = c.chunk();
    rd["query"] = c.query();
    py::list neighbours;
    for (const auto& n : c.neighbours()) neighbours.append(ToPython(n));
    rd["neighbours"] = neighbours;
    retrievals.append(rd);
  }
  d["retrievals"] = retrievals;
  d["timings"] = ToPython(r.timings());
  return d;
}

py::dict ToPython(const v1::StatsResponse& r) {
  py::dict d;
  d["documents"] = r.documents();
  d["chunks"] = r.chunks();
  d["tokens"] = r.tokens();
  d["vectors"] = r.vectors();
  d["dim"] = r.dim();
  d["index_factory"] = r.index_factory();
  d["chunk_tokens"] = r.chunk_tokens();
  d["continuation_tokens"] = r.continuation_tokens();
  d["model_hash"] = r.model_hash();
  d["tokenizer_hash"] = r.tokenizer_hash();
  d["embedder"] = r.embedder();
  d["faiss_version"] = r.faiss_version();
  d["documents_added"] = r.documents_added();
  d["datastore_keys"] = r.datastore_keys();
  d["datastore_factory"] = r.datastore_factory();
  d["manifest_json"] = r.manifest_json();
  return d;
}

py::dict ToPython(const v1::InfoResponse& r) {
  py::dict d;
  d["model_hash"] = r.model_hash();
  d["modes"] = std::vector<std::string>(r.modes().begin(), r.modes().end());
  d["config_json"] = r.config_json();
  d["tokenizer_json"] = r.tokenizer_json();
  d["split_json"] = r.split_json();
  const v1::ModelIdentity& m = r.model();
  py::dict model;
  model["format"] = m.format();
  model["architecture"] = m.architecture();
  model["parameters"] = m.parameters();
  model["stored_dtype"] = m.stored_dtype();
  model["content_hash"] = m.content_hash();
  model["tokenizer_hash"] = m.tokenizer_hash();
  model["vocab_size"] = m.vocab_size();
  model["context"] = m.context();
  d["model"] = model;
  return d;
}

py::dict ToPython(const v1::AddDocumentsResponse& r) {
  py::dict d;
  d["documents_added"] = r.documents_added();
  d["chunks_added"] = r.chunks_added();
  d["documents_skipped"] = r.documents_skipped();
  d["documents"] = r.documents();
  d["chunks"] = r.chunks();
  return d;
}

}  // namespace rag::python

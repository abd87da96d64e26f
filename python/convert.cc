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

// One field's value (element `i` of a repeated field, or the field when i < 0).
py::object FieldValue(const google::protobuf::Message& m, const google::protobuf::FieldDescriptor* f, int i);

// Every field of `m` by its proto name, defaults included, so a field added
// to the proto reaches Python without a hand-written copy to forget.
py::dict MessageDict(const google::protobuf::Message& m) {
  py::dict d;
  const google::protobuf::Descriptor* desc = m.GetDescriptor();
  const google::protobuf::Reflection* r = m.GetReflection();
  for (int k = 0; k < desc->field_count(); ++k) {
    const google::protobuf::FieldDescriptor* f = desc->field(k);
    if (f->is_repeated()) {
      py::list items;
      for (int i = 0; i < r->FieldSize(m, f); ++i) items.append(FieldValue(m, f, i));
      d[py::str(f->name())] = items;
    } else {
      d[py::str(f->name())] = FieldValue(m, f, -1);
    }
  }
  return d;
}

py::object FieldValue(const google::protobuf::Message& m, const google::protobuf::FieldDescriptor* f, int i) {
  using F = google::protobuf::FieldDescriptor;
  const google::protobuf::Reflection* r = m.GetReflection();
  const bool rep = i >= 0;
  switch (f->cpp_type()) {
    case F::CPPTYPE_INT32: return py::int_(rep ? r->GetRepeatedInt32(m, f, i) : r->GetInt32(m, f));
    case F::CPPTYPE_INT64: return py::int_(rep ? r->GetRepeatedInt64(m, f, i) : r->GetInt64(m, f));
    case F::CPPTYPE_UINT32: return py::int_(rep ? r->GetRepeatedUInt32(m, f, i) : r->GetUInt32(m, f));
    case F::CPPTYPE_UINT64: return py::int_(rep ? r->GetRepeatedUInt64(m, f, i) : r->GetUInt64(m, f));
    case F::CPPTYPE_DOUBLE: return py::float_(rep ? r->GetRepeatedDouble(m, f, i) : r->GetDouble(m, f));
    case F::CPPTYPE_FLOAT: return py::float_(rep ? r->GetRepeatedFloat(m, f, i) : r->GetFloat(m, f));
    case F::CPPTYPE_BOOL: return py::bool_(rep ? r->GetRepeatedBool(m, f, i) : r->GetBool(m, f));
    case F::CPPTYPE_ENUM: return py::str((rep ? r->GetRepeatedEnum(m, f, i) : r->GetEnum(m, f))->name());
    case F::CPPTYPE_STRING: {
      const std::string v = rep ? r->GetRepeatedString(m, f, i) : r->GetString(m, f);
      if (f->type() == F::TYPE_BYTES) return py::bytes(v);
      return py::str(v);
    }
    case F::CPPTYPE_MESSAGE: return MessageDict(rep ? r->GetRepeatedMessage(m, f, i) : r->GetMessage(m, f));
  }
  return py::none();
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
      knn, {"lambda", "temperature", "k", "nprobe", "exact_distances", "min_lm_entropy", "min_pointers"}, "knn");
  if (d.contains("lambda")) out->set_lambda(d["lambda"].cast<float>());
  if (d.contains("temperature")) out->set_temperature(d["temperature"].cast<float>());
  if (d.contains("k")) out->set_k(d["k"].cast<int32_t>());
  if (d.contains("nprobe")) out->set_nprobe(d["nprobe"].cast<int32_t>());
  if (d.contains("exact_distances")) out->set_exact_distances(d["exact_distances"].cast<bool>());
  if (d.contains("min_lm_entropy")) out->set_min_lm_entropy(d["min_lm_entropy"].cast<float>());
  if (d.contains("min_pointers")) out->set_min_pointers(d["min_pointers"].cast<int32_t>());
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
  return MessageDict(t);
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
  return MessageDict(r);
}

py::dict ToPython(const v1::InfoResponse& r) {
  return MessageDict(r);
}

py::dict ToPython(const v1::AddDocumentsResponse& r) {
  return MessageDict(r);
}

}  // namespace rag::python

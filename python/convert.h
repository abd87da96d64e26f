// Between the rag.v1 messages the Engine speaks and the Python objects the
// module hands out: dicts of plain values, NumPy arrays for every vector
// (token ids, log-probs, distances, embeddings), and Python exceptions for
// a non-OK Status. The GIL must be held.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "proto/rag.pb.h"

namespace rag::python {

namespace py = pybind11;

// Thrown by Check for a non-OK Status; the module's exception translator
// turns it into rag.InvalidArgument (also a ValueError) for
// INVALID_ARGUMENT and OUT_OF_RANGE, else rag.Error (a RuntimeError), with
// the Status message and `.code` set to its code name ("NOT_FOUND", ...).
class StatusError : public std::exception {
 public:
  explicit StatusError(absl::Status status) : status_(std::move(status)), what_(status_.ToString()) {}
  const absl::Status& status() const { return status_; }
  const char* what() const noexcept override { return what_.c_str(); }

 private:
  absl::Status status_;
  std::string what_;
};

// Registers rag.Error, rag.InvalidArgument and the translator in module m.
void RegisterErrors(py::module_& m);

inline void Check(const absl::Status& status) {
  if (!status.ok()) throw StatusError(status);
}
template <typename T>
T Check(absl::StatusOr<T> value) {
  if (!value.ok()) throw StatusError(value.status());
  return std::move(*value);
}

// Options dicts -> messages. Unknown keys are a ValueError naming them, so
// a typo is not silently ignored. knn: lambda, temperature, k, nprobe,
// exact_distances, min_lm_entropy; retro: retrieval, leakage_filter,
// search_method; infgram: lambda, lambda_sparse (KnnOptions, RetroOptions,
// InfgramOptions in proto/rag.proto).
void FillKnnOptions(const py::object& knn, v1::KnnOptions* out);
void FillRetroOptions(const py::object& retro, v1::RetroOptions* out);
void FillInfgramOptions(const py::object& infgram, v1::InfgramOptions* out);
void FillRalmOptions(const py::object& ralm, v1::RalmOptions* out);

// Messages -> Python.
py::dict ToPython(const v1::Neighbour& n);
py::list ToPython(const v1::SearchResponse& r);  // one list of neighbour dicts per query
py::dict ToPython(const v1::ScoreResponse& r);
py::dict ToPython(const v1::NextTokenResponse& r);
py::dict ToPython(const v1::GenerateResponse& r);  // the final message
py::dict ToPython(const v1::StatsResponse& r);
py::dict ToPython(const v1::InfoResponse& r);
py::dict ToPython(const v1::AddDocumentsResponse& r);
py::dict ToPython(const v1::StageTimings& t);

template <typename T, typename Container>
py::array_t<T> ToArray(const Container& values) {
  py::array_t<T> a(static_cast<py::ssize_t>(values.size()));
  T* out = a.mutable_data();
  for (const auto& v : values) *out++ = static_cast<T>(v);
  return a;
}

}  // namespace rag::python

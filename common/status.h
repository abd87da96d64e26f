// Status helpers shared by every folder: early-return macros for
// absl::Status / absl::StatusOr (Abseil 20220623 has none of its own).
#pragma once

#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define RAG_STATUS_CONCAT_INNER_(a, b) a##b
#define RAG_STATUS_CONCAT_(a, b) RAG_STATUS_CONCAT_INNER_(a, b)

// Returns from the enclosing function when `expr` yields a non-OK status.
#define RAG_RETURN_IF_ERROR(expr)                  \
  do {                                             \
    ::absl::Status rag_status_ = (expr);           \
    if (!rag_status_.ok()) return rag_status_;     \
  } while (0)

// `RAG_ASSIGN_OR_RETURN(auto x, MakeX());` binds the value or returns the
// error status.
#define RAG_ASSIGN_OR_RETURN(lhs, expr) \
  RAG_ASSIGN_OR_RETURN_IMPL_(RAG_STATUS_CONCAT_(rag_statusor_, __LINE__), lhs, expr)
#define RAG_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  if (!tmp.ok()) return tmp.status();              \
  lhs = std::move(tmp).value()

namespace rag {

// Prefixes `status`'s message with `context` ("loading model: ..."), keeping
// its code. OK stays OK.
inline absl::Status Annotate(const absl::Status& status, const std::string& context) {
  if (status.ok()) return status;
  return absl::Status(status.code(), context + ": " + std::string(status.message()));
}

}  // namespace rag

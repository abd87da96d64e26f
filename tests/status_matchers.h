// GoogleTest helpers for absl::Status / StatusOr.
#pragma once

#include <gtest/gtest.h>

#include "absl/status/statusor.h"

#define RAG_ASSERT_OK(expr)                                          \
  do {                                                               \
    const ::absl::Status rag_s_ = ::rag::testing::ToStatus(expr);    \
    ASSERT_TRUE(rag_s_.ok()) << rag_s_.ToString();                   \
  } while (0)
#define RAG_EXPECT_OK(expr)                                          \
  do {                                                               \
    const ::absl::Status rag_s_ = ::rag::testing::ToStatus(expr);    \
    EXPECT_TRUE(rag_s_.ok()) << rag_s_.ToString();                   \
  } while (0)

namespace rag::testing {
inline absl::Status ToStatus(const absl::Status& s) { return s; }
template <typename T>
absl::Status ToStatus(const absl::StatusOr<T>& s) {
  return s.status();
}
}  // namespace rag::testing

// The message of an exception LibTorch threw, without the C++ backtrace a
// c10::Error carries (what users see in a Status).
#pragma once

#include <c10/util/Exception.h>

#include <exception>
#include <string>

namespace rag::lm::internal {

inline std::string TorchErrorText(const std::exception& e) {
  if (const auto* c10_error = dynamic_cast<const c10::Error*>(&e)) return c10_error->what_without_backtrace();
  return e.what();
}

}  // namespace rag::lm::internal

// Comparing rag.v1 responses across calls: everything but the per-stage
// timings, which are each call's own wall times. Header-only.
#pragma once

#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>

#include <string>

namespace rag::testing {

// The serialized response with its StageTimings (if it has any) cleared.
template <typename Response>
std::string SansTimings(Response r) {
  if (const auto* field = r.GetDescriptor()->FindFieldByName("timings")) r.GetReflection()->ClearField(&r, field);
  return r.SerializeAsString();
}

}  // namespace rag::testing

#include "retriever/internal/faiss_calls.h"

#include <faiss/IVFlib.h>
#include <faiss/IndexIVF.h>
#include <faiss/IndexPreTransform.h>
#include <faiss/IndexRefine.h>
#include <faiss/impl/FaissException.h>

#include <new>
#include <stdexcept>

namespace rag::retriever::internal {

thread_local const std::atomic<bool>* t_cancel = nullptr;

int64_t NlistOf(const faiss::Index* index) {
  const faiss::IndexIVF* ivf = faiss::ivflib::try_extract_index_ivf(index);
  return ivf == nullptr ? 0 : static_cast<int64_t>(ivf->nlist);
}

faiss::Index* CoreOf(faiss::Index* index) {
  if (auto* pre = dynamic_cast<faiss::IndexPreTransform*>(index)) index = pre->index;
  if (auto* refine = dynamic_cast<faiss::IndexRefine*>(index)) index = refine->base_index;
  return index;
}

absl::Status CurrentExceptionToStatus(absl::StatusCode faiss_code, const std::string& context) {
  try {
    throw;
  } catch (const faiss::FaissException& e) {
    if (t_cancel != nullptr && t_cancel->load()) return absl::CancelledError(context + ": cancelled");
    return absl::Status(faiss_code, context + ": " + e.what());
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(context + ": out of memory");
  } catch (const std::exception& e) {
    return absl::InternalError(context + ": " + e.what());
  } catch (...) {
    return absl::InternalError(context + ": unknown exception");
  }
}

}  // namespace rag::retriever::internal

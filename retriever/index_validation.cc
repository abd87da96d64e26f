#include "retriever/index_validation.h"

#include <algorithm>
#include <memory>
#include <vector>

#include "common/file_util.h"
#include "common/status.h"
#include "retriever/index_dir.h"

namespace rag::retriever {

absl::StatusOr<IndexValidation> ValidateIndex(const std::string& index_dir, int64_t sample, int nprobe) {
  RAG_ASSIGN_OR_RETURN(std::unique_ptr<IndexDir> dir, IndexDir::Open(index_dir, IndexDirOptions()));
  const Manifest& m = dir->manifest();
  IndexValidation v;
  v.index_factory = m.index_factory;
  v.vectors = m.vectors;
  bool ok = true;
  for (const auto& [file, unused_sum] : m.checksums) {
    auto match = dir->MatchesManifest(file);
    v.checksums[file] = match.ok() ? (*match ? "ok" : "MISMATCH") : std::string(match.status().message());
    ok = ok && match.ok() && *match;
  }
  auto store = dir->OpenChunkStore(/*writable=*/false);
  if (!store.ok()) {
    v.chunk_store = std::string(store.status().message());
    ok = false;
  } else {
    const bool counts = (*store)->num_chunks() == m.chunks && (*store)->num_documents() == m.documents;
    v.chunk_store = counts ? "ok" : "counts differ from the manifest";
    ok = ok && counts;
  }
  auto index = dir->OpenVectors();
  auto raw = ReadFile(dir->File(kEmbeddingsFile));
  if (!index.ok() || !raw.ok()) {
    v.index_unreadable = true;
    v.error = std::string(!index.ok() ? index.status().message() : raw.status().message());
    ok = false;
  } else if (static_cast<int64_t>(raw->size()) == m.vectors * m.dim * 4 && m.vectors > 0) {
    // Recall@10 of the served index against exact search, on a seeded sample
    // of the stored vectors used as queries.
    const int dim = m.dim;
    const float* x = reinterpret_cast<const float*>(raw->data());
    const int64_t nq = std::min<int64_t>(sample, m.vectors);
    std::vector<float> queries;
    uint64_t state = 1234;
    for (int64_t i = 0; i < nq; ++i) {
      state = state * 6364136223846793005ULL + 1442695040888963407ULL;
      const int64_t row = static_cast<int64_t>((state >> 33) % static_cast<uint64_t>(m.vectors));
      queries.insert(queries.end(), x + row * dim, x + (row + 1) * dim);
    }
    auto exact = VectorIndex::Create(dim, "Flat");
    const int k = static_cast<int>(std::min<int64_t>(10, m.vectors));
    std::vector<float> d1, d2;
    std::vector<int64_t> approx_ids, exact_ids;
    absl::Status s = exact.ok() ? (*exact)->Add(x, m.vectors) : exact.status();
    if (s.ok()) s = (*index)->Search(queries.data(), nq, k, nprobe, &d1, &approx_ids);
    if (s.ok()) s = (*exact)->Search(queries.data(), nq, k, 0, &d2, &exact_ids);
    RAG_RETURN_IF_ERROR(s);
    v.recall_at_10 = RecallAtK(approx_ids, exact_ids, nq, k);
    v.recall_queries = nq;
    v.nprobe = nprobe;
  } else {
    v.error = "embeddings.f32 has the wrong size";
    ok = false;
  }
  v.valid = ok;
  return v;
}

}  // namespace rag::retriever

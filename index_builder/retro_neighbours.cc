#include "index_builder/retro_neighbours.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "common/binary_file.h"
#include "common/file_util.h"
#include "common/progress.h"
#include "common/status.h"
#include "retriever/neighbour_set.h"

namespace rag::index_builder {
namespace {

constexpr Magic kNeighboursMagic = {'R', 'A', 'G', 'R', 'N', 'B', '0', '1'};
constexpr uint32_t kFormatVersion = 1;
constexpr size_t kHeaderBytes = 64;

}  // namespace

std::string IndexFingerprint(const retriever::Manifest& m) {
  std::string f = "embedder=" + m.embedder_hash + ";tokenizer=" + m.tokenizer_hash +
                  ";chunk=" + std::to_string(m.chunk_tokens) + "+" + std::to_string(m.continuation_tokens) +
                  ";chunks=" + std::to_string(m.chunks);
  for (const char* file : {retriever::kChunkIndexFile, retriever::kEmbeddingsFile}) {
    auto it = m.checksums.find(file);
    f += std::string(";") + file + "=" + (it == m.checksums.end() ? "" : it->second);
  }
  return f;
}

std::string TableFingerprint(const retriever::Manifest& manifest, const RetroNeighbourOptions& o) {
  // Unaligned tables keep the fingerprint they had before alignment existed.
  std::string f = IndexFingerprint(manifest);
  if (o.align > 0) f += ";align=" + std::to_string(o.align) + "/" + std::to_string(o.chunk);
  if (o.method != "dense") f += ";search=" + o.method;
  if (o.own_document_filter > 0) f += ";own-document-filter=" + std::to_string(o.own_document_filter);
  return f;
}

absl::StatusOr<RetroNeighbourTable> ComputeRetroNeighbours(const retriever::Retriever& retriever, int32_t pad_token,
                                                           const RetroNeighbourOptions& o) {
  if (o.k < 1 || o.k > 64) return absl::InvalidArgumentError("RETRO neighbours: k must be in [1, 64]");
  if (o.tokens < 1) return absl::InvalidArgumentError("RETRO neighbours: tokens per neighbour must be >= 1");
  if (o.method != "dense" && o.method != "bm25") {
    return absl::InvalidArgumentError("RETRO neighbours: search must be dense or bm25, got '" + o.method + "'");
  }
  if (o.own_document_filter < 0)
    return absl::InvalidArgumentError("RETRO neighbours: own_document_filter must be >= 0");
  const bool bm25 = o.method == "bm25", own = o.own_document_filter > 0;
  const retriever::Manifest manifest = retriever.manifest();
  const retriever::ChunkStore& store = retriever.chunk_store();
  const int64_t n = store.num_chunks();
  const int dim = manifest.dim;
  if (n != retriever.num_vectors() || n != manifest.chunks) {
    return absl::FailedPreconditionError("index '" + retriever.index_dir() +
                                         "' has unindexed chunks (a live add not yet checkpointed); open it "
                                         "writable once or restart its server to catch up");
  }
  const std::string emb_path = retriever.dir().File(retriever::kEmbeddingsFile);
  RAG_ASSIGN_OR_RETURN(std::string emb, ReadFile(emb_path));
  if (dim <= 0 || emb.size() != static_cast<size_t>(n) * static_cast<size_t>(dim) * sizeof(float)) {
    return absl::DataLossError("'" + emb_path + "' holds " + std::to_string(emb.size()) + " bytes, not " +
                               std::to_string(n) + " rows of dim " + std::to_string(dim));
  }
  const float* rows = reinterpret_cast<const float*>(emb.data());

  RetroNeighbourTable t;
  t.chunks = n;
  t.k = o.k;
  t.tokens = o.tokens;
  t.fingerprint = TableFingerprint(manifest, o);
  t.ids.assign(static_cast<size_t>(n * o.k), -1);
  t.token_ids.assign(static_cast<size_t>(n * o.k * o.tokens), pad_token);

  // Chunks of a document are consecutive ids, so a document is one batch
  // whose queries all exclude that document.
  std::vector<std::pair<std::string, std::pair<int64_t, int64_t>>> docs;  // doc id -> [first, end)
  std::vector<std::vector<retriever::Token>> queries;  // the chunks, when aligning
  RAG_RETURN_IF_ERROR(store.ForEachChunk(0, [&](const retriever::ChunkRecord& c) {
    if (docs.empty() || docs.back().first != c.doc_id) docs.push_back({c.doc_id, {c.id, c.id}});
    docs.back().second.second = c.id + 1;
    if (o.align > 0 || bm25 || own) queries.push_back(c.tokens);
    return true;
  }));
  retriever::NeighbourSetOptions so;
  so.k = o.k;
  so.tokens = o.tokens;
  so.pad = pad_token;
  so.align = o.align;
  so.chunk = o.chunk;
  // 0 unless the chunk's own document is searched.
  so.leakage_filter = o.own_document_filter;
  // With the own document searched, the query chunk itself is the nearest
  // and falls to the filter (its continuation is the target): spares.
  so.extra_candidates = 2;
  so.method = o.method;
  so.nprobe = o.nprobe;
  Progress progress("retro: neighbours", n, "chunks");
  for (const auto& [doc_id, range] : docs) {
    so.exclude_doc_ids.clear();
    if (!own) so.exclude_doc_ids = {doc_id};
    const int64_t first = range.first, count = range.second - range.first;
    retriever::NeighbourQueries nq;
    nq.embeddings = rows + first * dim;
    nq.rows = count;
    if (!queries.empty()) nq.tokens.assign(queries.begin() + first, queries.begin() + first + count);
    // The set of chunk q helps predict chunk q + 1 (RetroLM's shift).
    if (own) {
      for (int64_t q = 0; q < count; ++q) {
        nq.targets.push_back(q + 1 < count ? queries[static_cast<size_t>(first + q + 1)]
                                           : std::vector<retriever::Token>());
      }
    }
    RAG_ASSIGN_OR_RETURN(std::vector<retriever::NeighbourSet> sets, retriever::BuildNeighbourSets(retriever, nq, so));
    for (int64_t q = 0; q < count; ++q) {
      const retriever::NeighbourSet& set = sets[static_cast<size_t>(q)];
      std::copy(set.chunk_ids.begin(), set.chunk_ids.end(), t.ids.begin() + (first + q) * o.k);
      std::copy(set.tokens.begin(), set.tokens.end(), t.token_ids.begin() + (first + q) * o.k * o.tokens);
    }
    if (o.show_progress) progress.Update(range.second);
  }
  if (o.show_progress) progress.Finish();
  return t;
}

absl::Status SaveRetroNeighbours(const RetroNeighbourTable& t, const std::string& path) {
  const size_t ids_bytes = t.ids.size() * sizeof(int64_t);
  const size_t tok_bytes = t.token_ids.size() * sizeof(int32_t);
  if (t.ids.size() != static_cast<size_t>(t.chunks * t.k) ||
      t.token_ids.size() != static_cast<size_t>(t.chunks * t.k * t.tokens)) {
    return absl::InvalidArgumentError("RETRO neighbour table has inconsistent sizes");
  }
  std::string out(kHeaderBytes + ids_bytes + tok_bytes, '\0');
  PutMagic(out.data(), kNeighboursMagic);
  PutU32(out.data() + 8, kFormatVersion);
  PutU32(out.data() + 12, static_cast<uint32_t>(t.k));
  PutU32(out.data() + 16, static_cast<uint32_t>(t.tokens));
  PutI64(out.data() + 24, t.chunks);
  PutU64(out.data() + 32, Checksum64(t.fingerprint));
  std::memcpy(out.data() + kHeaderBytes, t.ids.data(), ids_bytes);
  std::memcpy(out.data() + kHeaderBytes + ids_bytes, t.token_ids.data(), tok_bytes);
  PutU64(out.data() + 40, Checksum64(out.data() + kHeaderBytes, out.size() - kHeaderBytes));
  return WriteFileAtomic(path, out);
}

absl::StatusOr<RetroNeighbourTable> LoadRetroNeighbours(const std::string& path,
                                                         const std::string& expected_fingerprint, int k,
                                                         int tokens) {
  if (!std::filesystem::exists(path)) return absl::NotFoundError("no RETRO neighbour cache at '" + path + "'");
  RAG_ASSIGN_OR_RETURN(std::string in, ReadFile(path));
  if (in.size() < kHeaderBytes || !HasMagic(in.data(), in.size(), kNeighboursMagic)) {
    return absl::DataLossError("'" + path + "' is not a RETRO neighbour cache (bad magic or truncated header)");
  }
  if (const uint32_t version = GetU32(in.data() + 8); version != kFormatVersion) {
    return absl::FailedPreconditionError("'" + path + "' has format version " + std::to_string(version) +
                                         "; this binary reads " + std::to_string(kFormatVersion));
  }
  RetroNeighbourTable t;
  t.k = static_cast<int>(GetU32(in.data() + 12));
  t.tokens = static_cast<int>(GetU32(in.data() + 16));
  t.chunks = GetI64(in.data() + 24);
  const size_t ids = static_cast<size_t>(t.chunks) * static_cast<size_t>(t.k);
  const size_t toks = ids * static_cast<size_t>(t.tokens);
  if (t.chunks < 0 || in.size() != kHeaderBytes + ids * 8 + toks * 4) {
    return absl::DataLossError("'" + path + "' is truncated or has trailing bytes");
  }
  if (GetU64(in.data() + 40) != Checksum64(in.data() + kHeaderBytes, in.size() - kHeaderBytes)) {
    return absl::DataLossError("'" + path + "' is corrupt (payload checksum mismatch)");
  }
  if (GetU64(in.data() + 32) != Checksum64(expected_fingerprint)) {
    return absl::FailedPreconditionError(
        "'" + path +
        "' was computed from another index (or this one before it changed), or with other neighbour alignment");
  }
  if (t.k != k || t.tokens != tokens) {
    return absl::FailedPreconditionError("'" + path + "' holds " + std::to_string(t.k) + " neighbours of " +
                                         std::to_string(t.tokens) + " tokens; " + std::to_string(k) + " of " +
                                         std::to_string(tokens) + " are wanted");
  }
  t.fingerprint = expected_fingerprint;
  t.ids.resize(ids);
  t.token_ids.resize(toks);
  std::memcpy(t.ids.data(), in.data() + kHeaderBytes, ids * 8);
  std::memcpy(t.token_ids.data(), in.data() + kHeaderBytes + ids * 8, toks * 4);
  return t;
}

absl::StatusOr<RetroNeighbourTable> LoadOrComputeRetroNeighbours(const retriever::Retriever& retriever,
                                                                  int32_t pad_token,
                                                                  const RetroNeighbourOptions& options,
                                                                  const std::string& path) {
  auto cached = LoadRetroNeighbours(path, TableFingerprint(retriever.manifest(), options), options.k, options.tokens);
  if (cached.ok()) {
    if (options.show_progress) std::fprintf(stderr, "retro: neighbours from the cache %s\n", path.c_str());
    return cached;
  }
  if (!absl::IsNotFound(cached.status())) {
    std::fprintf(stderr, "retro: not using the neighbour cache: %s\n", cached.status().ToString().c_str());
  }
  RAG_ASSIGN_OR_RETURN(RetroNeighbourTable t, ComputeRetroNeighbours(retriever, pad_token, options));
  RAG_RETURN_IF_ERROR(SaveRetroNeighbours(t, path));
  return t;
}

}  // namespace rag::index_builder

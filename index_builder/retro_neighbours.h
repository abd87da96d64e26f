// RETRO's neighbours for the chunks of an index, precomputed once for
// training: for every indexed chunk, its K nearest chunks from OTHER
// documents (RETRO's rule against leakage: a chunk never retrieves its own
// document), each as R token ids (the neighbour chunk then its
// continuation, padded with end-of-text where the document ends).
//
// The table is cached in a file whose header holds the fingerprint of the
// index it came from (the manifest's model hashes, chunk count and file
// checksums), so a cache from another index, or from this index before a
// rebuild or a live add, is refused rather than silently used.
//
// File layout (little-endian):
//   offset 0  "RAGRNB01"  magic
//          8  u32 format version (1), u32 K, u32 R, u32 reserved
//         24  u64 chunks (N)
//         32  u64 XXH3-64 of the index fingerprint
//         40  u64 XXH3-64 of the payload
//         48  16 zero bytes
//         64  payload: i64 neighbour chunk ids [N, K] (-1: none),
//                      i32 tokens [N, K, R]
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "retriever/manifest.h"
#include "retriever/retriever.h"

namespace rag::index_builder {

inline constexpr char kRetroNeighboursFile[] = "retro_neighbours.bin";

struct RetroNeighbourOptions {
  int k = 2;                 // neighbours per chunk. Default: 2 (RETRO's)
  int tokens = 128;          // R: chunk + continuation. Default: 128
  int nprobe = retriever::kDefaultNprobe;  // IVF lists visited. Default: 16
  bool show_progress = true; // progress with rate and ETA on stderr
  // Re-cut neighbours on their query chunk (retriever::AlignNeighbourTokens)
  // when they hold its last `align` tokens or more, with `chunk` tokens
  // before the match's end; 0 = as stored. Part of the cache's fingerprint.
  // Default: 0
  int64_t align = 0;
  int64_t chunk = 64;
  // How a chunk's neighbours are found: "dense" (its stored embedding and
  // the FAISS index) or "bm25" (its tokens, retriever::SearchOptions::method:
  // finds passages that repeat the chunk's words). Part of the cache's
  // fingerprint. Default: "dense"
  std::string method = "dense";
  // 0: RETRO's training rule, a chunk never retrieves its own document.
  // > 0: its own document is searched too, and a neighbour is dropped (the
  // next candidate taking its place) when it shares a run of this many
  // tokens with the chunk the set helps predict (the chunk after the query),
  // the leakage filter `rag eval perplexity` applies with the own document
  // allowed. An experiment for corpora whose documents do not repeat each
  // other (Brown): the other chunks of a chunk's document are the only ones
  // that share its names. Part of the cache's fingerprint. Default: 0
  int64_t own_document_filter = 0;
};

struct RetroNeighbourTable {
  int64_t chunks = 0;  // N: one row per chunk id of the index
  int k = 0;
  int tokens = 0;                  // R
  std::string fingerprint;         // of the index (IndexFingerprint)
  std::vector<int64_t> ids;        // [N, K] neighbour chunk ids, -1 = none
  std::vector<int32_t> token_ids;  // [N, K, R]

  bool has(int64_t chunk, int j) const { return ids[static_cast<size_t>(chunk * k + j)] >= 0; }
  const int32_t* tokens_of(int64_t chunk, int j) const {
    return token_ids.data() + (chunk * k + j) * static_cast<int64_t>(tokens);
  }
};

// What a neighbour table depends on: the index's embedder and tokenizer,
// chunking, chunk count and the checksums of its vectors and FAISS index.
std::string IndexFingerprint(const retriever::Manifest& manifest);
// The index's fingerprint and how neighbours were laid out (alignment).
std::string TableFingerprint(const retriever::Manifest& manifest, const RetroNeighbourOptions& options);

// Searches the index for every chunk's neighbours (from the stored
// embeddings.f32 rows, so no chunk is embedded again), excluding the
// chunk's own document (or leakage-filtering it: own_document_filter).
// `pad_token` fills neighbours shorter than R.
// The table's fingerprint is TableFingerprint(index, options).
absl::StatusOr<RetroNeighbourTable> ComputeRetroNeighbours(const retriever::Retriever& retriever,
                                                            int32_t pad_token, const RetroNeighbourOptions& options);

// Writes the table atomically (a crash leaves the old file or none).
absl::Status SaveRetroNeighbours(const RetroNeighbourTable& table, const std::string& path);

// Reads a table. NotFound when the file does not exist; DataLoss when it is
// truncated or corrupt; FailedPrecondition when it was computed from
// another index than `expected_fingerprint` describes, or with another K or R.
absl::StatusOr<RetroNeighbourTable> LoadRetroNeighbours(const std::string& path,
                                                         const std::string& expected_fingerprint, int k, int tokens);

// The cached table at `path` when it matches the index, else computed and
// cached there (saying on stderr why the cache was not used).
absl::StatusOr<RetroNeighbourTable> LoadOrComputeRetroNeighbours(const retriever::Retriever& retriever,
                                                                  int32_t pad_token,
                                                                  const RetroNeighbourOptions& options,
                                                                  const std::string& path);

}  // namespace rag::index_builder

#include "index_builder/index_merge.h"

#include <algorithm>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>

#include "common/file_util.h"
#include "common/progress.h"
#include "common/status.h"
#include "retriever/chunk_store.h"
#include "retriever/datastore.h"
#include "retriever/token_counts.h"
#include "retriever/vector_index.h"

namespace rag::index_builder {
namespace {

namespace fs = std::filesystem;
using retriever::ChunkStore;
using retriever::ChunkStoreOptions;
using retriever::Manifest;
using retriever::VectorIndex;

// Datastore rows copied per Append.
constexpr int64_t kDatastoreCopyRows = 4096;

absl::Status Differs(const std::string& dir, const std::string& field, const std::string& got,
                     const std::string& want) {
  return absl::FailedPreconditionError("shard '" + dir + "': " + field + " is '" + got + "', the first shard's is '" +
                                       want + "'; shards must be built on one rag build --train-only index");
}

// The fields every shard must share with `first`; FailedPrecondition naming
// `dir` and the field otherwise.
absl::Status CheckSameBuild(const std::string& dir, const Manifest& m, const Manifest& first) {
  if (m.trained_index_hash.empty()) {
    return absl::FailedPreconditionError("shard '" + dir +
                                         "': trained_index_hash is empty (it trained its own index); build every "
                                         "shard with --trained from one rag build --train-only");
  }
  const std::pair<const char*, std::pair<std::string, std::string>> fields[] = {
      {"trained_index_hash", {m.trained_index_hash, first.trained_index_hash}},
      {"model_hash", {m.model_hash, first.model_hash}},
      {"tokenizer_hash", {m.tokenizer_hash, first.tokenizer_hash}},
      {"embedder_hash", {m.embedder_hash, first.embedder_hash}},
      {"chunk_tokens", {std::to_string(m.chunk_tokens), std::to_string(first.chunk_tokens)}},
      {"continuation_tokens", {std::to_string(m.continuation_tokens), std::to_string(first.continuation_tokens)}},
      {"dim", {std::to_string(m.dim), std::to_string(first.dim)}},
      {"index_factory", {m.index_factory, first.index_factory}},
      {"shard_count", {std::to_string(m.shard_count), std::to_string(first.shard_count)}},
      {"datastore", {m.datastore_keys > 0 ? "yes" : "no", first.datastore_keys > 0 ? "yes" : "no"}},
      {"datastore.trained_index_hash", {m.datastore_trained_index_hash, first.datastore_trained_index_hash}},
      {"datastore.index_factory", {m.datastore_factory, first.datastore_factory}},
  };
  for (const auto& [field, values] : fields) {
    if (values.first != values.second) return Differs(dir, field, values.first, values.second);
  }
  if (m.datastore_keys > 0 && m.datastore_trained_index_hash.empty()) {
    return absl::FailedPreconditionError("shard '" + dir +
                                         "': datastore.trained_index_hash is empty (its datastore trained its own "
                                         "key index); build with --trained from rag build --train-only --datastore");
  }
  if (m.documents_added != 0) {
    return absl::FailedPreconditionError("shard '" + dir + "': documents_added is " +
                                         std::to_string(m.documents_added) +
                                         ": documents added while serving are not merged; rebuild the shard");
  }
  return absl::OkStatus();
}

// The shard's chunk store, read-only, with its manifest's chunking.
absl::StatusOr<std::unique_ptr<ChunkStore>> OpenShardStore(const std::string& dir, const Manifest& m) {
  ChunkStoreOptions so;
  so.chunk_tokens = m.chunk_tokens;
  so.continuation_tokens = m.continuation_tokens;
  so.create_if_missing = false;
  so.read_only = true;
  auto store = ChunkStore::Open((fs::path(dir) / retriever::kChunkStoreDir).string(), so);
  if (!store.ok()) return Annotate(store.status(), "shard '" + dir + "'");
  return store;
}

// Appends the shard's documents to `out` in their order, so its chunk c
// becomes chunk first + c of the merged store.
absl::Status CopyDocuments(const std::string& dir, const ChunkStore& shard, ChunkStore& out) {
  const int64_t first = out.num_chunks();
  absl::Status status;
  int64_t last_doc = -1;
  absl::Status visit = shard.ForEachChunk(0, [&](const retriever::ChunkRecord& rec) {
    if (rec.doc_index == last_doc) return true;
    last_doc = rec.doc_index;
    auto doc = shard.GetDocument(rec.doc_id);
    if (!doc.ok()) {
      status = doc.status();
      return false;
    }
    auto ids = out.AddDocument(doc->id, doc->tokens, doc->metadata_json);
    if (!ids.ok()) {
      status = ids.status();
    } else if (ids->empty() || ids->front() != first + doc->first_chunk) {
      status = absl::DataLossError("document '" + doc->id + "' does not start at its chunk " +
                                   std::to_string(doc->first_chunk));
    }
    return status.ok();
  });
  RAG_RETURN_IF_ERROR(Annotate(visit, "shard '" + dir + "'"));
  RAG_RETURN_IF_ERROR(Annotate(status, "shard '" + dir + "'"));
  if (out.num_chunks() - first != shard.num_chunks()) {
    return absl::DataLossError("shard '" + dir + "': copied " + std::to_string(out.num_chunks() - first) +
                               " chunks of " + std::to_string(shard.num_chunks()));
  }
  return absl::OkStatus();
}

// Appends `from` (exactly `bytes` long) to the open stream `to`.
absl::Status AppendFile(const std::string& from, int64_t bytes, std::ofstream& to) {
  std::error_code ec;
  const auto size = fs::file_size(from, ec);
  if (ec || static_cast<int64_t>(size) != bytes) {
    return absl::DataLossError("'" + from + "' should hold " + std::to_string(bytes) + " bytes");
  }
  std::ifstream in(from, std::ios::binary);
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    to.write(buf.data(), in.gcount());
  }
  if (!in.eof() || !to) return absl::InternalError("copying '" + from + "' failed");
  return absl::OkStatus();
}

// Shard 0's index with every other shard's vectors moved into it.
absl::StatusOr<std::unique_ptr<VectorIndex>> MergeIndexes(const std::vector<std::string>& paths) {
  RAG_ASSIGN_OR_RETURN(auto merged, VectorIndex::Open(paths[0]));
  for (size_t s = 1; s < paths.size(); ++s) {
    RAG_ASSIGN_OR_RETURN(auto other, VectorIndex::Open(paths[s]));
    RAG_RETURN_IF_ERROR(Annotate(merged->MergeFrom(*other), "'" + paths[s] + "'"));
  }
  return merged;
}

// The datastores concatenated (document numbers shifted by doc_offset[s])
// and their key indexes merged, into `dir`.
absl::StatusOr<retriever::DatastoreInfo> MergeDatastores(const std::vector<std::string>& dirs,
                                                         const std::vector<int64_t>& doc_offset,
                                                         const std::string& dir) {
  std::unique_ptr<retriever::DatastoreWriter> writer;
  std::vector<std::string> index_paths;
  std::vector<float> keys;
  std::vector<int32_t> values, docs;
  for (size_t s = 0; s < dirs.size(); ++s) {
    const std::string ds_dir = (fs::path(dirs[s]) / retriever::kDatastoreDir).string();
    RAG_ASSIGN_OR_RETURN(auto ds, retriever::Datastore::Open(ds_dir));
    if (ds->added_size() != 0) return absl::FailedPreconditionError("'" + ds_dir + "' holds keys added while serving");
    const int dim = ds->dim();  // the model's width, not the embedder's
    if (writer == nullptr) {
      RAG_ASSIGN_OR_RETURN(writer, retriever::DatastoreWriter::Create(dir, dim, /*resume=*/false));
    }
    for (int64_t r = 0; r < ds->size(); r += kDatastoreCopyRows) {
      const int64_t n = std::min(kDatastoreCopyRows, ds->size() - r);
      keys.resize(static_cast<size_t>(n * dim));
      values.resize(static_cast<size_t>(n));
      docs.resize(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i) {
        ds->Key(r + i, keys.data() + i * dim);  // fp16 -> float -> fp16 again in Append: exact
        values[static_cast<size_t>(i)] = ds->value(r + i);
        docs[static_cast<size_t>(i)] = static_cast<int32_t>(ds->doc(r + i) + doc_offset[s]);
      }
      RAG_RETURN_IF_ERROR(writer->Append(keys.data(), values.data(), docs.data(), n));
    }
    index_paths.push_back((fs::path(ds_dir) / retriever::kDatastoreIndexFile).string());
  }
  RAG_RETURN_IF_ERROR(writer->Sync());
  RAG_ASSIGN_OR_RETURN(auto merged, MergeIndexes(index_paths));
  return writer->FinishWithIndex(*merged);
}

}  // namespace

absl::StatusOr<std::vector<Manifest>> CheckShardsMergeable(const std::vector<std::string>& shard_dirs) {
  if (shard_dirs.empty()) return absl::InvalidArgumentError("no shards to merge");
  std::vector<std::pair<Manifest, std::string>> shards;
  for (const auto& dir : shard_dirs) {
    auto m = Manifest::Load(dir);
    if (!m.ok()) return Annotate(m.status(), "shard '" + dir + "'");
    shards.emplace_back(std::move(m).value(), dir);
  }
  for (const auto& [m, dir] : shards) RAG_RETURN_IF_ERROR(CheckSameBuild(dir, m, shards[0].first));
  const int n = shards[0].first.shard_count;
  std::map<int, std::string> by_id;
  for (const auto& [m, dir] : shards) {
    auto [it, inserted] = by_id.emplace(m.shard_id, dir);
    if (!inserted) {
      return absl::InvalidArgumentError("shards '" + it->second + "' and '" + dir + "' are both shard_id " +
                                        std::to_string(m.shard_id) + " of " + std::to_string(n));
    }
  }
  for (int i = 0; i < n; ++i) {
    if (by_id.count(i) == 0) {
      return absl::InvalidArgumentError("shard_id " + std::to_string(i) + " of " + std::to_string(n) +
                                        " is missing: give all " + std::to_string(n) + " shards");
    }
  }
  std::sort(shards.begin(), shards.end(),
            [](const auto& a, const auto& b) { return a.first.shard_id < b.first.shard_id; });
  std::vector<Manifest> out;
  for (auto& s : shards) out.push_back(std::move(s.first));
  return out;
}

absl::StatusOr<Manifest> MergeShards(const std::vector<std::string>& shard_dirs, const MergeOptions& o) {
  if (o.out_dir.empty()) return absl::InvalidArgumentError("no output index directory given");
  RAG_ASSIGN_OR_RETURN(std::vector<Manifest> manifests, CheckShardsMergeable(shard_dirs));
  std::vector<std::string> dirs(manifests.size());  // in shard_id order
  for (const auto& dir : shard_dirs) {
    RAG_ASSIGN_OR_RETURN(Manifest m, Manifest::Load(dir));
    dirs[static_cast<size_t>(m.shard_id)] = dir;
  }
  const fs::path out(o.out_dir);
  const fs::path work = o.out_dir + ".partial";
  std::error_code ec;
  for (const auto& dir : dirs) {
    if (fs::exists(out) && fs::equivalent(out, dir, ec)) {
      return absl::FailedPreconditionError("--out '" + o.out_dir + "' is one of the shards");
    }
  }
  if (fs::exists(out) && !o.overwrite) {
    return absl::FailedPreconditionError("'" + o.out_dir + "' already exists; pass --overwrite to replace it");
  }
  fs::remove_all(work, ec);  // a merge is not resumed: redo what a killed one left
  fs::create_directories(work, ec);
  if (ec) return absl::InternalError("creating '" + work.string() + "': " + ec.message());

  const Manifest& first = manifests[0];
  Manifest m = first;
  m.shard_id = 0;
  m.shard_count = 1;
  m.created_at = retriever::NowUtc();
  m.documents = m.tokens = m.bytes = m.chunks = 0;
  m.checksums.clear();
  std::vector<int64_t> doc_offset;
  {
    ChunkStoreOptions so;
    so.chunk_tokens = first.chunk_tokens;
    so.continuation_tokens = first.continuation_tokens;
    so.sync_writes = false;  // one Flush at the end; a crash leaves only OUT.partial
    RAG_ASSIGN_OR_RETURN(auto store, ChunkStore::Open((work / retriever::kChunkStoreDir).string(), so));
    std::ofstream embeddings(work / retriever::kEmbeddingsFile, std::ios::binary | std::ios::trunc);
    Progress progress("merge: shards", static_cast<int64_t>(dirs.size()), "shards");
    for (size_t s = 0; s < dirs.size(); ++s) {
      doc_offset.push_back(store->num_documents());
      RAG_ASSIGN_OR_RETURN(auto shard, OpenShardStore(dirs[s], manifests[s]));
      if (shard->num_chunks() != manifests[s].chunks) {
        return absl::DataLossError("shard '" + dirs[s] + "': its chunk store holds " +
                                   std::to_string(shard->num_chunks()) + " chunks, its manifest " +
                                   std::to_string(manifests[s].chunks));
      }
      RAG_RETURN_IF_ERROR(CopyDocuments(dirs[s], *shard, *store));
      RAG_RETURN_IF_ERROR(AppendFile((fs::path(dirs[s]) / retriever::kEmbeddingsFile).string(),
                                     manifests[s].chunks * manifests[s].dim * static_cast<int64_t>(sizeof(float)),
                                     embeddings));
      m.bytes += manifests[s].bytes;
      if (o.show_progress) progress.Update(static_cast<int64_t>(s + 1));
    }
    embeddings.close();
    if (!embeddings) return absl::InternalError("writing the merged embeddings.f32 failed (disk full?)");
    RAG_RETURN_IF_ERROR(store->Flush());
    if (o.show_progress) progress.Finish();
    m.documents = store->num_documents();
    m.tokens = store->num_tokens();
    m.chunks = store->num_chunks();
    // Exact occurrence counts over the merged documents, in their new order.
    RAG_ASSIGN_OR_RETURN(auto doc_tokens, retriever::DocumentTokens(*store));
    RAG_ASSIGN_OR_RETURN(auto counts, retriever::TokenCounts::Build(std::move(doc_tokens)));
    RAG_RETURN_IF_ERROR(counts.Save((work / retriever::kTokenCountsFile).string()));
  }
  {
    std::vector<std::string> paths;
    for (const auto& dir : dirs) paths.push_back((fs::path(dir) / retriever::kChunkIndexFile).string());
    RAG_ASSIGN_OR_RETURN(auto merged, MergeIndexes(paths));
    if (merged->size() != m.chunks) {
      return absl::DataLossError("the merged FAISS index holds " + std::to_string(merged->size()) +
                                 " vectors, the merged chunk store " + std::to_string(m.chunks) + " chunks");
    }
    RAG_RETURN_IF_ERROR(merged->Save((work / retriever::kChunkIndexFile).string()));
    m.vectors = merged->size();
  }
  {
    RAG_ASSIGN_OR_RETURN(std::string tokenizer,
                         ReadFile((fs::path(dirs[0]) / retriever::kIndexTokenizerFile).string()));
    RAG_RETURN_IF_ERROR(WriteFileAtomic((work / retriever::kIndexTokenizerFile).string(), tokenizer));
  }
  if (first.datastore_keys > 0) {
    RAG_ASSIGN_OR_RETURN(retriever::DatastoreInfo info,
                         MergeDatastores(dirs, doc_offset, (work / retriever::kDatastoreDir).string()));
    m.datastore_keys = info.rows;
    for (const auto& [file, sum] : info.checksums) {
      m.checksums[std::string(retriever::kDatastoreDir) + "/" + file] = sum;
    }
  }
  for (const char* file : {retriever::kChunkIndexFile, retriever::kEmbeddingsFile, retriever::kTokenCountsFile,
                           retriever::kIndexTokenizerFile}) {
    RAG_ASSIGN_OR_RETURN(m.checksums[file], HashFileHex((work / file).string()));
  }
  RAG_RETURN_IF_ERROR(m.Save(work.string()));

  const fs::path old = o.out_dir + ".old";
  if (fs::exists(out)) {
    fs::remove_all(old, ec);
    RAG_RETURN_IF_ERROR(DurableRename(out.string(), old.string()));
  }
  RAG_RETURN_IF_ERROR(DurableRename(work.string(), out.string()));
  fs::remove_all(old, ec);
  return m;
}

}  // namespace rag::index_builder

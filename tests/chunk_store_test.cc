// Tests for rag::retriever::ChunkStore: RETRO chunking, dense ids,
// persistence, error codes, corrupt stores and concurrent readers.
#include "retriever/chunk_store.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "tests/status_matchers.h"
#include "tests/test_util.h"

namespace rag::retriever {
namespace {

namespace fs = std::filesystem;
using ::rag::testing::TempDir;

ChunkStoreOptions Opts(int32_t chunk, int32_t cont) {
  ChunkStoreOptions o;
  o.chunk_tokens = chunk;
  o.continuation_tokens = cont;
  return o;
}

std::vector<Token> Iota(int n, Token start = 0) {
  std::vector<Token> v(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) v[static_cast<size_t>(i)] = start + i;
  return v;
}

std::unique_ptr<ChunkStore> MustOpen(const std::string& path, const ChunkStoreOptions& options) {
  auto store = ChunkStore::Open(path, options);
  EXPECT_TRUE(store.ok()) << store.status().ToString();
  return store.ok() ? std::move(store).value() : nullptr;
}

// A seeded corpus of token documents with lengths 1..max_len, including
// exact multiples of a chunk so the boundary cases appear.
struct TokenDoc {
  std::string id;
  std::vector<Token> tokens;
};
std::vector<TokenDoc> MakeTokenCorpus(int n_docs, uint64_t seed, int max_len) {
  std::mt19937_64 rng(seed);
  std::vector<TokenDoc> docs;
  for (int d = 0; d < n_docs; ++d) {
    int len = 1 + static_cast<int>(rng() % static_cast<uint64_t>(max_len));
    if (d % 7 == 3) len = 32;  // an exact multiple of the test's chunk size
    TokenDoc doc{"doc" + std::to_string(d), {}};
    for (int i = 0; i < len; ++i) doc.tokens.push_back(static_cast<Token>(rng() % 50000) - 100);
    docs.push_back(std::move(doc));
  }
  return docs;
}

// Brute-force reference chunking, written independently of the store.
std::vector<ChunkRecord> ReferenceChunks(const std::vector<TokenDoc>& docs, int chunk, int cont) {
  std::vector<ChunkRecord> out;
  for (size_t d = 0; d < docs.size(); ++d) {
    const auto& t = docs[d].tokens;
    for (size_t off = 0; off < t.size(); off += static_cast<size_t>(chunk)) {
      ChunkRecord r;
      r.id = static_cast<ChunkId>(out.size());
      r.doc_id = docs[d].id;
      r.doc_index = static_cast<int64_t>(d);
      r.offset = static_cast<int64_t>(off);
      for (size_t i = off; i < t.size() && i < off + static_cast<size_t>(chunk); ++i) r.tokens.push_back(t[i]);
      const size_t end = off + r.tokens.size();
      for (size_t i = end; i < t.size() && i < end + static_cast<size_t>(cont); ++i) r.continuation.push_back(t[i]);
      out.push_back(std::move(r));
    }
  }
  return out;
}

void ExpectSameChunk(const ChunkRecord& got, const ChunkRecord& want) {
  EXPECT_EQ(got.id, want.id);
  EXPECT_EQ(got.doc_id, want.doc_id) << "chunk " << want.id;
  EXPECT_EQ(got.doc_index, want.doc_index) << "chunk " << want.id;
  EXPECT_EQ(got.offset, want.offset) << "chunk " << want.id;
  EXPECT_EQ(got.tokens, want.tokens) << "chunk " << want.id;
  EXPECT_EQ(got.continuation, want.continuation) << "chunk " << want.id;
}

void AddAll(ChunkStore* store, const std::vector<TokenDoc>& docs) {
  for (const auto& d : docs) RAG_ASSERT_OK(store->AddDocument(d.id, d.tokens));
}

TEST(ChunkStoreTest, ChunkingMath) {
  TempDir dir;
  auto store = MustOpen(dir / "chunks.rocksdb", ChunkStoreOptions());
  ASSERT_NE(store, nullptr);
  auto ids = store->AddDocument("a", Iota(150));
  RAG_ASSERT_OK(ids);
  EXPECT_EQ(*ids, (std::vector<ChunkId>{0, 1, 2}));
  auto chunks = store->GetChunks({0, 1, 2});
  RAG_ASSERT_OK(chunks);
  ASSERT_EQ(chunks->size(), 3u);
  const int64_t offsets[] = {0, 64, 128};
  const size_t lengths[] = {64, 64, 22};
  const size_t cont_lengths[] = {64, 22, 0};
  for (int i = 0; i < 3; ++i) {
    const ChunkRecord& c = (*chunks)[static_cast<size_t>(i)];
    EXPECT_EQ(c.id, i);
    EXPECT_EQ(c.doc_id, "a");
    EXPECT_EQ(c.doc_index, 0);
    EXPECT_EQ(c.offset, offsets[i]);
    ASSERT_EQ(c.tokens.size(), lengths[i]);
    ASSERT_EQ(c.continuation.size(), cont_lengths[i]);
    EXPECT_EQ(c.tokens, Iota(static_cast<int>(lengths[i]), static_cast<Token>(offsets[i])));
    EXPECT_EQ(c.continuation,
              Iota(static_cast<int>(cont_lengths[i]), static_cast<Token>(offsets[i] + static_cast<int64_t>(lengths[i]))));
  }
  EXPECT_EQ(store->num_documents(), 1);
  EXPECT_EQ(store->num_chunks(), 3);
  EXPECT_EQ(store->num_tokens(), 150);

  // Exact multiple: no empty trailing chunk. One token: one chunk.
  ids = store->AddDocument("b", Iota(128));
  RAG_ASSERT_OK(ids);
  EXPECT_EQ(*ids, (std::vector<ChunkId>{3, 4}));
  auto last = store->GetChunk(4);
  RAG_ASSERT_OK(last);
  EXPECT_EQ(last->tokens.size(), 64u);
  EXPECT_TRUE(last->continuation.empty());
  ids = store->AddDocument("c", {42});
  RAG_ASSERT_OK(ids);
  EXPECT_EQ(*ids, (std::vector<ChunkId>{5}));
  auto one = store->GetChunk(5);
  RAG_ASSERT_OK(one);
  EXPECT_EQ(one->tokens, (std::vector<Token>{42}));
  EXPECT_TRUE(one->continuation.empty());
}

TEST(ChunkStoreTest, ContinuationLongerThanChunkAndZero) {
  TempDir dir;
  {
    auto store = MustOpen(dir / "long", Opts(4, 10));
    ASSERT_NE(store, nullptr);
    RAG_ASSERT_OK(store->AddDocument("a", Iota(12)));
    auto c = store->GetChunk(0);
    RAG_ASSERT_OK(c);
    EXPECT_EQ(c->continuation, Iota(8, 4));  // capped at the document end
  }
  auto store = MustOpen(dir / "zero", Opts(4, 0));
  ASSERT_NE(store, nullptr);
  RAG_ASSERT_OK(store->AddDocument("a", Iota(12)));
  auto c = store->GetChunk(1);
  RAG_ASSERT_OK(c);
  EXPECT_EQ(c->tokens, Iota(4, 4));
  EXPECT_TRUE(c->continuation.empty());
}

TEST(ChunkStoreTest, IdsDenseAndContiguousAcrossDocuments) {
  TempDir dir;
  auto store = MustOpen(dir / "s", Opts(16, 8));
  ASSERT_NE(store, nullptr);
  const int lengths[] = {10, 16, 17, 200, 1, 33};
  ChunkId next = 0;
  for (size_t d = 0; d < std::size(lengths); ++d) {
    auto ids = store->AddDocument("d" + std::to_string(d), Iota(lengths[d]));
    RAG_ASSERT_OK(ids);
    const int64_t n = (lengths[d] + 15) / 16;
    ASSERT_EQ(static_cast<int64_t>(ids->size()), n);
    for (int64_t i = 0; i < n; ++i) EXPECT_EQ((*ids)[static_cast<size_t>(i)], next + i);
    auto doc = store->GetDocument("d" + std::to_string(d));
    RAG_ASSERT_OK(doc);
    EXPECT_EQ(doc->index, static_cast<int64_t>(d));
    EXPECT_EQ(doc->first_chunk, next);
    EXPECT_EQ(doc->num_chunks, n);
    EXPECT_EQ(doc->tokens, Iota(lengths[d]));
    EXPECT_EQ(doc->metadata_json, "{}");
    next += n;
  }
  EXPECT_EQ(store->num_chunks(), next);
}

TEST(ChunkStoreTest, RandomCorpusMatchesBruteForceReference) {
  TempDir dir;
  ChunkStoreOptions options = Opts(8, 12);
  options.sync_writes = false;  // speed; durability is not under test here
  auto store = MustOpen(dir / "s", options);
  ASSERT_NE(store, nullptr);
  const auto docs = MakeTokenCorpus(60, /*seed=*/1234, /*max_len=*/90);
  AddAll(store.get(), docs);
  const auto want = ReferenceChunks(docs, 8, 12);
  ASSERT_EQ(store->num_chunks(), static_cast<int64_t>(want.size()));

  // Shuffled, with duplicates, across many documents.
  std::vector<ChunkId> ids;
  for (const auto& r : want) ids.push_back(r.id);
  ids.push_back(0);
  ids.push_back(static_cast<ChunkId>(want.size()) - 1);
  std::mt19937_64 rng(99);
  std::shuffle(ids.begin(), ids.end(), rng);
  auto got = store->GetChunks(ids);
  RAG_ASSERT_OK(got);
  ASSERT_EQ(got->size(), ids.size());
  for (size_t i = 0; i < ids.size(); ++i) ExpectSameChunk((*got)[i], want[static_cast<size_t>(ids[i])]);

  for (size_t i = 0; i < want.size(); i += 13) {
    auto one = store->GetChunk(want[i].id);
    RAG_ASSERT_OK(one);
    ExpectSameChunk(*one, want[i]);
  }
  auto empty = store->GetChunks({});
  RAG_ASSERT_OK(empty);
  EXPECT_TRUE(empty->empty());

  size_t visited = 0;
  RAG_ASSERT_OK(store->ForEachChunk(0, [&](const ChunkRecord& r) {
    EXPECT_LT(visited, want.size());
    if (visited < want.size()) ExpectSameChunk(r, want[visited]);
    ++visited;
    return true;
  }));
  EXPECT_EQ(visited, want.size());
}

TEST(ChunkStoreTest, ForEachChunkFromTheMiddle) {
  TempDir dir;
  auto store = MustOpen(dir / "s", Opts(4, 4));
  ASSERT_NE(store, nullptr);
  const auto docs = MakeTokenCorpus(10, 7, 30);
  AddAll(store.get(), docs);
  const auto want = ReferenceChunks(docs, 4, 4);
  const ChunkId from = static_cast<ChunkId>(want.size() / 2) + 1;  // usually mid-document
  std::vector<ChunkId> seen;
  RAG_ASSERT_OK(store->ForEachChunk(from, [&](const ChunkRecord& r) {
    ExpectSameChunk(r, want[static_cast<size_t>(r.id)]);
    seen.push_back(r.id);
    return true;
  }));
  ASSERT_EQ(static_cast<ChunkId>(seen.size()), static_cast<ChunkId>(want.size()) - from);
  for (size_t i = 0; i < seen.size(); ++i) EXPECT_EQ(seen[i], from + static_cast<ChunkId>(i));

  // Early stop.
  int calls = 0;
  RAG_ASSERT_OK(store->ForEachChunk(from, [&](const ChunkRecord&) { return ++calls < 5; }));
  EXPECT_EQ(calls, 5);

  // Past the end visits nothing; negative is an error.
  calls = 0;
  RAG_ASSERT_OK(store->ForEachChunk(store->num_chunks(), [&](const ChunkRecord&) { return ++calls > 0; }));
  EXPECT_EQ(calls, 0);
  EXPECT_EQ(store->ForEachChunk(-1, [](const ChunkRecord&) { return true; }).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ChunkStoreTest, PersistsAcrossReopenAndContinuesIds) {
  TempDir dir;
  const std::string path = dir / "chunks.rocksdb";
  const auto docs = MakeTokenCorpus(20, 42, 50);
  const std::vector<TokenDoc> first(docs.begin(), docs.begin() + 12);
  const std::vector<TokenDoc> second(docs.begin() + 12, docs.end());
  {
    auto store = MustOpen(path, Opts(8, 8));
    ASSERT_NE(store, nullptr);
    AddAll(store.get(), first);
    RAG_ASSERT_OK(store->PutMeta("build.stage", "embedded"));
    RAG_ASSERT_OK(store->AddDocument("meta-doc", Iota(3), R"({"source":"x.txt"})"));
  }
  std::vector<TokenDoc> all = first;
  all.push_back({"meta-doc", Iota(3)});
  {
    auto store = MustOpen(path, Opts(8, 8));
    ASSERT_NE(store, nullptr);
    auto want = ReferenceChunks(all, 8, 8);
    EXPECT_EQ(store->num_documents(), static_cast<int64_t>(all.size()));
    EXPECT_EQ(store->num_chunks(), static_cast<int64_t>(want.size()));
    int64_t tokens = 0;
    for (const auto& d : all) tokens += static_cast<int64_t>(d.tokens.size());
    EXPECT_EQ(store->num_tokens(), tokens);
    std::vector<ChunkId> ids;
    for (const auto& r : want) ids.push_back(r.id);
    auto got = store->GetChunks(ids);
    RAG_ASSERT_OK(got);
    for (size_t i = 0; i < ids.size(); ++i) ExpectSameChunk((*got)[i], want[i]);
    auto meta = store->GetMeta("build.stage");
    RAG_ASSERT_OK(meta);
    EXPECT_EQ(*meta, "embedded");
    auto doc = store->GetDocument("meta-doc");
    RAG_ASSERT_OK(doc);
    EXPECT_EQ(doc->metadata_json, R"({"source":"x.txt"})");

    // New documents continue the id sequence.
    auto new_ids = store->AddDocument(second[0].id, second[0].tokens);
    RAG_ASSERT_OK(new_ids);
    EXPECT_EQ(new_ids->front(), static_cast<ChunkId>(want.size()));
    for (size_t i = 1; i < second.size(); ++i) RAG_ASSERT_OK(store->AddDocument(second[i].id, second[i].tokens));
  }
  all.insert(all.end(), second.begin(), second.end());
  ChunkStoreOptions ro = Opts(8, 8);
  ro.read_only = true;
  auto store = MustOpen(path, ro);
  ASSERT_NE(store, nullptr);
  const auto want = ReferenceChunks(all, 8, 8);
  ASSERT_EQ(store->num_chunks(), static_cast<int64_t>(want.size()));
  std::vector<ChunkRecord> got;
  RAG_ASSERT_OK(store->ForEachChunk(0, [&](const ChunkRecord& r) {
    got.push_back(r);
    return true;
  }));
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) ExpectSameChunk(got[i], want[i]);
}

TEST(ChunkStoreTest, DuplicateDocumentIdChangesNothing) {
  TempDir dir;
  auto store = MustOpen(dir / "s", Opts(4, 4));
  ASSERT_NE(store, nullptr);
  RAG_ASSERT_OK(store->AddDocument("a", Iota(10), R"({"v":1})"));
  auto dup = store->AddDocument("a", Iota(20, 100), R"({"v":2})");
  EXPECT_EQ(dup.status().code(), absl::StatusCode::kAlreadyExists) << dup.status();
  EXPECT_EQ(store->num_documents(), 1);
  EXPECT_EQ(store->num_chunks(), 3);
  EXPECT_EQ(store->num_tokens(), 10);
  auto doc = store->GetDocument("a");
  RAG_ASSERT_OK(doc);
  EXPECT_EQ(doc->tokens, Iota(10));
  EXPECT_EQ(doc->metadata_json, R"({"v":1})");
  // The next document still gets the next id.
  auto ids = store->AddDocument("b", Iota(4));
  RAG_ASSERT_OK(ids);
  EXPECT_EQ(*ids, (std::vector<ChunkId>{3}));
}

TEST(ChunkStoreTest, InvalidArguments) {
  TempDir dir;
  auto store = MustOpen(dir / "s", Opts(4, 4));
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->AddDocument("", Iota(3)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->AddDocument("a", {}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->AddDocument("a", Iota(3), "{not json").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->PutMeta("", "x").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->num_documents(), 0);
  EXPECT_FALSE(store->HasDocument("a"));
  // Empty metadata is stored as an empty object.
  RAG_ASSERT_OK(store->AddDocument("a", Iota(3), ""));
  EXPECT_TRUE(store->HasDocument("a"));
  EXPECT_EQ(store->GetDocument("a")->metadata_json, "{}");

  EXPECT_EQ(ChunkStore::Open("", Opts(4, 4)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ChunkStore::Open(dir / "t", Opts(0, 4)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ChunkStore::Open(dir / "t", Opts(4, -1)).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ChunkStoreTest, UnknownIdsAreNotFound) {
  TempDir dir;
  auto store = MustOpen(dir / "s", Opts(4, 4));
  ASSERT_NE(store, nullptr);
  RAG_ASSERT_OK(store->AddDocument("a", Iota(10)));  // chunks 0..2
  for (ChunkId bad : {ChunkId{-1}, ChunkId{3}, ChunkId{123456789}}) {
    auto c = store->GetChunk(bad);
    EXPECT_EQ(c.status().code(), absl::StatusCode::kNotFound);
    EXPECT_NE(c.status().message().find(std::to_string(bad)), std::string::npos) << c.status();
  }
  auto batch = store->GetChunks({0, 1, 77});
  EXPECT_EQ(batch.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(batch.status().message().find("77"), std::string::npos) << batch.status();
  EXPECT_EQ(store->GetDocument("nope").status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(store->HasDocument("nope"));
  EXPECT_EQ(store->GetMeta("nope").status().code(), absl::StatusCode::kNotFound);
}

TEST(ChunkStoreTest, ReopenWithOtherChunkingFails) {
  TempDir dir;
  const std::string path = dir / "s";
  {
    auto store = MustOpen(path, Opts(64, 64));
    ASSERT_NE(store, nullptr);
    RAG_ASSERT_OK(store->AddDocument("a", Iota(100)));
  }
  auto other_chunk = ChunkStore::Open(path, Opts(32, 64));
  EXPECT_EQ(other_chunk.status().code(), absl::StatusCode::kFailedPrecondition) << other_chunk.status();
  EXPECT_NE(other_chunk.status().message().find(path), std::string::npos);
  EXPECT_EQ(ChunkStore::Open(path, Opts(64, 32)).status().code(), absl::StatusCode::kFailedPrecondition);
  auto same = ChunkStore::Open(path, Opts(64, 64));
  RAG_ASSERT_OK(same);
  EXPECT_EQ((*same)->num_chunks(), 2);
}

TEST(ChunkStoreTest, MissingStore) {
  TempDir dir;
  ChunkStoreOptions no_create;
  no_create.create_if_missing = false;
  EXPECT_EQ(ChunkStore::Open(dir / "missing", no_create).status().code(), absl::StatusCode::kNotFound);
  ChunkStoreOptions ro;
  ro.read_only = true;
  EXPECT_EQ(ChunkStore::Open(dir / "missing", ro).status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(fs::exists(dir / "missing"));
  // An empty directory is a store not created yet.
  fs::create_directories(dir / "empty");
  RAG_EXPECT_OK(ChunkStore::Open(dir / "empty", ChunkStoreOptions()));
}

TEST(ChunkStoreTest, ReadOnlyRejectsWrites) {
  TempDir dir;
  const std::string path = dir / "s";
  {
    auto store = MustOpen(path, ChunkStoreOptions());
    ASSERT_NE(store, nullptr);
    RAG_ASSERT_OK(store->AddDocument("a", Iota(70)));
  }
  ChunkStoreOptions ro;
  ro.read_only = true;
  auto store = MustOpen(path, ro);
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->AddDocument("b", Iota(5)).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store->PutMeta("k", "v").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store->Flush().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store->num_documents(), 1);
  auto c = store->GetChunk(1);
  RAG_ASSERT_OK(c);
  EXPECT_EQ(c->tokens, Iota(6, 64));
}

TEST(ChunkStoreTest, SecondWriterOnTheSameStoreIsAnError) {
  TempDir dir;
  auto store = MustOpen(dir / "s", ChunkStoreOptions());
  ASSERT_NE(store, nullptr);
  auto second = ChunkStore::Open(dir / "s", ChunkStoreOptions());
  EXPECT_FALSE(second.ok());
}

// Writes every file of a store: keeps the fixture small.
void MakeFlushedStore(const std::string& path, int n_docs) {
  auto store = MustOpen(path, Opts(8, 8));
  ASSERT_NE(store, nullptr);
  AddAll(store.get(), MakeTokenCorpus(n_docs, 5, 200));
  RAG_ASSERT_OK(store->Flush());
}

std::vector<fs::path> FilesWithExtension(const std::string& dir, const std::string& ext) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() == ext) out.push_back(e.path());
  }
  return out;
}

// The first error from opening the store and reading every chunk, or OK.
absl::Status FirstError(const std::string& path) {
  auto store = ChunkStore::Open(path, Opts(8, 8));
  if (!store.ok()) return store.status();
  std::vector<ChunkId> ids;
  for (ChunkId i = 0; i < (*store)->num_chunks(); ++i) ids.push_back(i);
  auto chunks = (*store)->GetChunks(ids);
  if (!chunks.ok()) return chunks.status();
  return (*store)->ForEachChunk(0, [](const ChunkRecord&) { return true; });
}

TEST(ChunkStoreTest, DirectoryOfGarbageIsAnError) {
  TempDir dir;
  const std::string path = dir / "garbage";
  fs::create_directories(path);
  std::ofstream(path + "/notes.txt") << "not a database";
  std::ofstream(path + "/000001.bin") << std::string(1000, '\x7f');
  auto store = ChunkStore::Open(path, ChunkStoreOptions());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition) << store.status();
  EXPECT_NE(store.status().message().find(path), std::string::npos);

  const std::string file = dir / "a_file";
  std::ofstream(file) << "x";
  EXPECT_EQ(ChunkStore::Open(file, ChunkStoreOptions()).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(ChunkStoreTest, GarbageCurrentFileIsAnError) {
  TempDir dir;
  const std::string path = dir / "s";
  MakeFlushedStore(path, 5);
  std::ofstream(path + "/CURRENT", std::ios::trunc) << "MANIFEST-999999\n";
  auto store = ChunkStore::Open(path, Opts(8, 8));
  EXPECT_EQ(store.status().code(), absl::StatusCode::kDataLoss) << store.status();
  std::ofstream(path + "/CURRENT", std::ios::trunc | std::ios::binary) << std::string("\0\1\2garbage", 10);
  store = ChunkStore::Open(path, Opts(8, 8));
  EXPECT_EQ(store.status().code(), absl::StatusCode::kDataLoss) << store.status();
}

TEST(ChunkStoreTest, TruncatedTableFilesAreAnError) {
  TempDir dir;
  const std::string path = dir / "s";
  MakeFlushedStore(path, 40);
  const auto tables = FilesWithExtension(path, ".sst");
  ASSERT_FALSE(tables.empty());
  for (const auto& t : tables) fs::resize_file(t, fs::file_size(t) / 2);
  const absl::Status s = FirstError(path);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
}

TEST(ChunkStoreTest, OverwrittenTableBytesAreAnError) {
  TempDir dir;
  const std::string path = dir / "s";
  MakeFlushedStore(path, 40);
  const auto tables = FilesWithExtension(path, ".sst");
  ASSERT_FALSE(tables.empty());
  for (const auto& t : tables) {
    const auto size = fs::file_size(t);
    std::fstream f(t, std::ios::in | std::ios::out | std::ios::binary);
    // Damage the data blocks at the front, keeping the footer intact so the
    // damage is found by block checksums rather than the file's magic.
    f.seekp(16);
    f << std::string(static_cast<size_t>(std::min<uintmax_t>(size / 2, 4096)), '\xa5');
  }
  const absl::Status s = FirstError(path);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
}

TEST(ChunkStoreTest, TruncatedManifestIsAnError) {
  TempDir dir;
  const std::string path = dir / "s";
  MakeFlushedStore(path, 5);
  bool found = false;
  for (const auto& e : fs::directory_iterator(path)) {
    if (e.path().filename().string().rfind("MANIFEST-", 0) == 0) {
      fs::resize_file(e.path(), 7);
      found = true;
    }
  }
  ASSERT_TRUE(found);
  auto store = ChunkStore::Open(path, Opts(8, 8));
  EXPECT_EQ(store.status().code(), absl::StatusCode::kDataLoss) << store.status();
}

TEST(ChunkStoreTest, ConcurrentReadersSeeConsistentRecords) {
  TempDir dir;
  ChunkStoreOptions options = Opts(8, 8);
  options.sync_writes = false;
  auto store = MustOpen(dir / "s", options);
  ASSERT_NE(store, nullptr);
  // Token values encode (document, position), so a reader can check any
  // chunk it sees without knowing what the writer has done.
  auto token = [](int64_t doc, int64_t pos) { return static_cast<Token>(doc * 10000 + pos); };
  auto doc_len = [](int64_t doc) { return static_cast<int64_t>(1 + (doc * 37) % 61); };
  constexpr int kDocs = 150;

  std::atomic<bool> done{false};
  std::atomic<int> failures{0};
  std::atomic<int64_t> reads{0};
  auto check = [&](const ChunkRecord& r) {
    const int64_t d = r.doc_index;
    bool ok = r.doc_id == "d" + std::to_string(d) && r.offset % 8 == 0 && !r.tokens.empty();
    for (size_t i = 0; ok && i < r.tokens.size(); ++i) ok = r.tokens[i] == token(d, r.offset + static_cast<int64_t>(i));
    const int64_t end = r.offset + static_cast<int64_t>(r.tokens.size());
    ok = ok && static_cast<int64_t>(r.continuation.size()) == std::min<int64_t>(8, doc_len(d) - end);
    for (size_t i = 0; ok && i < r.continuation.size(); ++i) {
      ok = r.continuation[i] == token(d, end + static_cast<int64_t>(i));
    }
    if (!ok) failures.fetch_add(1);
  };
  std::vector<std::thread> readers;
  for (int t = 0; t < 3; ++t) {
    readers.emplace_back([&, t] {
      std::mt19937_64 rng(static_cast<uint64_t>(t));
      while (!done.load()) {
        const int64_t n = store->num_chunks();
        if (n == 0) continue;
        std::vector<ChunkId> ids;
        for (int i = 0; i < 8; ++i) ids.push_back(static_cast<ChunkId>(rng() % static_cast<uint64_t>(n)));
        auto got = store->GetChunks(ids);
        if (!got.ok()) {
          failures.fetch_add(1);
          continue;
        }
        for (const auto& r : *got) check(r);
        if (t == 0) {
          const absl::Status s = store->ForEachChunk(static_cast<ChunkId>(rng() % static_cast<uint64_t>(n)),
                                                     [&](const ChunkRecord& r) {
                                                       check(r);
                                                       return true;
                                                     });
          if (!s.ok()) failures.fetch_add(1);
        }
        reads.fetch_add(1);
      }
    });
  }
  for (int64_t d = 0; d < kDocs; ++d) {
    std::vector<Token> tokens;
    for (int64_t p = 0; p < doc_len(d); ++p) tokens.push_back(token(d, p));
    auto ids = store->AddDocument("d" + std::to_string(d), tokens);
    EXPECT_TRUE(ids.ok()) << ids.status();  // not ASSERT: the readers must be joined
    if (!ids.ok()) break;
  }
  // Let the readers see the final state at least once.
  const int64_t before = reads.load();
  while (reads.load() < before + 3) std::this_thread::yield();
  done.store(true);
  for (auto& r : readers) r.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(store->num_documents(), kDocs);
  EXPECT_GT(reads.load(), 0);
}

}  // namespace
}  // namespace rag::retriever

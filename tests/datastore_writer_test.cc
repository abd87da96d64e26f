// Tests for retriever::DatastoreWriter and the datastore files: rejected input,
// resumed and background-indexed writes equal to a straight write, corrupt or
// truncated files, and keys of documents added to a live index.
#include "retriever/datastore.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/file_util.h"
#include "common/progress.h"
#include "retriever/vector_index.h"
#include "tests/status_matchers.h"
#include "tests/test_util.h"

#include "tests/datastore_test_util.h"

namespace rag::retriever {
namespace {

namespace fs = std::filesystem;
using namespace datastore_test;  // NOLINT: the helpers of both datastore test files

// --- writing, resuming ---

TEST(DatastoreWriterTest, RejectsBadInputWithoutWriting) {
  testing::TempDir dir;
  EXPECT_EQ(DatastoreWriter::Create(dir.path(), 0, false).status().code(), absl::StatusCode::kInvalidArgument);
  auto writer = DatastoreWriter::Create(dir.path(), 2, false);
  ASSERT_TRUE(writer.ok()) << writer.status();
  DatastoreWriter& w = **writer;
  const int32_t ok_value[2] = {1, 2}, ok_doc[2] = {0, 0}, neg[2] = {1, -1};
  const float good[4] = {1, 2, 3, 4};
  const float nan[4] = {1, 2, std::nanf(""), 4};
  const float inf[4] = {1, std::numeric_limits<float>::infinity(), 3, 4};
  const float big[4] = {1, 2, 3, 70000.0f};
  for (const float* keys : {nan, inf, big}) {
    EXPECT_EQ(w.Append(keys, ok_value, ok_doc, 2).code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(w.Append(good, neg, ok_doc, 2).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(w.Append(good, ok_value, neg, 2).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(w.Append(nullptr, ok_value, ok_doc, 2).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(w.Append(good, ok_value, ok_doc, -1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(w.rows(), 0);
  EXPECT_EQ(fs::file_size(dir / kDatastoreKeysFile), 64u);
  RAG_EXPECT_OK(w.Append(good, ok_value, ok_doc, 2));
  RAG_EXPECT_OK(w.Append(good, ok_value, ok_doc, 0));
  EXPECT_EQ(w.rows(), 2);
  RAG_ASSERT_OK(w.Finish());
  EXPECT_EQ(w.Append(good, ok_value, ok_doc, 2).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(w.Sync().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(w.Finish().status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST(DatastoreWriterTest, ResumeGivesTheSameDatastoreAsAStraightWrite) {
  const int d = 24;
  Rows r = MakeRows(GaussianKeys(3000, d, 21), d);
  testing::TempDir straight_dir, resumed_dir;
  auto straight = WriteDatastore(straight_dir.path(), r, 700, Factory("Flat"));
  ASSERT_TRUE(straight.ok()) << straight.status();

  {
    auto w = DatastoreWriter::Create(resumed_dir.path(), d, false);
    ASSERT_TRUE(w.ok()) << w.status();
    RAG_ASSERT_OK(AppendRange(w->get(), r, 0, 1000));
    RAG_ASSERT_OK(AppendRange(w->get(), r, 1000, 1700));
    RAG_ASSERT_OK((*w)->Sync());
    RAG_ASSERT_OK(AppendRange(w->get(), r, 1700, 2100));  // never synced: lost
    EXPECT_EQ((*w)->rows(), 2100);
  }
  // A killed writer may also leave a partial row behind.
  {
    std::ofstream out(resumed_dir / kDatastoreKeysFile, std::ios::binary | std::ios::app);
    out.write("partial row", 11);
  }
  // Creating afresh over it, resuming a finished one or with another dim fail.
  EXPECT_EQ(DatastoreWriter::Create(resumed_dir.path(), d, false).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(DatastoreWriter::Create(resumed_dir.path(), d + 1, true).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(DatastoreWriter::Create(straight_dir.path(), d, true).status().code(),
            absl::StatusCode::kFailedPrecondition);
  // An unfinished datastore does not open.
  EXPECT_EQ(Datastore::Open(resumed_dir.path()).status().code(), absl::StatusCode::kFailedPrecondition);

  {
    auto w = DatastoreWriter::Create(resumed_dir.path(), d, true);
    ASSERT_TRUE(w.ok()) << w.status();
    EXPECT_EQ((*w)->rows(), 1700);
    RAG_ASSERT_OK(AppendRange(w->get(), r, 1700, 2500));
    RAG_ASSERT_OK((*w)->Sync());
  }
  auto w = DatastoreWriter::Create(resumed_dir.path(), d, true);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ((*w)->rows(), 2500);
  RAG_ASSERT_OK(AppendRange(w->get(), r, 2500, 3000));
  auto resumed = (*w)->Finish("Flat", /*seed=*/1234, /*show_progress=*/true);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->rows, 3000);
  EXPECT_EQ(resumed->checksums, straight->checksums);
  EXPECT_EQ(resumed->checksums.size(), 4u);
  auto ds = Datastore::Open(resumed_dir.path());
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ((*ds)->size(), 3000);
}

// IndexInBackground: the index is the same whether the background thread
// got far or nowhere before Finish, and after the writer was dropped part-way
// (a killed build) and resumed.
TEST(DatastoreWriterTest, BackgroundIndexingGivesTheSameIndexHoweverFarItGot) {
  const int d = 16;
  const int64_t n = 48000, batch = 4000;
  Rows r = MakeRows(LatentKeys(n, d, 41), d);
  DatastoreFinishOptions o = Factory("IVF16,PQ4");
  o.max_train = 10000;  // trains on the first max(4 * 10000, n / 4) rows, before the last is written
  o.batch_rows = 3000;
  const int64_t trains_after = 40000;

  // Appends [begin, end) in synced batches; with `patient`, waits after
  // each batch until the background thread has indexed it (or, before
  // `trains_after` rows, until it says it cannot train yet: once they are
  // there, that status only means the thread has not woken up).
  auto append = [&](DatastoreWriter* w, int64_t begin, int64_t end, bool patient) {
    for (int64_t b = begin; b < end; b += batch) {
      const int64_t e = std::min(end, b + batch);
      RAG_ASSERT_OK(AppendRange(w, r, b, e));
      RAG_ASSERT_OK(w->Sync());
      const std::string caught_up = HumanCount(static_cast<double>(e)) + " keys indexed";
      for (int i = 0; patient && i < 3000; ++i) {
        const std::string status = w->IndexingStatus();
        if (status == caught_up || (e < trains_after && status.find("trains after") != std::string::npos)) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    }
  };
  testing::TempDir straight_dir, patient_dir, resumed_dir;
  // Finish as soon as the last row is written.
  {
    auto w = DatastoreWriter::Create(straight_dir.path(), d, false);
    ASSERT_TRUE(w.ok()) << w.status();
    RAG_ASSERT_OK((*w)->IndexInBackground(o, n));
    EXPECT_EQ((*w)->IndexInBackground(o, n).code(), absl::StatusCode::kFailedPrecondition);
    append(w->get(), 0, n, false);
    EXPECT_EQ((*w)->Finish(Factory("IVF16,PQ4")).status().code(), absl::StatusCode::kInvalidArgument);
  }
  auto w2 = DatastoreWriter::Create(straight_dir.path(), d, true);  // the failed Finish left it resumable
  ASSERT_TRUE(w2.ok()) << w2.status();
  RAG_ASSERT_OK((*w2)->IndexInBackground(o, n));
  auto straight = (*w2)->Finish(o);
  ASSERT_TRUE(straight.ok()) << straight.status();
  EXPECT_EQ(straight->index_factory, "IVF16,PQ4");
  EXPECT_EQ(straight->train_rows, 10000);

  // Let the thread train and index every batch before the next one.
  auto p = DatastoreWriter::Create(patient_dir.path(), d, false);
  ASSERT_TRUE(p.ok()) << p.status();
  RAG_ASSERT_OK((*p)->IndexInBackground(o, n));
  EXPECT_NE((*p)->IndexingStatus().find("trains after 40.0k"), std::string::npos) << (*p)->IndexingStatus();
  append(p->get(), 0, n, true);
  EXPECT_EQ((*p)->IndexingStatus(), "48.0k keys indexed");
  auto patient = (*p)->Finish(o);
  ASSERT_TRUE(patient.ok()) << patient.status();
  EXPECT_EQ(patient->checksums, straight->checksums);

  // Dropped (cancelled) while indexing, then resumed.
  {
    auto k = DatastoreWriter::Create(resumed_dir.path(), d, false);
    ASSERT_TRUE(k.ok()) << k.status();
    RAG_ASSERT_OK((*k)->IndexInBackground(o, n));
    append(k->get(), 0, 44000, true);
  }
  auto resumed_writer = DatastoreWriter::Create(resumed_dir.path(), d, true);
  ASSERT_TRUE(resumed_writer.ok()) << resumed_writer.status();
  EXPECT_EQ((*resumed_writer)->rows(), 44000);
  EXPECT_EQ((*resumed_writer)->IndexInBackground(o, 43999).code(), absl::StatusCode::kInvalidArgument);
  RAG_ASSERT_OK((*resumed_writer)->IndexInBackground(o, n));
  append(resumed_writer->get(), 44000, n, false);
  auto resumed = (*resumed_writer)->Finish(o);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->checksums, straight->checksums);

  // The index finds stored keys.
  auto ds = Datastore::Open(resumed_dir.path());
  ASSERT_TRUE(ds.ok()) << ds.status();
  std::vector<std::vector<DatastoreNeighbour>> res;
  RAG_ASSERT_OK((*ds)->Search(r.keys.data() + 123 * d, 1, 5, 16, {}, /*exact=*/true, &res));
  ASSERT_FALSE(res[0].empty());
  EXPECT_EQ(res[0][0].key_id, 123);
}

TEST(DatastoreWriterTest, ResumeWithNothingThereStartsAfresh) {
  testing::TempDir dir;
  auto w = DatastoreWriter::Create(dir / "sub/store", 4, true);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ((*w)->rows(), 0);
}

// --- corrupt and missing files ---

TEST(DatastoreFileTest, CorruptOrTruncatedFilesGiveDataLoss) {
  testing::TempDir base;
  const int d = 8;
  Rows r = MakeRows(GaussianKeys(500, d, 31), d);
  ASSERT_TRUE(WriteDatastore(base / "good", r, 200, Factory("Flat")).ok());
  RAG_ASSERT_OK(Datastore::Open(base / "good"));

  int case_no = 0;
  // Applies `damage` to a fresh copy of the good datastore and opens it.
  auto open_damaged = [&](const std::function<void(const std::string&)>& damage,
                          const DatastoreOpenOptions& options = {}) {
    const std::string dir = base / ("case" + std::to_string(case_no++));
    fs::copy(base / "good", dir, fs::copy_options::recursive);
    damage(dir);
    return Datastore::Open(dir, options).status();
  };
  auto flip = [](const std::string& path, size_t offset) {
    std::string bytes = ReadBytes(path);
    bytes[offset] = static_cast<char>(bytes[offset] ^ 0x10);
    WriteBytes(path, bytes);
  };
  auto truncate = [](const std::string& path, size_t size) { fs::resize_file(path, size); };
  const std::string keys = std::string("/") + kDatastoreKeysFile;
  const std::string values = std::string("/") + kDatastoreValuesFile;
  const std::string docs = std::string("/") + kDatastoreDocsFile;
  const std::string index = std::string("/") + kDatastoreIndexFile;
  const size_t keys_size = 64 + 500 * d * 2;

  struct Case {
    const char* what;
    std::function<void(const std::string&)> damage;
    absl::StatusCode code;
  };
  const std::vector<Case> cases = {
      {"flipped keys payload byte", [&](const std::string& dir) { flip(dir + keys, 64 + 3001); },
       absl::StatusCode::kDataLoss},
      {"flipped last keys byte", [&](const std::string& dir) { flip(dir + keys, keys_size - 1); },
       absl::StatusCode::kDataLoss},
      {"flipped keys header (rows)", [&](const std::string& dir) { flip(dir + keys, 16); },
       absl::StatusCode::kDataLoss},
      {"flipped keys magic", [&](const std::string& dir) { flip(dir + keys, 0); }, absl::StatusCode::kDataLoss},
      {"reserved header byte set", [&](const std::string& dir) { flip(dir + keys, 50); }, absl::StatusCode::kDataLoss},
      {"flipped values payload", [&](const std::string& dir) { flip(dir + values, 64 + 17); },
       absl::StatusCode::kDataLoss},
      {"flipped docs payload", [&](const std::string& dir) { flip(dir + docs, 64 + 400); },
       absl::StatusCode::kDataLoss},
      {"truncated values", [&](const std::string& dir) { truncate(dir + values, 64 + 499 * 4); },
       absl::StatusCode::kDataLoss},
      {"values cut inside a row", [&](const std::string& dir) { truncate(dir + values, 64 + 250 * 4 + 2); },
       absl::StatusCode::kDataLoss},
      {"values cut in the header", [&](const std::string& dir) { truncate(dir + values, 10); },
       absl::StatusCode::kDataLoss},
      {"empty docs", [&](const std::string& dir) { truncate(dir + docs, 0); }, absl::StatusCode::kDataLoss},
      {"truncated keys", [&](const std::string& dir) { truncate(dir + keys, keys_size - 16); },
       absl::StatusCode::kDataLoss},
      {"trailing keys bytes", [&](const std::string& dir) { truncate(dir + keys, keys_size + 2); },
       absl::StatusCode::kDataLoss},
      {"missing docs", [&](const std::string& dir) { fs::remove(dir + docs); }, absl::StatusCode::kDataLoss},
      {"values cut to 100 rows",
       [&](const std::string& dir) {
         std::string v = ReadBytes(dir + values);
         WriteBytes(dir + values, v.substr(0, 64 + 100 * 4));  // header still says 500 rows
       },
       absl::StatusCode::kDataLoss},
      {"docs file in place of values",
       [&](const std::string& dir) { fs::copy_file(dir + docs, dir + values, fs::copy_options::overwrite_existing); },
       absl::StatusCode::kDataLoss},
      {"truncated index", [&](const std::string& dir) { truncate(dir + index, fs::file_size(dir + index) / 2); },
       absl::StatusCode::kDataLoss},
      {"flipped index byte", [&](const std::string& dir) { flip(dir + index, fs::file_size(dir + index) - 5); },
       absl::StatusCode::kDataLoss},
      {"missing index", [&](const std::string& dir) { fs::remove(dir + index); },
       absl::StatusCode::kFailedPrecondition},
  };
  for (const Case& c : cases) {
    absl::Status s = open_damaged(c.damage);
    EXPECT_EQ(s.code(), c.code) << c.what << ": " << s;
  }

  // Files from another datastore: each is consistent in itself, but the row
  // counts disagree.
  {
    testing::TempDir other;
    Rows r2 = MakeRows(GaussianKeys(400, d, 32), d);
    ASSERT_TRUE(WriteDatastore(other.path(), r2, 400, Factory("Flat")).ok());
    for (const std::string& name : {index, values, keys}) {
      absl::Status s = open_damaged([&](const std::string& dir) {
        fs::copy_file(other.path() + name, dir + name, fs::copy_options::overwrite_existing);
      });
      EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << name << ": " << s;
    }
  }
  // Without checksum verification a payload flip goes unnoticed (by design),
  // but sizes and headers are still checked.
  DatastoreOpenOptions no_verify;
  no_verify.verify_checksums = false;
  RAG_EXPECT_OK(open_damaged([&](const std::string& dir) { flip(dir + keys, 64 + 3001); }, no_verify));
  EXPECT_EQ(open_damaged([&](const std::string& dir) { truncate(dir + values, 64 + 499 * 4); }, no_verify).code(),
            absl::StatusCode::kDataLoss);
  // No datastore at all.
  EXPECT_EQ(Datastore::Open(base / "nothing").status().code(), absl::StatusCode::kNotFound);
}


// Keys of documents added after the build: searchable at once, exact, merged
// with the built keys, durable in added.log (a torn last record is dropped and
// overwritten), filtered at open by the documents the index holds.
TEST(DatastoreAddedTest, AddedKeysAreSearchableDurableAndSurviveATornAppend) {
  testing::TempDir dir;
  const Rows built = MakeRows(GaussianKeys(500, kDim, /*seed=*/4), kDim);
  RAG_ASSERT_OK(WriteDatastore(dir.path(), built, 100, Factory("Flat")).status());
  const Rows extra = MakeRows(GaussianKeys(20, kDim, /*seed=*/5), kDim, /*rows_per_doc=*/10);
  {
    auto ds = Datastore::Open(dir.path());
    RAG_ASSERT_OK(ds.status());
    EXPECT_EQ((*ds)->size(), 500);
    RAG_ASSERT_OK((*ds)->AddDocumentKeys("new-a", extra.keys.data(), extra.values.data(), 40, 10, true));
    RAG_ASSERT_OK((*ds)->AddDocumentKeys("new-b", extra.keys.data() + 10 * kDim, extra.values.data() + 10, 41, 10,
                                         /*durable=*/false));
    EXPECT_EQ((*ds)->size(), 520);
    EXPECT_EQ((*ds)->added_size(), 20);
    EXPECT_TRUE((*ds)->HasAddedDocument("new-a"));
    EXPECT_EQ((*ds)->AddDocumentKeys("new-a", extra.keys.data(), extra.values.data(), 40, 1, true).code(),
              absl::StatusCode::kInvalidArgument);
    std::vector<float> bad(kDim, std::nanf(""));
    EXPECT_EQ((*ds)->AddDocumentKeys("bad", bad.data(), extra.values.data(), 42, 1, true).code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_FALSE((*ds)->HasAddedDocument("bad"));
    // An added key is its own nearest neighbour (fp16 rounding only), with
    // its value and document; excluding its document skips all ten.
    std::vector<std::vector<DatastoreNeighbour>> res;
    RAG_ASSERT_OK((*ds)->Search(extra.keys.data() + 3 * kDim, 1, 5, 0, {}, false, &res));
    ASSERT_EQ(res[0].size(), 5u);
    EXPECT_EQ(res[0][0].key_id, 503);
    EXPECT_EQ(res[0][0].value, extra.values[3]);
    EXPECT_EQ(res[0][0].doc, 40);
    EXPECT_LT(res[0][0].distance, 1e-3);
    for (size_t j = 1; j < res[0].size(); ++j) EXPECT_GE(res[0][j].distance, res[0][j - 1].distance);
    RAG_ASSERT_OK((*ds)->Search(extra.keys.data() + 3 * kDim, 1, 5, 0, {40}, false, &res));
    for (const auto& nb : res[0]) EXPECT_NE(nb.doc, 40);
    // Merged with the built keys: the same top-k as a brute force over both.
    Rows both = built;
    for (int64_t i = 0; i < 20; ++i) {
      std::vector<float> key(extra.keys.begin() + i * kDim, extra.keys.begin() + (i + 1) * kDim);
      for (float& x : key) x = HalfToFloat(FloatToHalf(x));
      both.keys.insert(both.keys.end(), key.begin(), key.end());
      both.values.push_back(extra.values[static_cast<size_t>(i)]);
      both.docs.push_back(i < 10 ? 40 : 41);
    }
    const std::vector<float> queries = GaussianKeys(8, kDim, /*seed=*/6);
    RAG_ASSERT_OK((*ds)->Search(queries.data(), 8, 10, 0, {}, false, &res));
    EXPECT_EQ(Ids(res, 10), BruteForce(both, queries, 10));
    float key[kDim];
    (*ds)->Key(515, key);
    EXPECT_EQ(key[0], both.keys[515 * kDim]);
    EXPECT_EQ((*ds)->value(515), extra.values[15]);
    EXPECT_EQ((*ds)->doc(515), 41);
  }
  // Reopened: the durable document is back, the other was memory only.
  const std::string log = dir.path() + "/" + kDatastoreAddedFile;
  const std::string one_record = ReadBytes(log);
  {
    auto ds = Datastore::Open(dir.path());
    RAG_ASSERT_OK(ds.status());
    EXPECT_EQ((*ds)->added_size(), 10);
    EXPECT_TRUE((*ds)->HasAddedDocument("new-a"));
    EXPECT_FALSE((*ds)->HasAddedDocument("new-b"));
    RAG_ASSERT_OK((*ds)->AddDocumentKeys("new-c", extra.keys.data() + 10 * kDim, extra.values.data() + 10, 41, 10, true));
  }
  // A crash in the middle of the second record: it is ignored, and the next
  // append overwrites it.
  const std::string two_records = ReadBytes(log);
  ASSERT_GT(two_records.size(), one_record.size());
  WriteBytes(log, two_records.substr(0, two_records.size() - 37));
  {
    auto ds = Datastore::Open(dir.path());
    RAG_ASSERT_OK(ds.status());
    EXPECT_EQ((*ds)->added_size(), 10);
    EXPECT_FALSE((*ds)->HasAddedDocument("new-c"));
    RAG_ASSERT_OK((*ds)->AddDocumentKeys("new-c", extra.keys.data() + 10 * kDim, extra.values.data() + 10, 41, 10, true));
  }
  EXPECT_EQ(ReadBytes(log), two_records);
  // A flipped bit in a record's keys fails its checksum: it and what follows are dropped.
  std::string flipped = two_records;
  flipped[one_record.size() + 100] ^= 0x10;
  WriteBytes(log, flipped);
  {
    auto ds = Datastore::Open(dir.path());
    RAG_ASSERT_OK(ds.status());
    EXPECT_EQ((*ds)->added_size(), 10);
  }
  // Documents the index does not hold are not loaded.
  WriteBytes(log, two_records);
  DatastoreOpenOptions o;
  o.keep_added = [](const std::string& id) { return id != "new-a"; };
  auto ds = Datastore::Open(dir.path(), o);
  RAG_ASSERT_OK(ds.status());
  EXPECT_FALSE((*ds)->HasAddedDocument("new-a"));
  EXPECT_TRUE((*ds)->HasAddedDocument("new-c"));
  EXPECT_EQ((*ds)->size(), 510);
}

}  // namespace
}  // namespace rag::retriever

// Parquet, Arrow, CSV/TSV, gzip-compressed JSON and directories of data files, judged by the real
// libraries: tests/python/arrow_data.py writes the files with pyarrow and datasets and lists the
// rows datasets.load_dataset (or pyarrow) reads from each; our records must be those rows, in
// that order. A chat dataset as Parquet must give the very data a JSON Lines copy gives.
#include <gtest/gtest.h>

#include <fstream>

#include "tests/common/harness.h"
#include "tests/data/fake_tokenizer.h"
#include "trainer/common/error.h"
#include "trainer/common/fs.h"
#include "trainer/data/dataset.h"
#include "trainer/data/prepared.h"
#include "trainer/data/records.h"

using namespace qlora;
using namespace qlora::data;
namespace stdfs = std::filesystem;
using json = nlohmann::json;

namespace {

stdfs::path* g_dir = nullptr;

class ArrowData : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    g_dir = new stdfs::path(test::temp_dir("arrow_data"));
    test::ProcResult r = test::run_python("arrow_data.py", {g_dir->string()});
    ASSERT_EQ(r.code, 0) << r.output;
  }
  static void TearDownTestSuite() { delete g_dir; }
};

std::vector<Record> read_all(const Source& s, size_t chunk = 2048) {
  std::vector<Record> out;
  read_records(
      s, false, nullptr,
      [&](std::vector<Record>& rs) {
        EXPECT_LE(rs.size(), chunk);
        for (auto& r : rs) out.push_back(std::move(r));
      },
      chunk);
  return out;
}

std::string user_error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const UserError& e) { return e.what(); }
  return "";
}

config::DataSpec chat_spec(const std::string& path, const std::string& split = "train") {
  config::DataSpec spec;
  config::DatasetSpec ds;
  ds.path = path;
  ds.split = split;
  ds.type = "chat";
  spec.datasets.push_back(ds);
  spec.sequence_len = 512;
  spec.chat_template = "chatml";
  return spec;
}

}  // namespace

TEST_F(ArrowData, RecordsAreTheRowsDatasetsReads) {
  const json cases = json::parse(std::ifstream(*g_dir / "expected.json"));
  ASSERT_GE(cases.size(), 15u);
  for (const json& c : cases) {
    const std::string path = c["path"], split = c["split"];
    SCOPED_TRACE(path + " split " + split);
    // A small chunk: batches and row groups cross chunk boundaries.
    const std::vector<Record> got = read_all(Source{path, split}, 4);
    ASSERT_EQ(got.size(), c["rows"].size());
    ASSERT_FALSE(got.empty());
    for (size_t i = 0; i < got.size(); ++i) {
      // Key order aside (nlohmann::json compares objects as maps), the same values.
      EXPECT_EQ(json(got[i].value), c["rows"][i]) << "row " << i << " (" << got[i].where << ")";
    }
  }
}

TEST_F(ArrowData, WhereNamesTheFileAndRow) {
  const std::string pq = (*g_dir / "chat.parquet").string();
  std::vector<Record> got = read_all(Source{pq});
  ASSERT_EQ(got.size(), 23u);
  EXPECT_EQ(got[0].where, pq + ": row 0");
  EXPECT_EQ(got[22].where, pq + ": row 22");
  const std::string gz = (*g_dir / "chat.jsonl.gz").string();
  got = read_all(Source{gz});
  EXPECT_EQ(got[2].where, gz + ":3");
  // The hub directory's train split: two shards, rows counted per file.
  got = read_all(Source{*g_dir / "hub", "train"});
  ASSERT_EQ(got.size(), 18u);
  EXPECT_EQ(got[10].where, (*g_dir / "hub" / "data" / "train-00001-of-00002.parquet").string() + ": row 0");
}

TEST_F(ArrowData, ParquetChatGivesTheSameDataAsJsonl) {
  qlora::test::FakeTokenizer tk(false, true, /*eos=*/"<|im_end|>");
  Datasets from_jsonl = build_datasets(chat_spec((*g_dir / "chat.jsonl").string()), tk);
  for (const stdfs::path& p : {*g_dir / "chat.parquet", *g_dir / "file.arrow", *g_dir / "saved"}) {
    SCOPED_TRACE(p.string());
    Datasets d = build_datasets(chat_spec(p.string()), tk);
    EXPECT_EQ(d.train->fingerprint, from_jsonl.train->fingerprint);
    EXPECT_EQ(d.stats.records, from_jsonl.stats.records);
    EXPECT_EQ(d.train->num_samples(), from_jsonl.train->num_samples());
  }
  Datasets hub = build_datasets(chat_spec((*g_dir / "hub").string(), "train"), tk);
  Datasets hub_test = build_datasets(chat_spec((*g_dir / "hub").string(), "test"), tk);
  EXPECT_NE(hub.train->fingerprint, hub_test.train->fingerprint);
}

TEST_F(ArrowData, BadFilesAreOneLineErrorsNamingTheFile) {
  const stdfs::path d = test::temp_dir();
  auto write = [&](const std::string& name, const std::string& bytes) {
    std::ofstream(d / name, std::ios::binary) << bytes;
    return (d / name).string();
  };
  auto err = [&](const Source& s) { return user_error_of([&] { read_all(s); }); };
  const std::string notpq = write("not.parquet", "this is not parquet at all\n");
  EXPECT_EQ(err(Source{notpq}).rfind(notpq + ": not a readable Parquet file: ", 0), 0u) << err(Source{notpq});
  const std::string full = fs::read_file(*g_dir / "chat.parquet");
  const std::string cut = write("cut.parquet", full.substr(0, full.size() / 2));
  EXPECT_EQ(err(Source{cut}).rfind(cut + ": ", 0), 0u);
  const std::string arrow = fs::read_file(*g_dir / "file.arrow");
  const std::string cut_arrow = write("cut.arrow", arrow.substr(0, arrow.size() / 2));
  EXPECT_EQ(err(Source{cut_arrow}).rfind(cut_arrow + ": ", 0), 0u);
  const std::string badgz = write("bad.jsonl.gz", "{\"text\": \"plain, not gzip\"}\n");
  EXPECT_EQ(err(Source{badgz}), badgz + ": not a gzip file (a .gz dataset must be gzip-compressed JSON)");
  const std::string gz = fs::read_file(*g_dir / "chat.jsonl.gz");
  const std::string cutgz = write("cut.jsonl.gz", gz.substr(0, gz.size() - 20));
  EXPECT_EQ(err(Source{cutgz}).rfind(cutgz + ": truncated gzip file", 0), 0u) << err(Source{cutgz});
  const std::string ragged = write("ragged.csv", "a,b\n1,2\n3,4,5\n");
  EXPECT_EQ(err(Source{ragged}).rfind(ragged + ": malformed CSV: ", 0), 0u) << err(Source{ragged});
  EXPECT_EQ(err(Source{*g_dir / "types.parquet"}), "");
  EXPECT_EQ(
      err(Source{*g_dir / "hub", "validation"}),
      (*g_dir / "hub").string() + ": split: no files for split \"validation\" in the directory (it has train, test)");
  stdfs::create_directories(d / "empty");
  EXPECT_EQ(err(Source{d / "empty"}), (d / "empty").string() +
                                          ": no data files in the directory (expected .parquet, .arrow, .jsonl, .json, "
                                          ".jsonl.gz, .json.gz, .csv or .tsv files)");
  for (const std::string& e : {err(Source{notpq}), err(Source{cut}), err(Source{cut_arrow}), err(Source{ragged})})
    EXPECT_EQ(e.find('\n'), std::string::npos) << e;
}

TEST_F(ArrowData, UnsupportedColumnTypesAreNamed) {
  const std::string p = (*g_dir / "binary.parquet").string();  // written by arrow_data.py
  EXPECT_EQ(user_error_of([&] { read_all(Source{p}); }),
            p + ": column \"img\" has type binary, which a record cannot hold (expected strings, numbers, booleans, "
                "lists or structs of them)");
}

TEST_F(ArrowData, PreparedKeyHashesTheFilesOfTheSplit) {
  qlora::test::FakeTokenizer tk(false, true, /*eos=*/"<|im_end|>");
  const stdfs::path hub = test::temp_dir() / "hub";
  stdfs::copy(*g_dir / "hub", hub, stdfs::copy_options::recursive);
  const std::string train = prepared_key(chat_spec(hub.string(), "train"), tk, "tok");
  EXPECT_NE(train, prepared_key(chat_spec(hub.string(), "test"), tk, "tok"));
  // Another train shard's bytes change the key; a file of another split does not.
  std::ofstream(hub / "data" / "test-00000-of-00001.parquet", std::ios::app) << "x";
  EXPECT_EQ(train, prepared_key(chat_spec(hub.string(), "train"), tk, "tok"));
  std::ofstream(hub / "data" / "train-00001-of-00002.parquet", std::ios::app) << "x";
  EXPECT_NE(train, prepared_key(chat_spec(hub.string(), "train"), tk, "tok"));
}

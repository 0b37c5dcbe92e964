// The prepared-data cache (dataset_prepared_path): an entry loads the same rows build_datasets
// makes, every input of the rows changes its key, and a damaged entry is rebuilt with a warning.
// The tokenizer and the data are the training fixture's (tests/python/train_fixture.py: a
// byte-level BPE tokenizer saved by transformers, alpaca records).
#include <gtest/gtest.h>

#include <fstream>
#include <functional>
#include <set>
#include <thread>

#include "tests/common/harness.h"
#include "trainer/common/error.h"
#include "trainer/common/fs.h"
#include "trainer/data/dataset.h"
#include "trainer/data/prepared.h"
#include "trainer/model/gguf_tokenizer.h"
#include "trainer/tokenizer/tokenizer.h"

using namespace qlora;
using namespace qlora::data;
namespace stdfs = std::filesystem;

namespace {

stdfs::path* g_fix = nullptr;

class Prepared : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    g_fix = new stdfs::path(test::temp_dir("fixture"));
    test::ProcResult r = test::run_python("train_fixture.py", {g_fix->string()});
    ASSERT_EQ(r.code, 0) << r.output;
    // Chat records too, for the template's part of the key.
    std::ofstream o(*g_fix / "chat.jsonl");
    for (int i = 0; i < 12; ++i)
      o << R"({"messages": [{"role": "user", "content": "Reverse )"
        << "abcdefg"[i % 7] << R"(bc."}, {"role": "assistant", "content": "cb)"
        << "abcdefg"[i % 7] << R"("}]})"
        << "\n";
    // The training records and a few longer than any sequence_len here (truncated, still trained).
    std::ofstream m(*g_fix / "mixed.jsonl");
    m << fs::read_file(*g_fix / "train.jsonl");
    for (int i = 0; i < 5; ++i)
      m << R"({"instruction": "Repeat.", "input": "", "output": ")" << std::string(2000, "abcdefghij"[i]) << "\"}\n";
  }
  static void TearDownTestSuite() { delete g_fix; }

  // A copy of the fixture's tokenizer files in `dir` (so that a test may change them).
  static stdfs::path tokenizer_copy(const stdfs::path& dir) {
    stdfs::create_directories(dir);
    for (const auto& e : stdfs::directory_iterator(*g_fix / "model")) {
      const std::string n = e.path().filename().string();
      if (n.starts_with("tokenizer") || n == "special_tokens_map.json") stdfs::copy_file(e.path(), dir / n);
    }
    return dir;
  }

  static stdfs::path copy_of(const stdfs::path& file, const stdfs::path& dir) {
    stdfs::create_directories(dir);
    stdfs::copy_file(file, dir / file.filename());
    return dir / file.filename();
  }

  static config::DataSpec spec_for(const stdfs::path& train) {
    config::DataSpec s;
    config::DatasetSpec ds;
    ds.path = train.string();
    ds.type = "alpaca";
    s.datasets.push_back(ds);
    s.sequence_len = 256;
    s.val_set_size = 0.1;
    return s;
  }

  struct Run {
    Datasets d;
    std::vector<std::string> log, warnings;
  };
  static Run prepare(const config::DataSpec& spec, const stdfs::path& tok_dir, const stdfs::path& cache) {
    Run r;
    auto tk = tok::load_tokenizer(tok_dir);
    r.d = prepare_datasets(
        spec, *tk, model::base_tokenizer_digest(tok_dir), cache, [&](const std::string& l) { r.log.push_back(l); },
        [&](const std::string& w) { r.warnings.push_back(w); });
    return r;
  }

  static bool said(const Run& r, const std::string& what) {
    for (const auto& l : r.log)
      if (l.find(what) != std::string::npos) return true;
    return false;
  }

  static std::vector<stdfs::path> entries(const stdfs::path& cache) {
    std::vector<stdfs::path> v;
    for (const auto& e : stdfs::directory_iterator(cache)) v.push_back(e.path());
    return v;
  }

  static void expect_same(const PackedData& a, const PackedData& b) {
    EXPECT_EQ(a.fingerprint, b.fingerprint);
    EXPECT_EQ(a.input_ids, b.input_ids);
    EXPECT_EQ(a.labels, b.labels);
    EXPECT_EQ(a.row_begin, b.row_begin);
    EXPECT_EQ(a.sample_begin, b.sample_begin);
    EXPECT_EQ(a.pad_id, b.pad_id);
    EXPECT_EQ(a.sequence_len, b.sequence_len);
  }
  static void expect_same(const Datasets& a, const Datasets& b) {
    expect_same(*a.train, *b.train);
    expect_same(*a.val, *b.val);
    EXPECT_EQ(stats_to_json(a.stats), stats_to_json(b.stats));
  }

  // build_datasets' result, from scratch.
  static Datasets built(const config::DataSpec& spec, const stdfs::path& tok_dir) {
    auto tk = tok::load_tokenizer(tok_dir);
    return build_datasets(spec, *tk);
  }
};

}  // namespace

TEST_F(Prepared, SecondRunLoadsTheRowsBuildDatasetsMakes) {
  const auto d = test::temp_dir();
  const stdfs::path cache = d / "prepared";
  for (bool packing : {false, true}) {
    SCOPED_TRACE(packing ? "sample_packing" : "one sample per row");
    config::DataSpec spec = spec_for(*g_fix / "mixed.jsonl");
    spec.sample_packing = packing;  // some samples are truncated: the per-file log line is replayed too
    const Datasets ref = built(spec, *g_fix / "model");
    ASSERT_GT(ref.train->num_rows(), 0);
    ASSERT_GT(ref.val->num_rows(), 0);

    const Run first = prepare(spec, *g_fix / "model", cache);
    EXPECT_TRUE(said(first, "data: prepared data written to " + cache.string() + "/prepared-"));
    EXPECT_TRUE(first.warnings.empty());
    expect_same(first.d, ref);

    const Run second = prepare(spec, *g_fix / "model", cache);
    EXPECT_TRUE(said(second, "data: loaded prepared data from " + cache.string() + "/prepared-"));
    EXPECT_FALSE(said(second, "written"));
    EXPECT_TRUE(second.warnings.empty());
    expect_same(second.d, ref);
    // The lines the build printed are printed again, then where the data came from.
    ASSERT_EQ(second.log.size(), first.log.size());
    for (size_t i = 0; i + 1 < first.log.size(); ++i) EXPECT_EQ(second.log[i], first.log[i]);
    EXPECT_TRUE(said(second, "truncated"));
  }
  EXPECT_EQ(entries(cache).size(), 2u);  // one per packing setting, no temporary files
}

TEST_F(Prepared, EveryInputOfTheRowsChangesTheKeyAndNothingElseDoes) {
  const auto d = test::temp_dir();
  const stdfs::path tok_dir = tokenizer_copy(d / "tok");
  const stdfs::path train = copy_of(*g_fix / "train.jsonl", d / "data");
  const stdfs::path chat = copy_of(*g_fix / "chat.jsonl", d / "data");
  config::DataSpec base = spec_for(train);
  config::DatasetSpec chat_ds;
  chat_ds.path = chat.string();
  chat_ds.type = "chat";
  base.datasets.push_back(chat_ds);
  base.chat_template = "chatml";
  auto key = [&](const config::DataSpec& s) {
    auto tk = tok::load_tokenizer(tok_dir);
    return prepared_key(s, *tk, model::base_tokenizer_digest(tok_dir));
  };
  const std::string k0 = key(base);
  EXPECT_EQ(key(base), k0);  // deterministic
  EXPECT_EQ(k0.size(), 64u);

  std::vector<std::pair<std::string, std::function<void(config::DataSpec&)>>> changes = {
      {"sequence_len", [](config::DataSpec& s) { s.sequence_len = 257; }},
      {"seed", [](config::DataSpec& s) { s.seed = 43; }},
      {"train_on_inputs", [](config::DataSpec& s) { s.train_on_inputs = true; }},
      {"sample_packing", [](config::DataSpec& s) { s.sample_packing = true; }},
      {"skip_invalid", [](config::DataSpec& s) { s.skip_invalid = true; }},
      {"val_set_size", [](config::DataSpec& s) { s.val_set_size = 0.2; }},
      {"chat_template", [](config::DataSpec& s) { s.chat_template = "llama3"; }},
      {"chat_template_kwargs", [](config::DataSpec& s) { s.chat_template_kwargs["date_string"] = "1 Jan 2025"; }},
      {"type", [](config::DataSpec& s) { s.datasets[0].type = "text"; }},
      {"field_instruction", [](config::DataSpec& s) { s.datasets[0].field_instruction = "task"; }},
      {"field_input", [](config::DataSpec& s) { s.datasets[0].field_input = "in"; }},
      {"field_output", [](config::DataSpec& s) { s.datasets[0].field_output = "out"; }},
      {"field", [](config::DataSpec& s) { s.datasets[0].field = "body"; }},
      {"field_messages", [](config::DataSpec& s) { s.datasets[1].field_messages = "conversation"; }},
      {"message_field_role", [](config::DataSpec& s) { s.datasets[1].message_field_role = "from"; }},
      {"message_field_content", [](config::DataSpec& s) { s.datasets[1].message_field_content = "value"; }},
      {"field_prompt", [](config::DataSpec& s) { s.datasets[0].field_prompt = "p"; }},
      {"field_completion", [](config::DataSpec& s) { s.datasets[0].field_completion = "c"; }},
      {"dataset order", [](config::DataSpec& s) { std::swap(s.datasets[0], s.datasets[1]); }},
      {"test_datasets",
       [](config::DataSpec& s) {
         s.val_set_size = 0;
         s.test_datasets.push_back(s.datasets[0]);
       }},
  };
  std::set<std::string> seen = {k0};
  for (const auto& [what, change] : changes) {
    config::DataSpec s = base;
    change(s);
    const std::string k = key(s);
    EXPECT_TRUE(seen.insert(k).second) << what << " does not change the key";
  }
  // Settings of batches, not rows: the same key.
  config::DataSpec same = base;
  same.pad_to_sequence_len = true;
  EXPECT_EQ(key(same), k0);
  // The data file's name is not part of it, its bytes are.
  const stdfs::path moved = copy_of(train, d / "elsewhere");
  same = base;
  same.datasets[0].path = moved.string();
  EXPECT_EQ(key(same), k0);
  {
    std::string bytes = fs::read_file(train);
    bytes[bytes.find("Reverse")] = 'r';
    fs::write_file_atomic(train, bytes);
    EXPECT_TRUE(seen.insert(key(base)).second) << "a byte of the data file does not change the key";
    fs::write_file_atomic(train, fs::read_file(moved));
    EXPECT_EQ(key(base), k0);
  }
  // The tokenizer's files: tokenizer.json, tokenizer_config.json, a chat_template.jinja added.
  for (const std::string name : {"tokenizer.json", "tokenizer_config.json"}) {
    const std::string before = fs::read_file(tok_dir / name);
    std::string after = before + "\n";  // the same JSON, other bytes
    fs::write_file_atomic(tok_dir / name, after);
    EXPECT_TRUE(seen.insert(key(base)).second) << name << " does not change the key";
    fs::write_file_atomic(tok_dir / name, before);
  }
  EXPECT_EQ(key(base), k0);
  fs::write_file_atomic(tok_dir / "chat_template.jinja", "{% for m in messages %}{{ m.content }}{% endfor %}");
  config::DataSpec own = base;
  own.chat_template = "";
  const std::string with_own = key(own);
  EXPECT_TRUE(seen.insert(with_own).second);
  fs::write_file_atomic(tok_dir / "chat_template.jinja", "{% for m in messages %}{{ m.content }}!{% endfor %}");
  EXPECT_TRUE(seen.insert(key(own)).second) << "the tokenizer's chat template does not change the key";
}

TEST_F(Prepared, ChangedSettingsMakeANewEntryAndTheOldOneStays) {
  const auto d = test::temp_dir();
  const stdfs::path cache = d / "prepared";
  config::DataSpec spec = spec_for(*g_fix / "train.jsonl");
  prepare(spec, *g_fix / "model", cache);
  spec.sequence_len = 200;
  const Run other = prepare(spec, *g_fix / "model", cache);
  EXPECT_TRUE(said(other, "written"));
  expect_same(other.d, built(spec, *g_fix / "model"));
  EXPECT_EQ(entries(cache).size(), 2u);
  spec.sequence_len = 256;
  EXPECT_TRUE(said(prepare(spec, *g_fix / "model", cache), "loaded"));
}

TEST_F(Prepared, DamagedEntryIsRebuiltWithAWarning) {
  const auto d = test::temp_dir();
  const stdfs::path cache = d / "prepared";
  const config::DataSpec spec = spec_for(*g_fix / "train.jsonl");
  const Datasets ref = built(spec, *g_fix / "model");
  prepare(spec, *g_fix / "model", cache);
  ASSERT_EQ(entries(cache).size(), 1u);
  const stdfs::path entry = entries(cache)[0];
  const std::string good = fs::read_file(entry);
  struct Damage {
    std::string what, bytes, reason;
  };
  std::vector<Damage> damages;
  damages.push_back({"truncated", good.substr(0, good.size() / 2), "truncated"});
  damages.push_back({"one byte short", good.substr(0, good.size() - 1), ""});
  damages.push_back({"empty", "", "truncated"});
  for (size_t at : {size_t{3}, size_t{100}, good.size() / 2, good.size() - 70, good.size() - 1}) {
    std::string flipped = good;
    flipped[at] = static_cast<char>(flipped[at] ^ 0x10);
    damages.push_back({"bit flipped at byte " + std::to_string(at), flipped, ""});
  }
  damages.push_back({"grown", good + "x", ""});
  for (const auto& dmg : damages) {
    SCOPED_TRACE(dmg.what);
    fs::write_file_atomic(entry, dmg.bytes);
    const Run r = prepare(spec, *g_fix / "model", cache);
    ASSERT_EQ(r.warnings.size(), 1u);
    EXPECT_EQ(r.warnings[0].rfind(entry.string() + ": prepared data is corrupt (", 0), 0u) << r.warnings[0];
    EXPECT_NE(r.warnings[0].find("); rebuilding"), std::string::npos) << r.warnings[0];
    if (!dmg.reason.empty()) { EXPECT_NE(r.warnings[0].find(dmg.reason), std::string::npos) << r.warnings[0]; }
    EXPECT_TRUE(said(r, "written"));
    expect_same(r.d, ref);
    EXPECT_EQ(fs::read_file(entry), good);  // rewritten whole
    EXPECT_EQ(entries(cache).size(), 1u);
  }
  const Run after = prepare(spec, *g_fix / "model", cache);
  EXPECT_TRUE(after.warnings.empty());
  EXPECT_TRUE(said(after, "loaded"));
}

TEST_F(Prepared, DirectoryThatCannotBeWrittenIsAWarningAndTheDataIsStillPrepared) {
  const auto d = test::temp_dir();
  fs::write_file_atomic(d / "a-file", "x");
  const config::DataSpec spec = spec_for(*g_fix / "train.jsonl");
  const Run r = prepare(spec, *g_fix / "model", d / "a-file" / "prepared");
  ASSERT_EQ(r.warnings.size(), 1u);
  EXPECT_NE(r.warnings[0].find("dataset_prepared_path: cannot create the directory"), std::string::npos)
      << r.warnings[0];
  EXPECT_NE(r.warnings[0].find("not cached"), std::string::npos) << r.warnings[0];
  expect_same(r.d, built(spec, *g_fix / "model"));
}

TEST_F(Prepared, ConcurrentWritersOfOneEntryLeaveOneWholeEntry) {
  const auto d = test::temp_dir();
  const stdfs::path cache = d / "prepared";
  const config::DataSpec spec = spec_for(*g_fix / "train.jsonl");
  const Datasets ref = built(spec, *g_fix / "model");
  std::vector<Run> runs(4);
  std::vector<std::thread> threads;
  for (auto& r : runs) threads.emplace_back([&] { r = prepare(spec, *g_fix / "model", cache); });
  for (auto& t : threads) t.join();
  for (const auto& r : runs) {
    EXPECT_TRUE(r.warnings.empty());
    expect_same(r.d, ref);
  }
  EXPECT_EQ(entries(cache).size(), 1u);  // no temporary file left behind
  const Run after = prepare(spec, *g_fix / "model", cache);
  EXPECT_TRUE(after.warnings.empty());
  EXPECT_TRUE(said(after, "loaded"));
}

// The data warnings of preparing (here: a sample whose answer truncation cuts away) are kept in
// the entry and given again by a run that loads it.
TEST_F(Prepared, DataWarningsAreRepeatedWhenTheEntryIsLoaded) {
  const auto d = test::temp_dir();
  const stdfs::path data = d / "long.jsonl";
  {
    std::ofstream o(data);
    o << fs::read_file(*g_fix / "train.jsonl");
    std::string longer;
    for (int i = 0; i < 400; ++i) longer += "word ";
    o << "{\"instruction\": \"" << longer << "\", \"input\": \"\", \"output\": \"done\"}\n";
  }
  const config::DataSpec spec = spec_for(data);
  const Run first = prepare(spec, *g_fix / "model", d / "prepared");
  ASSERT_EQ(first.warnings.size(), 1u);
  EXPECT_NE(first.warnings[0].find("1 of 97 samples have no supervised token (dropped)"), std::string::npos)
      << first.warnings[0];
  const Run second = prepare(spec, *g_fix / "model", d / "prepared");
  EXPECT_TRUE(said(second, "loaded"));
  EXPECT_EQ(second.warnings, first.warnings);
}

TEST_F(Prepared, StatsRoundTripThroughJson) {
  DataStats s;
  s.records = 1;
  s.skipped_invalid = 2;
  s.truncated = 3;
  s.dropped_no_targets = 4;
  s.train_samples = 5;
  s.val_samples = 6;
  s.train_rows = 7;
  s.val_rows = 8;
  s.train_tokens = 9;
  s.train_target_tokens = 10;
  s.dropped_truncated = 11;
  s.no_eos = 12;
  s.train_lengths = {13, 14};
  s.val_lengths = {15};
  EXPECT_EQ(stats_from_json(stats_to_json(s)).summary(), s.summary());
  EXPECT_EQ(stats_to_json(stats_from_json(stats_to_json(s))), stats_to_json(s));
  EXPECT_ANY_THROW(stats_from_json("{\"records\": 1}"));
}

// Streaming: the samples and rows go through scratch files and the rows are a mapping of them,
// with the same rows, bit for bit, as in memory; a cached entry is mapped in place.
TEST_F(Prepared, StreamingMakesTheSameRowsThroughScratchFilesAndMapsTheEntry) {
  const auto d = test::temp_dir();
  const stdfs::path scratch = d / "scratch";
  for (bool packing : {false, true}) {
    SCOPED_TRACE(packing ? "sample_packing" : "one sample per row");
    config::DataSpec spec = spec_for(*g_fix / "mixed.jsonl");
    spec.sample_packing = packing;
    const Datasets ref = built(spec, *g_fix / "model");
    EXPECT_FALSE(ref.train->input_ids.mapped());
    spec.streaming = true;
    spec.scratch_dir = scratch.string();
    const Datasets s = built(spec, *g_fix / "model");
    EXPECT_TRUE(s.train->input_ids.mapped());
    EXPECT_TRUE(s.val->labels.mapped());
    expect_same(s, ref);
    EXPECT_TRUE(entries(scratch).empty()) << "scratch files are unlinked as soon as they are made";

    // Validation by file, streamed too.
    config::DataSpec by_file = spec;
    by_file.val_set_size = 0;
    by_file.test_datasets = {spec.datasets[0]};
    by_file.test_datasets[0].path = (*g_fix / "train.jsonl").string();
    Datasets f = built(by_file, *g_fix / "model");
    by_file.streaming = false;
    expect_same(f, built(by_file, *g_fix / "model"));

    // Through the cache: written from the mapped rows, then loaded as a mapping of the entry.
    const stdfs::path cache = d / (packing ? "cache-packed" : "cache");
    const Run first = prepare(spec, *g_fix / "model", cache);
    expect_same(first.d, ref);
    const Run second = prepare(spec, *g_fix / "model", cache);
    EXPECT_TRUE(said(second, "data: loaded prepared data from "));
    EXPECT_TRUE(second.d.train->input_ids.mapped());
    expect_same(second.d, ref);
    spec.streaming = false;  // the same entry, read into memory
    const Run third = prepare(spec, *g_fix / "model", cache);
    EXPECT_FALSE(third.d.train->input_ids.mapped());
    expect_same(third.d, ref);
  }
}

TEST_F(Prepared, StreamingIntoADirectoryThatCannotBeWrittenNamesIt) {
  const auto d = test::temp_dir();
  fs::write_file_atomic(d / "a-file", "x");
  config::DataSpec spec = spec_for(*g_fix / "train.jsonl");
  spec.streaming = true;
  spec.scratch_dir = (d / "a-file" / "scratch").string();
  std::string e;
  try {
    built(spec, *g_fix / "model");
  } catch (const UserError& err) { e = err.what(); }
  EXPECT_NE(e.find((d / "a-file" / "scratch").string() + ": cannot create a scratch file for the tokenized samples"),
            std::string::npos)
      << e;
}

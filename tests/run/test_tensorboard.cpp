// The TensorBoard event-file writer (run/tensorboard.h), read back by TensorBoard's own loader and
// checksummed by its own CRC (tests/python/tensorboard_records.py): records, scalars and text, file
// names in the order TensorBoard reads them, and the resume truncation (torn tails, a rewrite's
// leftover temporary file, a fresh run's removal, files left untouched when nothing changes).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <ctime>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>

#include "tests/common/harness.h"
#include "trainer/common/error.h"
#include "trainer/common/fs.h"
#include "trainer/run/metrics.h"
#include "trainer/run/tensorboard.h"

using namespace qlora;
namespace stdfs = std::filesystem;

namespace {

// Each event TensorBoard's loader reads from `dir`: {file, step, kind, tag, value}.
std::vector<nlohmann::json> tb_list(const stdfs::path& dir) {
  test::ProcResult r = test::run_python("tensorboard_records.py", {"list", dir.string()});
  std::vector<nlohmann::json> v;
  std::istringstream in(r.output);
  std::string line;
  while (std::getline(in, line))
    if (line.starts_with("{")) v.push_back(nlohmann::json::parse(line));
  return v;
}

// (step, tag) of the summaries TensorBoard reads, in file order.
std::vector<std::pair<int64_t, std::string>> summaries(const std::vector<nlohmann::json>& events) {
  std::vector<std::pair<int64_t, std::string>> v;
  for (const auto& e : events)
    if (e["kind"] != "version") v.emplace_back(e["step"].get<int64_t>(), e["tag"].get<std::string>());
  return v;
}

std::vector<stdfs::path> files_in(const stdfs::path& dir) {
  std::vector<stdfs::path> v;
  for (const auto& e : stdfs::directory_iterator(dir)) v.push_back(e.path());
  std::sort(v.begin(), v.end());
  return v;
}

}  // namespace

TEST(TensorBoardWriter, MaskedCrc32cIsTensorBoards) {
  auto d = test::temp_dir();
  std::vector<std::string> inputs = {"", "123456789", std::string(1000, '\xff')};
  std::string bytes;
  for (int i = 0; i < 777; ++i) bytes += static_cast<char>((i * 131 + 7) & 0xFF);
  inputs.push_back(bytes);
  std::vector<std::string> args = {"crc"};
  for (size_t i = 0; i < inputs.size(); ++i) {
    fs::write_file_atomic(d / std::to_string(i), inputs[i]);
    args.push_back((d / std::to_string(i)).string());
  }
  test::ProcResult r = test::run_python("tensorboard_records.py", args);
  std::istringstream in(r.output);
  for (const auto& s : inputs) {
    uint64_t want = 0;
    ASSERT_TRUE(in >> want) << r.output;
    EXPECT_EQ(run::masked_crc32c(s), want) << s.size() << " bytes";
  }
}

TEST(TensorBoardWriter, ScalarsAndTextReadBackByTensorBoard) {
  auto d = test::temp_dir();
  stdfs::path written;
  {
    run::TensorBoardWriter w(d / "tb");
    written = w.path();
    w.add_text("config", 0, "```yaml\nlora_r: 8\n```\n");
    w.add_scalar("train/loss", 1, 2.5);
    w.add_scalar("train/learning_rate", 1, 1e-4);
    w.add_scalar("train/loss", -3, 0.1);  // a negative step: int64 on the wire
    w.add_session_start(4);
    w.flush();
  }
  const std::string name = written.filename().string();
  EXPECT_TRUE(name.starts_with("events.out.tfevents.")) << name;
  const auto ev = tb_list(d / "tb");
  ASSERT_EQ(ev.size(), 6u);
  EXPECT_EQ(ev[0]["kind"], "version");
  EXPECT_EQ(ev[0]["tag"], "brain.Event:2");
  EXPECT_EQ(ev[1]["kind"], "text");
  EXPECT_EQ(ev[1]["value"], "```yaml\nlora_r: 8\n```\n");
  EXPECT_EQ(ev[2]["tag"], "train/loss");
  EXPECT_EQ(ev[2]["step"], 1);
  EXPECT_EQ(ev[2]["value"].get<double>(), 2.5);
  EXPECT_EQ(ev[3]["value"].get<double>(), static_cast<double>(1e-4f));
  EXPECT_EQ(ev[4]["step"], -3);
  EXPECT_EQ(ev[5]["kind"], "session_start");
  EXPECT_EQ(ev[5]["step"], 4);
}

// A new file is named after every file already there (TensorBoard reads a directory's files in
// name order), even one whose time is ahead of the clock.
TEST(TensorBoardWriter, NewFileSortsAfterTheOthers) {
  auto d = test::temp_dir();
  const std::string ahead = "events.out.tfevents." + std::to_string(std::time(nullptr) + 100) + ".other";
  { run::TensorBoardWriter w(d); }
  fs::write_file_atomic(d / ahead, "");
  stdfs::path second;
  {
    run::TensorBoardWriter w(d);
    second = w.path();
  }
  const auto f = files_in(d);
  ASSERT_EQ(f.size(), 3u);
  EXPECT_EQ(f.back(), second);
}

TEST(TensorBoardWriter, TruncateKeepsStepsUpToTheResumedOne) {
  auto d = test::temp_dir();
  {
    run::TensorBoardWriter w(d);
    w.add_text("config", 0, "first");
    for (int s = 1; s <= 5; ++s) w.add_scalar("train/loss", s, s);
  }
  const stdfs::path first = files_in(d).at(0);
  // Nothing after step 9: the file is left as it is.
  const std::string before = fs::read_file(first);
  EXPECT_EQ(run::truncate_event_files(d, 9, "config"), 0);
  EXPECT_EQ(fs::read_file(first), before);

  // A crash: a torn record at the end, and a rewrite's temporary file left behind.
  {
    std::ofstream o(first, std::ios::app | std::ios::binary);
    o << before.substr(40, 30);
    std::ofstream(d / ("." + first.filename().string() + ".tmp-7-0"), std::ios::binary) << before;
  }
  EXPECT_EQ(run::truncate_event_files(d, 3, "config"), 2);  // steps 4 and 5
  EXPECT_EQ(files_in(d), std::vector<stdfs::path>{first});
  using S = std::vector<std::pair<int64_t, std::string>>;
  EXPECT_EQ(summaries(tb_list(d)), (S{{0, "config"}, {1, "train/loss"}, {2, "train/loss"}, {3, "train/loss"}}));

  // The resumed run's file, then a second resume from the same step: its config and steps go.
  {
    run::TensorBoardWriter w(d);
    w.add_text("config", 3, "resumed");
    for (int s = 4; s <= 6; ++s) w.add_scalar("train/loss", s, s);
  }
  EXPECT_EQ(run::truncate_event_files(d, 3, "config"), 4);
  EXPECT_EQ(summaries(tb_list(d)), (S{{0, "config"}, {1, "train/loss"}, {2, "train/loss"}, {3, "train/loss"}}));
  EXPECT_EQ(files_in(d).size(), 2u);

  // A fresh run: the earlier attempt's files go.
  EXPECT_EQ(run::remove_event_files(d), 2);
  EXPECT_TRUE(files_in(d).empty());
  EXPECT_EQ(run::truncate_event_files(d / "missing", 3, "config"), 0);
  EXPECT_EQ(run::remove_event_files(d / "missing"), 0);
  EXPECT_FALSE(stdfs::exists(d / "missing"));
}

TEST(TensorBoardWriter, LoggingDirThatCannotBeMadeIsAUserError) {
  auto d = test::temp_dir();
  fs::write_file_atomic(d / "file", "x");
  EXPECT_THROW(run::check_logging_dir(d / "file", "cfg.yaml:3: logging_dir"), UserError);
  try {
    run::check_logging_dir(d / "file/tb", "cfg.yaml:3: logging_dir");
    ADD_FAILURE() << "no error";
  } catch (const UserError& e) {
    EXPECT_EQ(std::string(e.what()), "cfg.yaml:3: logging_dir: cannot create " + (d / "file/tb").string() + ": " +
                                         (d / "file").string() + " is not a directory");
  }
  run::check_logging_dir(d / "new/tb", "x");  // creatable: fine, and nothing is created
  EXPECT_FALSE(stdfs::exists(d / "new"));
}

// metrics.jsonl's lines feed TensorBoard: every number of a step or eval line under its tag, at
// its step; a non-finite one (null in the line) and event lines are left out.
TEST(TensorBoardWriter, MetricsLogFeedsTensorBoard) {
  auto d = test::temp_dir();
  {
    run::MetricsLog log(d / "metrics.jsonl", false);
    log.attach_tensorboard(std::make_unique<run::TensorBoardWriter>(d / "tb"));
    run::StepMetrics s;
    s.step = 1;
    s.loss = 2.5;
    s.lr = 1e-4;
    s.grad_norm = std::nan("");
    s.tokens_per_s = 1234.5;
    s.memory_bytes = 1 << 20;
    s.skipped_steps = 1;
    log.log_step(s);
    run::EvalMetrics e;
    e.step = 1;
    e.loss = 2.0;
    e.perplexity = 7.389;
    e.accuracy = 0.5;
    log.log_eval(e);
    log.log_event("resume", R"({"step": 1, "from": "checkpoint-000001"})");
  }
  std::map<std::string, double> got;
  for (const auto& e : tb_list(d / "tb"))
    if (e["kind"] == "scalar") {
      EXPECT_EQ(e["step"], 1);
      got[e["tag"].get<std::string>()] = e["value"].get<double>();
    }
  const std::map<std::string, double> want = {{"train/loss", 2.5},
                                              {"train/learning_rate", static_cast<double>(1e-4f)},
                                              {"train/epoch", 0},
                                              {"train/tokens", 0},
                                              {"train/tokens_per_second", 1234.5},
                                              {"train/elapsed_seconds", 0},
                                              {"train/memory_bytes", 1 << 20},
                                              {"train/skipped_steps", 1},
                                              {"eval/loss", 2.0},
                                              {"eval/perplexity", static_cast<double>(7.389f)},
                                              {"eval/tokens", 0},
                                              {"eval/accuracy", 0.5}};
  EXPECT_EQ(got, want);
}

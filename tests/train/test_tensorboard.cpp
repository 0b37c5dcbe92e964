// report_to: tensorboard end to end on the tiny fixture model, judged by TensorBoard's own readers
// (tests/python/tensorboard_check.py): every number of metrics.jsonl under HF Trainer's tags, the
// resolved config as text, each step once and in order after a resume from an earlier checkpoint
// (with a torn record and a stale temporary file left by a crash), bad report_to values and an
// unusable logging_dir refused at the start with one line.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <fstream>

#include "tests/common/harness.h"
#include "tests/train/fixture_config.h"
#include "trainer/common/fs.h"

using namespace qlora;
namespace stdfs = std::filesystem;

namespace {

stdfs::path* g_fix = nullptr;

class TensorBoard : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    g_fix = new stdfs::path(test::temp_dir("tb_fixture"));
    test::ProcResult r = test::run_python("train_fixture.py", {g_fix->string()});
    ASSERT_EQ(r.code, 0) << r.output;
  }
  static void TearDownTestSuite() { delete g_fix; }

  static stdfs::path write_config(const stdfs::path& dir, const std::string& extra) {
    return test::write_fixture_config(*g_fix, dir, "save_steps: 3\n" + extra);
  }

  static test::ProcResult train(const stdfs::path& cfg, const std::string& args = "") {
    return test::run(test::quote(test::qlora_exe().string()) + " train " + test::quote(cfg.string()) + " " + args);
  }

  // tensorboard_check.py on a run; returns its dump ({scalars: {tag: [[step, value]]}, ...}).
  static nlohmann::json check(const stdfs::path& logdir, const stdfs::path& run) {
    const stdfs::path dump = logdir.parent_path() / "tb_dump.json";
    test::ProcResult r =
        test::run_python("tensorboard_check.py", {logdir.string(), run.string(), "--dump", dump.string()});
    EXPECT_EQ(r.code, 0) << r.output;
    if (r.code != 0) return nlohmann::json::object();
    return nlohmann::json::parse(fs::read_file(dump));
  }

  // "cfg.yaml:N" for the line of `cfg` that starts with `key:`.
  static std::string where(const stdfs::path& cfg, const std::string& key) {
    std::ifstream in(cfg);
    std::string line;
    for (int n = 1; std::getline(in, line); ++n)
      if (line.rfind(key + ":", 0) == 0) return cfg.string() + ":" + std::to_string(n);
    ADD_FAILURE() << key << " not in " << cfg;
    return "";
  }

  // The error lines of an output.
  static int errors(const std::string& out) {
    int n = 0;
    for (size_t at = out.find("qlora: error: "); at != std::string::npos; at = out.find("qlora: error: ", at + 1)) ++n;
    return n;
  }

  static std::vector<stdfs::path> event_files(const stdfs::path& dir) {
    std::vector<stdfs::path> v;
    for (const auto& e : stdfs::directory_iterator(dir)) v.push_back(e.path());
    std::sort(v.begin(), v.end());
    return v;
  }
};

}  // namespace

TEST_F(TensorBoard, RunLogsEveryMetricAndTheConfig) {
  auto d = test::temp_dir();
  // An event file of an earlier start that left no checkpoint: a fresh run removes it.
  stdfs::create_directories(d / "run/runs");
  fs::write_file_atomic(d / "run/runs/events.out.tfevents.1000000000.old", "not events");
  test::ProcResult r = train(write_config(d, "report_to: tensorboard\n"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("tensorboard: removed"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("tensorboard --logdir " + (d / "run/runs").string()), std::string::npos) << r.output;
  const nlohmann::json j = check(d / "run/runs", d / "run");
  ASSERT_TRUE(j.contains("scalars"));
  const auto& s = j["scalars"];
  for (const char* tag : {"train/loss", "train/learning_rate", "train/grad_norm", "train/tokens_per_second",
                          "train/memory_bytes", "train/skipped_steps", "train/epoch", "eval/loss", "eval/perplexity"}) {
    EXPECT_TRUE(s.contains(tag)) << tag;
  }
  EXPECT_EQ(s["train/loss"].size(), 8u);
  EXPECT_EQ(s["eval/loss"].size(), 3u);  // steps 3, 6 and 8
  EXPECT_EQ(j["config_steps"], nlohmann::json::array({0}));
  EXPECT_EQ(j["files"].size(), 1u);
}

TEST_F(TensorBoard, ReportToNoneOrAbsentWritesNoEventFiles) {
  for (const std::string extra : {"", "report_to: none\n", "report_to: [none]\n"}) {
    SCOPED_TRACE(extra);
    auto d = test::temp_dir();
    test::ProcResult r = train(write_config(d, extra), "--set max_steps=2 --set save_steps=0");
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_FALSE(stdfs::exists(d / "run/runs"));
    EXPECT_NE(fs::read_file(d / "run/config.yaml").find("report_to: none"), std::string::npos);
  }
}

// A run stopped after step 7 (checkpoints 3, 6, 7), its event file torn by a crash, resumed from
// checkpoint 3, then again with a rewrite's temporary file left behind: TensorBoard sees each step
// once, in order, with the values of a run that was never interrupted (resume is bit-identical);
// so does a TensorBoard that was running across the first resume.
TEST_F(TensorBoard, ResumeFromAnEarlierCheckpointKeepsEachStepOnceInOrder) {
  auto a = test::temp_dir("straight");
  auto b = test::temp_dir("resumed");
  const std::string extra = "report_to: [tensorboard]\nlogging_dir: tb\n";  // relative: against the cwd
  const stdfs::path cwd = stdfs::current_path();
  stdfs::current_path(a);
  test::ProcResult ra = train(write_config(a, extra));
  stdfs::current_path(b);
  test::ProcResult rb1 = train(write_config(b, extra), "--test-stop-after-step 7");
  stdfs::current_path(cwd);
  ASSERT_EQ(ra.code, 0) << ra.output;
  ASSERT_EQ(rb1.code, 0) << rb1.output;
  ASSERT_TRUE(stdfs::exists(b / "run/checkpoints/checkpoint-000007"));
  check(b / "tb", b / "run");

  // A crash: half a record at the end of the event file.
  const auto files = event_files(b / "tb");
  ASSERT_EQ(files.size(), 1u);
  const std::string bytes = fs::read_file(files[0]);
  std::ofstream(files[0], std::ios::app | std::ios::binary) << bytes.substr(bytes.size() / 2, 20);

  // The resume runs under a TensorBoard reader that has read the first attempt's events and reads
  // again after it, as a TensorBoard left running does (tensorboard_live.py).
  stdfs::current_path(b);
  test::ProcResult rb2 =
      test::run_python("tensorboard_live.py",
                       {(b / "tb").string(), (b / "run").string(), "--", test::qlora_exe().string(), "train",
                        (b / "cfg.yaml").string(), "--resume", (b / "run/checkpoints/checkpoint-000003").string()});
  stdfs::current_path(cwd);
  ASSERT_EQ(rb2.code, 0) << rb2.output;
  EXPECT_NE(rb2.output.find("resumed from " + (b / "run/checkpoints/checkpoint-000003").string()), std::string::npos)
      << rb2.output;
  EXPECT_NE(rb2.output.find("tensorboard: removed"), std::string::npos) << rb2.output;
  EXPECT_EQ(event_files(b / "tb").size(), 2u);  // the first attempt's file rewritten, the resumed run's

  const nlohmann::json ja = check(a / "tb", a / "run"), jb = check(b / "tb", b / "run");
  ASSERT_TRUE(ja.contains("scalars") && jb.contains("scalars"));
  EXPECT_EQ(jb["config_steps"], nlohmann::json::array({0, 3}));
  for (const char* tag : {"train/loss", "train/grad_norm", "train/learning_rate", "train/epoch", "train/tokens",
                          "eval/loss", "eval/perplexity", "eval/tokens"}) {
    SCOPED_TRACE(tag);
    EXPECT_EQ(ja["scalars"][tag], jb["scalars"][tag]);
  }
  std::vector<int64_t> steps;
  for (const auto& e : jb["scalars"]["train/loss"]) steps.push_back(e[0].get<int64_t>());
  EXPECT_EQ(steps, (std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7, 8}));

  // Resumed again from the same checkpoint, with a temporary file left by a rewrite that was
  // killed (TensorBoard would read it as one of the run's files): the same result, no step twice.
  const auto files2 = event_files(b / "tb");
  std::ofstream(b / "tb" / ("." + files2.back().filename().string() + ".tmp-1-0"), std::ios::binary)
      << fs::read_file(files2.back());
  test::ProcResult rb3 =
      train(b / "cfg.yaml", "--resume " + test::quote((b / "run/checkpoints/checkpoint-000003").string()) +
                                " --set logging_dir=" + test::quote((b / "tb").string()));
  ASSERT_EQ(rb3.code, 0) << rb3.output;
  const nlohmann::json jc = check(b / "tb", b / "run");
  ASSERT_TRUE(jc.contains("scalars"));
  EXPECT_EQ(jc["scalars"]["train/loss"], ja["scalars"]["train/loss"]);
  EXPECT_EQ(jc["config_steps"], nlohmann::json::array({0, 3}));
}

TEST_F(TensorBoard, BadReportToIsOneLineNamingTheKey) {
  for (const auto& [value, key] : std::vector<std::pair<std::string, std::string>>{
           {"wandb", "report_to"}, {"[tensorboard, wandb]", "report_to.1"}, {"{a: 1}", "report_to"}}) {
    SCOPED_TRACE(value);
    auto d = test::temp_dir();
    const stdfs::path cfg = write_config(d, "report_to: " + value + "\n");
    test::ProcResult r = train(cfg);
    EXPECT_EQ(r.code, 2) << r.output;
    const std::string line =
        where(cfg, "report_to") + ": " + key + ": expected tensorboard, all or none (or a list of them)";
    EXPECT_NE(r.output.find(line), std::string::npos) << r.output;
    EXPECT_EQ(errors(r.output), 1) << r.output;
    EXPECT_FALSE(stdfs::exists(d / "run"));
  }
}

// logging_dir under a regular file: refused before anything is written (exit 2, one line naming
// the key); the same without report_to: tensorboard is not looked at.
TEST_F(TensorBoard, UnusableLoggingDirIsRefusedAtTheStart) {
  auto d = test::temp_dir();
  fs::write_file_atomic(d / "file", "x\n");
  const stdfs::path cfg = write_config(d, "report_to: all\nlogging_dir: " + (d / "file/tb").string() + "\n");
  test::ProcResult r = train(cfg);
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find(where(cfg, "logging_dir") + ": logging_dir: cannot create " + (d / "file/tb").string()),
            std::string::npos)
      << r.output;
  EXPECT_EQ(errors(r.output), 1) << r.output;
  EXPECT_FALSE(stdfs::exists(d / "run"));
}

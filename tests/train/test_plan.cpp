// `qlora plan` against `qlora train`: the predicted peak within 10% of the measured one (peak RSS
// above the process's RSS at the start, as `qlora train` reports it), the changes it names make
// the run fit, and `qlora train` refuses a run the plan says cannot fit. The model and data are
// made by transformers at test time (tests/python/plan_fixture.py). bench/bench_plan.py runs the
// whole table.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>

#include "tests/common/harness.h"
#include "tests/common/load_peak.h"
#include "trainer/common/fs.h"

namespace qlora {
namespace {

using json = nlohmann::json;
namespace stdfs = std::filesystem;

class Plan : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new stdfs::path(test::temp_dir("plan_fixture"));
    test::run_python("plan_fixture.py", {test::source_dir().string(), dir_->string()});
  }
  static void TearDownTestSuite() { delete dir_; }

  // A config for the fixture: every row sequence_len tokens, LoRA on all linears.
  static stdfs::path config(const std::string& name, const std::string& extra) {
    const stdfs::path p = *dir_ / (name + ".yaml");
    std::ofstream f(p);
    f << "base_model: " << (*dir_ / "model").string() << "\nadapter: qlora\n"
      << "lora_target_linear: true\ndatasets:\n  - path: " << (*dir_ / "train.jsonl").string()
      << "\n    type: text\nlearning_rate: 1.0e-4\nmax_steps: 2\nsave_steps: 1000\nlogging_steps: 1\n"
      << "output_dir: " << (*dir_ / ("run-" + name)).string() << "\n"
      << extra;
    return p;
  }

  static json plan(const stdfs::path& cfg, const std::string& args = "") {
    const test::ProcResult r = test::run_qlora("plan " + test::quote(cfg.string()) + " --json --no-time " + args);
    EXPECT_EQ(r.code, 0) << r.output;
    return json::parse(r.output);
  }

  static stdfs::path* dir_;
};
stdfs::path* Plan::dir_ = nullptr;

// Two configurations unlike each other: no checkpointing with dropout and the fp32 state, and
// checkpointing with 8-bit paged state, a larger rank and longer rows.
TEST_F(Plan, PredictedPeakIsWithinTenPercentOfTheMeasuredOne) {
  if (!test::rss_is_measurable()) GTEST_SKIP() << "AddressSanitizer keeps freed memory resident";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"plain",
       "sequence_len: 256\nmicro_batch_size: 4\nlora_r: 16\nlora_alpha: 32\nlora_dropout: 0.05\n"
       "optimizer: adamw_torch\n"},
      {"ckpt",
       "sequence_len: 1024\nmicro_batch_size: 2\nlora_r: 64\nlora_alpha: 64\nlora_dropout: 0.05\n"
       "gradient_checkpointing: true\noptimizer: paged_adamw_8bit\n"}};
  for (const auto& [name, extra] : cases) {
    SCOPED_TRACE(name);
    const stdfs::path cfg = config(name, extra);
    const json p = plan(cfg);
    const double predicted = p["memory"]["peak_bytes"].get<double>();
    uint64_t sum = 0;
    for (const json& part : p["memory"]["parts"]) sum += part["bytes"].get<uint64_t>();
    EXPECT_EQ(sum, p["memory"]["train_peak_bytes"].get<uint64_t>());
    // The plan counts the row shards' activations alive together; on a busy machine the two
    // shard threads can run one after the other and the measured peak comes out lower (seen:
    // 188 against 204-208 MB unloaded). A peak below the band is measured once more and the
    // higher run kept; one above it (the plan too low) is never retried.
    double measured = 0;
    for (int attempt = 0; attempt < 2 && measured < 0.9 * predicted; ++attempt) {
      if (attempt > 0) stdfs::remove_all(dir_->string() + "/run-" + name);
      const test::ProcResult r = test::run_qlora("train " + test::quote(cfg.string()));
      ASSERT_EQ(r.code, 0) << r.output;
      std::smatch m;
      ASSERT_TRUE(std::regex_search(r.output, m, std::regex(R"(memory: peak .*?\((\d+) bytes\))"))) << r.output;
      measured = std::max(measured, std::stod(m[1].str()));
    }
    EXPECT_NEAR(predicted, measured, 0.10 * measured) << "predicted " << predicted << ", measured " << measured;
  }
}

// Below its peak, the plan names changes that fit; applied, each makes the plan fit.
TEST_F(Plan, NamedFixesMakeTheRunFit) {
  const stdfs::path cfg = config("fixes", "sequence_len: 1024\nmicro_batch_size: 8\nlora_dropout: 0.05\n");
  const json full = plan(cfg);
  const uint64_t peak = full["memory"]["peak_bytes"].get<uint64_t>();
  const uint64_t budget = peak * 6 / 10;
  const json p = plan(cfg, "--memory " + std::to_string(budget));
  EXPECT_FALSE(p["budget"]["fits"].get<bool>());
  ASSERT_FALSE(p["budget"]["fixes"].empty()) << p.dump(1);
  bool saw_checkpointing = false;
  for (const json& f : p["budget"]["fixes"]) {
    const std::string change = f["change"].get<std::string>();
    SCOPED_TRACE(change);
    EXPECT_LE(f["peak_bytes"].get<uint64_t>(), budget);
    saw_checkpointing |= change == "gradient_checkpointing: true";
    // "key: value (...)", possibly "a and b": each part as --set key=value
    std::string sets;
    std::regex kv(R"(([a-z_]+): ([A-Za-z0-9_]+))");
    for (auto it = std::sregex_iterator(change.begin(), change.end(), kv); it != std::sregex_iterator(); ++it) {
      std::string key = (*it)[1].str(), value = (*it)[2].str();
      sets += " --set " + key + "=" + value;
    }
    const json fixed = plan(cfg, "--memory " + std::to_string(budget) + sets);
    EXPECT_TRUE(fixed["budget"]["fits"].get<bool>()) << sets << "\n" << fixed.dump(1);
  }
  EXPECT_TRUE(saw_checkpointing) << p.dump(1);
}

// `qlora train` runs the plan first and refuses what cannot fit, naming the config's line and
// the changes that fit; nothing is written.
TEST_F(Plan, TrainRefusesARunThatCannotFit) {
  const stdfs::path cfg = config("huge", "sequence_len: 16384\npad_to_sequence_len: true\nmicro_batch_size: 64\n");
  const test::ProcResult r = test::run_qlora("train " + test::quote(cfg.string()));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("qlora: error: " + cfg.string() + ":"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("it fits with"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("memory_check: false"), std::string::npos) << r.output;
  EXPECT_FALSE(stdfs::exists(*dir_ / "run-huge"));
}

TEST_F(Plan, BadArgumentsAreOneLineErrors) {
  const stdfs::path cfg = config("bad", "sequence_len: 256\nmicro_batch_size: 1\n");
  test::ProcResult r = test::run_qlora("plan " + test::quote(cfg.string()) + " --memory lots");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.output.find("qlora: error: --memory: expected a size"), std::string::npos) << r.output;
  r = test::run_qlora("plan " + test::quote((*dir_ / "missing.yaml").string()));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("missing.yaml"), std::string::npos) << r.output;
}

// The text report names every part and the step time.
TEST_F(Plan, TextReportShowsThePartsAndTheStepTime) {
  const stdfs::path cfg = config("text", "sequence_len: 128\nmicro_batch_size: 2\n");
  const test::ProcResult r = test::run_qlora("plan " + test::quote(cfg.string()) + " --memory 64GB");
  ASSERT_EQ(r.code, 0) << r.output;
  for (const char* s : {"NF4 base weights", "LoRA weights and gradients", "optimizer state", "activations",
                        "step working set", "budget: 59.6 GiB (--memory): fits", "step time: about"})
    EXPECT_NE(r.output.find(s), std::string::npos) << s << "\n" << r.output;
}

}  // namespace
}  // namespace qlora

// qlora train end to end on a tiny model made by transformers at test time: exact resume,
// checkpoint fallback, config-change refusal, non-finite steps, accumulation normalization.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <fstream>

#include "tests/common/harness.h"
#include "trainer/common/fs.h"

using namespace qlora;
namespace stdfs = std::filesystem;

namespace {

stdfs::path* g_fix = nullptr;

class TrainE2E : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    g_fix = new stdfs::path(test::temp_dir("fixture"));
    test::ProcResult r = test::run_python("train_fixture.py", {g_fix->string()});
    ASSERT_EQ(r.code, 0) << r.output;
  }
  static void TearDownTestSuite() { delete g_fix; }

  // A config for the fixture; `extra` lines are appended (later keys are not allowed to repeat,
  // so tests pass overrides with --set instead).
  stdfs::path write_config(const stdfs::path& dir, const std::string& extra = "") {
    const stdfs::path f = *g_fix;
    std::ofstream o(dir / "cfg.yaml");
    o << "base_model: " << (f / "model").string() << "\n"
      << "adapter: qlora\nlora_r: 8\nlora_alpha: 16\nlora_dropout: 0.1\nlora_target_linear: true\n"
      << "sequence_len: 256\nmicro_batch_size: 2\ngradient_accumulation_steps: 2\nmax_steps: 8\n"
      << "learning_rate: 0.002\nlr_scheduler: cosine\nwarmup_steps: 2\n"
      << "datasets:\n  - path: " << (f / "train.jsonl").string() << "\n    type: alpaca\n"
      << "test_datasets:\n  - path: " << (f / "eval.jsonl").string() << "\n    type: alpaca\n"
      << "eval_steps: 3\noutput_dir: " << (dir / "run").string() << "\n"
      << extra;
    return dir / "cfg.yaml";
  }

  static test::ProcResult train(const stdfs::path& cfg, const std::string& args = "") {
    return test::run(test::quote(test::qlora_exe().string()) + " train " + test::quote(cfg.string()) + " " + args);
  }

  // (step -> (loss, grad_norm)) from metrics.jsonl
  static std::map<int64_t, std::pair<double, double>> losses(const stdfs::path& run) {
    std::map<int64_t, std::pair<double, double>> m;
    std::ifstream in(run / "metrics.jsonl");
    std::string line;
    while (std::getline(in, line)) {
      auto j = nlohmann::json::parse(line);
      if (j.contains("loss") && !j["loss"].is_null())
        m[j["step"].get<int64_t>()] = {j["loss"].get<double>(), j["grad_norm"].get<double>()};
    }
    return m;
  }
};

}  // namespace

TEST_F(TrainE2E, ResumeGivesBitIdenticalLosses) {
  for (const std::string opt : {"paged_adamw", "paged_adamw_8bit"}) {
    SCOPED_TRACE(opt);
    auto a = test::temp_dir("straight");
    auto b = test::temp_dir("resumed");
    // A tiny device budget: state streams through pages even on the CPU's two tiers.
    const std::string extra = "optimizer: " + opt + "\noptimizer_device_budget: 4KB\nsave_steps: 3\n";
    test::ProcResult ra = train(write_config(a, extra));
    ASSERT_EQ(ra.code, 0) << ra.output;
    test::ProcResult rb1 = train(write_config(b, extra), "--test-stop-after-step 4");
    ASSERT_EQ(rb1.code, 0) << rb1.output;
    EXPECT_NE(rb1.output.find("--resume"), std::string::npos) << rb1.output;
    EXPECT_EQ(losses(b / "run").size(), 4u);
    test::ProcResult rb2 = train(b / "cfg.yaml", "--resume");
    ASSERT_EQ(rb2.code, 0) << rb2.output;
    EXPECT_NE(rb2.output.find("resumed from"), std::string::npos) << rb2.output;
    auto la = losses(a / "run"), lb = losses(b / "run");
    ASSERT_EQ(la.size(), 8u);
    ASSERT_EQ(lb.size(), 8u);
    for (auto& [step, v] : la) {
      EXPECT_EQ(v.first, lb[step].first) << "loss at step " << step;
      EXPECT_EQ(v.second, lb[step].second) << "grad norm at step " << step;
    }
    // The final adapters are identical too.
    EXPECT_EQ(fs::read_file(a / "run/checkpoints/checkpoint-000008/adapter_model.safetensors"),
              fs::read_file(b / "run/checkpoints/checkpoint-000008/adapter_model.safetensors"));
  }
}

TEST_F(TrainE2E, CorruptNewestCheckpointFallsBackToPreviousGood) {
  auto d = test::temp_dir();
  auto cfg = write_config(d, "save_steps: 2\n");
  ASSERT_EQ(train(cfg, "--test-stop-after-step 6").code, 0);
  {
    std::fstream f(d / "run/checkpoints/checkpoint-000006/adapter_model.safetensors",
                   std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(100);
    f.put('\x7f');
  }
  test::ProcResult r = train(cfg, "--resume");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("checkpoint-000006: checksum mismatch"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("resumed from " + (d / "run/checkpoints/checkpoint-000004").string()), std::string::npos)
      << r.output;
}

TEST_F(TrainE2E, ResumeWithChangedConfigNamesTheChangeAndRefuses) {
  auto d = test::temp_dir();
  auto cfg = write_config(d, "save_steps: 2\n");
  ASSERT_EQ(train(cfg, "--test-stop-after-step 2").code, 0);
  test::ProcResult r = train(cfg, "--resume --set learning_rate=0.01");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("learning_rate (0.002 -> 0.01)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("--allow-config-change"), std::string::npos) << r.output;
  test::ProcResult ok = train(cfg, "--resume --set learning_rate=0.01 --allow-config-change");
  EXPECT_EQ(ok.code, 0) << ok.output;
  // A fresh run into a run directory with checkpoints is refused (nothing is overwritten).
  test::ProcResult again = train(cfg);
  EXPECT_EQ(again.code, 2) << again.output;
  EXPECT_NE(again.output.find("already holds checkpoints"), std::string::npos) << again.output;
}

TEST_F(TrainE2E, NonFiniteStepsAreSkippedCountedAndStopTheRun) {
  auto d = test::temp_dir();
  auto cfg = write_config(d, "max_nonfinite_steps: 3\n");
  test::ProcResult r = train(cfg, "--test-nonfinite-steps 3,4");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("step 3: non-finite"), std::string::npos) << r.output;
  std::ifstream in(d / "run/metrics.jsonl");
  std::string line, last;
  while (std::getline(in, line))
    if (line.find("\"loss\"") != std::string::npos) last = line;
  EXPECT_EQ(nlohmann::json::parse(last)["skipped_steps"].get<int64_t>(), 2);
  // Three in a row with max_nonfinite_steps 3: the run stops with an error.
  auto d2 = test::temp_dir("diverge");
  test::ProcResult bad = train(write_config(d2, "max_nonfinite_steps: 3\n"), "--test-nonfinite-steps 2,3,4");
  EXPECT_EQ(bad.code, 1) << bad.output;
  EXPECT_NE(bad.output.find("diverged"), std::string::npos) << bad.output;
}

TEST_F(TrainE2E, LossIsNormalizedByTargetTokensOfTheWholeAccumulatedBatch) {
  // One optimizer step over the same 4 rows: 4 micro-batches of 1, or 1 micro-batch of 4.
  auto a = test::temp_dir("accum");
  auto b = test::temp_dir("batch");
  const std::string common = "--set lora_dropout=0 --set max_steps=1 --set eval_steps=0 ";
  test::ProcResult ra = train(write_config(a), common + "--set micro_batch_size=1 --set gradient_accumulation_steps=4");
  ASSERT_EQ(ra.code, 0) << ra.output;
  test::ProcResult rb = train(write_config(b), common + "--set micro_batch_size=4 --set gradient_accumulation_steps=1");
  ASSERT_EQ(rb.code, 0) << rb.output;
  auto la = losses(a / "run"), lb = losses(b / "run");
  ASSERT_EQ(la.size(), 1u);
  ASSERT_EQ(lb.size(), 1u);
  EXPECT_NEAR(la[1].first, lb[1].first, 1e-5 * std::abs(lb[1].first));
  EXPECT_NEAR(la[1].second, lb[1].second, 1e-4 * std::abs(lb[1].second));
}

TEST_F(TrainE2E, BadConfigIsOneLineExit2) {
  auto d = test::temp_dir();
  auto cfg = write_config(d, "lora_rank: 4\n");
  test::ProcResult r = train(cfg);
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("unknown key \"lora_rank\" (did you mean \"lora_r\"?)"), std::string::npos) << r.output;
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
  EXPECT_FALSE(stdfs::exists(d / "run"));
}

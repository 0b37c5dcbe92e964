// metrics.jsonl: one JSON object per line; resume keeps the lines up to the checkpoint's step.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <fstream>

#include "tests/common/harness.h"
#include "trainer/common/fs.h"
#include "trainer/run/metrics.h"

using namespace qlora;
namespace stdfs = std::filesystem;

TEST(Metrics, JsonlOneObjectPerLine) {
  auto d = test::temp_dir();
  {
    run::MetricsLog log(d / "metrics.jsonl", false);
    run::StepMetrics s;
    s.step = 1;
    s.loss = 2.5;
    s.lr = 1e-4;
    log.log_step(s);
    run::EvalMetrics e;
    e.step = 1;
    e.loss = 2.0;
    e.perplexity = 7.389;
    e.accuracy = 0.5;
    log.log_eval(e);
    log.log_event("resume", R"({"from": "checkpoint-000001"})");
  }
  std::ifstream in(d / "metrics.jsonl");
  std::string line;
  std::vector<nlohmann::json> rows;
  while (std::getline(in, line)) rows.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[0]["loss"].get<double>(), 2.5);
  EXPECT_EQ(rows[1]["eval_accuracy"].get<double>(), 0.5);
  EXPECT_EQ(rows[2]["event"], "resume");
}

TEST(Metrics, TruncateKeepsLinesUpToTheStep) {
  auto d = test::temp_dir();
  const auto path = d / "metrics.jsonl";
  fs::write_file_atomic(path,
                        "{\"step\":1,\"loss\":2.5}\n{\"step\":2,\"eval_loss\":2.0}\n"
                        "{\"step\":3,\"loss\":2.0}\n{\"step\":2,\"event\":\"resume\"}\n{\"step\":4,\"lo");
  run::MetricsHistory h = run::truncate_metrics(path, 2);
  ASSERT_EQ(h.steps.size(), 1u);
  EXPECT_EQ(h.steps[0].loss, 2.5);
  ASSERT_EQ(h.evals.size(), 1u);
  EXPECT_EQ(h.evals[0].step, 2);
  EXPECT_EQ(fs::read_file(path),
            "{\"step\":1,\"loss\":2.5}\n{\"step\":2,\"eval_loss\":2.0}\n"
            "{\"step\":2,\"event\":\"resume\"}\n");
  EXPECT_TRUE(run::truncate_metrics(d / "none.jsonl", 2).steps.empty());
  EXPECT_FALSE(stdfs::exists(d / "none.jsonl"));
}

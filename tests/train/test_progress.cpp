// Metrics log lines are JSON; the loss plot is a well-formed SVG with the data in it.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <fstream>

#include "tests/common/harness.h"
#include "trainer/common/fs.h"
#include "trainer/train/progress.h"

using namespace qlora;

TEST(Progress, MetricsJsonlOneObjectPerLine) {
  auto d = test::temp_dir();
  {
    train::MetricsLog log(d / "metrics.jsonl", false);
    train::StepMetrics s;
    s.step = 1;
    s.loss = 2.5;
    s.lr = 1e-4;
    log.log_step(s);
    train::EvalMetrics e;
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

TEST(Progress, LossCurveSvgHasOnePointPerFiniteStep) {
  std::vector<train::StepMetrics> steps;
  for (int i = 1; i <= 10; ++i) {
    train::StepMetrics s;
    s.step = i;
    s.loss = 3.0 / i;
    steps.push_back(s);
  }
  steps[4].loss = NAN;  // skipped step: not drawn
  std::vector<train::EvalMetrics> evals(2);
  evals[0].step = 5;
  evals[0].loss = 1.0;
  evals[1].step = 10;
  evals[1].loss = 0.5;
  std::string svg = train::loss_curve_svg(steps, evals, "demo <run>");
  EXPECT_EQ(svg.rfind("<svg", 0), 0u);
  EXPECT_NE(svg.find("</svg>"), std::string::npos);
  EXPECT_NE(svg.find("demo &lt;run>"), std::string::npos);
  auto a = svg.find("points=\"");
  auto b = svg.find('"', a + 8);
  std::string pts = svg.substr(a + 8, b - a - 8);
  EXPECT_EQ(std::count(pts.begin(), pts.end(), ','), 9);
  size_t circles = 0;
  for (size_t p = svg.find("<circle"); p != std::string::npos; p = svg.find("<circle", p + 1)) ++circles;
  EXPECT_EQ(circles, 3u);  // two evals + the legend marker
}

TEST(Progress, FormatDuration) {
  EXPECT_EQ(train::format_duration(83), "01:23");
  EXPECT_EQ(train::format_duration(3723), "1:02:03");
  EXPECT_EQ(train::format_duration(NAN), "--:--");
}

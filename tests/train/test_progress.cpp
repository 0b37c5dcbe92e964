// The loss plot is a well-formed SVG with the data in it; durations print as the bar shows them.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "trainer/train/progress.h"

using namespace qlora;

TEST(Progress, LossCurveSvgHasOnePointPerFiniteStep) {
  std::vector<run::StepMetrics> steps;
  for (int i = 1; i <= 10; ++i) {
    run::StepMetrics s;
    s.step = i;
    s.loss = 3.0 / i;
    steps.push_back(s);
  }
  steps[4].loss = NAN;  // skipped step: not drawn
  std::vector<run::EvalMetrics> evals(2);
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

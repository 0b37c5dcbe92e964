// LR schedules against transformers (get_scheduler + LambdaLR), warmup ratio against
// TrainingArguments.get_warmup_steps. Same double formulas, same libm: we require exact equality.
#include <gtest/gtest.h>

#include <sstream>

#include "tests/common/harness.h"
#include "trainer/optim/schedule.h"

using namespace qlora;

TEST(Schedule, MatchesTransformers) {
  test::ProcResult r = test::run_python("lr_schedules.py");
  ASSERT_EQ(r.code, 0) << r.output;
  std::istringstream lines(r.output);
  std::string line;
  int cases = 0, ratios = 0;
  while (std::getline(lines, line)) {
    std::istringstream ss(line);
    std::string kind;
    ss >> kind;
    if (kind == "ratio") {
      double ratio;
      int64_t total, expected;
      ss >> ratio >> total >> expected;
      EXPECT_EQ(optim::resolve_warmup_steps(0, ratio, total), expected) << line;
      ++ratios;
      continue;
    }
    if (kind != "cosine" && kind != "linear" && kind != "constant") continue;
    std::string lr_text;
    optim::LRSchedule s;
    ss >> lr_text >> s.warmup_steps >> s.total_steps;
    s.learning_rate = std::stod(lr_text);
    s.kind = optim::schedule_kind(kind);
    for (int64_t k = 0; k <= s.total_steps; ++k) {
      std::string v;
      ss >> v;
      ASSERT_FALSE(v.empty()) << line;
      const double expected = std::stod(v);  // repr() is exact: round-trips to the same double
      EXPECT_EQ(s.lr_at(k), expected) << kind << " warmup " << s.warmup_steps << " total " << s.total_steps << " step "
                                      << k;
    }
    ++cases;
  }
  EXPECT_EQ(cases, 8) << r.output;
  EXPECT_EQ(ratios, 5) << r.output;
}

TEST(Schedule, WarmupStepsWithoutRatio) {
  EXPECT_EQ(optim::resolve_warmup_steps(7, std::nullopt, 100), 7);
  optim::LRSchedule s{optim::ScheduleKind::Linear, 1.0, 2, 4};
  EXPECT_EQ(s.lr_at(0), 0.0);  // like HF: the first warmup step has lr 0
  EXPECT_EQ(s.lr_at(1), 0.5);
  EXPECT_EQ(s.lr_at(2), 1.0);
  EXPECT_EQ(s.lr_at(4), 0.0);
  EXPECT_EQ(s.lr_at(9), 0.0);  // past the end: clamped at 0
}

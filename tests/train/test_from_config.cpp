// The optimizer and schedule arguments built from the config's optimizer keys.
#include <gtest/gtest.h>

#include "trainer/config/config.h"
#include "trainer/train/from_config.h"

using namespace qlora;

TEST(FromConfig, ScheduleAndOptimizerOptions) {
  config::OptimizerConfig c;
  c.lr_scheduler = "linear";
  c.learning_rate = 1e-3;
  c.warmup_ratio = 0.1;
  optim::LRSchedule s = train::lr_schedule(c, 95);
  EXPECT_EQ(s.kind, optim::ScheduleKind::Linear);
  EXPECT_EQ(s.warmup_steps, 10);  // ceil(9.5)
  EXPECT_EQ(s.total_steps, 95);
  EXPECT_EQ(s.learning_rate, 1e-3);
  c.optimizer = "adamw_8bit";
  c.paged = true;
  c.device_budget = "2GiB";
  c.weight_decay = 0.01;
  optim::AdamWOptions o = train::adamw_options(c);
  EXPECT_TRUE(o.state_8bit);
  EXPECT_TRUE(o.paging.enabled);
  EXPECT_EQ(o.paging.device_budget, int64_t{2} << 30);
  EXPECT_EQ(o.weight_decay, 0.01);
  c.device_budget = "auto";
  EXPECT_FALSE(train::adamw_options(c).paging.device_budget);
}

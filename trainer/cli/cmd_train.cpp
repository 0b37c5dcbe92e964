// qlora train CONFIG [--set key=value ...] [--resume [PATH]] [--allow-config-change]
#include "trainer/cli/commands.h"
#include "trainer/config/load.h"
#include "trainer/train/trainer.h"

namespace qlora::cli {

int run_train(const TrainArgs& a) {
  config::TrainConfig cfg = config::load_config(a.config, a.set);
  train::TrainOptions o;
  o.resume = a.resume;
  o.resume_path = a.resume_path;
  o.allow_config_change = a.allow_config_change;
  o.faults.nonfinite_steps = a.test_nonfinite_steps;
  o.faults.stop_after_step = a.test_stop_after_step;
  return train::run_training(cfg, o);
}

}  // namespace qlora::cli

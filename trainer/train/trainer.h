// The training run behind `qlora train CONFIG [--set k=v] [--resume [PATH]]`:
// tokenizer -> datasets -> model (NF4 + LoRA) -> paged AdamW -> loop {micro-batches, loss
// normalized by the target tokens of the whole accumulated batch, clip, step, schedule, log,
// eval, checkpoint} -> final eval, checkpoint, loss plot.
#pragma once
#include <string>

#include "trainer/config/config.h"

namespace qlora::train {

struct TrainOptions {
  bool resume = false;
  std::string resume_path;           // a checkpoint or a run directory; empty: the config's run
  bool allow_config_change = false;  // resume even if model/data/optimization keys changed
  bool force_plain_progress = false; // plain lines even on a terminal
};

// Returns the process exit code (0 also when stopped by SIGINT/SIGTERM after checkpointing).
int run_training(const config::TrainConfig& cfg, const TrainOptions& opt);

}  // namespace qlora::train

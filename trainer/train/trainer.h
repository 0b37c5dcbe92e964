// The training run behind `qlora train CONFIG [--set k=v] [--resume [PATH]]`, in four parts:
// setup (every check first: output directory, resume checkpoint and its config, the model's
// config.json against the config and the memory bound (preflight.h), tokenizer, chat template,
// datasets; then the model (NF4 + LoRA), paged AdamW, schedule, and on resume the checkpoint's
// state, run/checkpoint_state.h), and only then the run directory and its config.yaml; the loop
// {micro-batches, loss normalized by the target tokens of the whole accumulated batch, clip, step,
// schedule, log, eval, checkpoint}, and finish (final eval, checkpoint, loss plot).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "trainer/config/config.h"
#include "trainer/dist/dist.h"

namespace qlora::train {

// Faults the tests inject (hidden flags of `qlora train`); empty in normal runs.
struct FaultInjection {
  std::vector<int64_t> nonfinite_steps;  // the gradients of these steps (1-based) are made NaN
  int64_t stop_after_step = 0;           // > 0: acts like a stop signal after this step
  uint64_t memory_budget = 0;            // > 0: the memory check's budget instead of the machine's
};

struct TrainOptions {
  bool resume = false;
  std::string resume_path;            // a checkpoint or a run directory; empty: the config's run
  bool allow_config_change = false;   // resume even if model/data/optimization keys changed
  bool force_plain_progress = false;  // plain lines even on a terminal
  FaultInjection faults;
  // A data-parallel worker's place in the job (torchrun's environment); nullopt: one process.
  // See docs/distributed.md: rank 0 writes everything, every rank trains its slice of each
  // global batch of micro_batch_size x gradient_accumulation_steps x world size.
  std::optional<dist::World> world;
  // How this worker was launched, for the "resume with:" line: qlora's launcher options
  // ("--nproc-per-node 2"), or torchrun (world set, no launcher options).
  std::string launch_options;
};

// Returns the process exit code (0 also when stopped by SIGINT/SIGTERM after checkpointing; 1
// after an allocation failure, reported in one line).
int run_training(const config::TrainConfig& cfg, const TrainOptions& opt);

}  // namespace qlora::train

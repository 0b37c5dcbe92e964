// What a training checkpoint holds and how it is written and read back (file names:
// run/layout.h): the LoRA adapter as PEFT files (the fp32 masters), the optimizer state, the
// dropout and CPU generator states, the step counters and the data loader's position, and the
// config. Restoring all of it and continuing gives bit-identical steps to a run that never
// stopped (tests/train).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <vector>

namespace qlora::config {
struct TrainConfig;
}
namespace qlora::data {
class DataLoader;
}
namespace qlora::model {
class Model;
}
namespace qlora::optim {
class AdamW;
}

namespace qlora::run {

// The trainer's own counters (trainer_state.json, beside the loader position).
struct TrainerState {
  int64_t global_step = 0;            // optimizer steps done, skipped ones included
  int64_t skipped_steps = 0;          // non-finite steps skipped so far
  int64_t consecutive_nonfinite = 0;  // non-finite steps in a row just before global_step
  double elapsed_s = 0;               // training loop time, summed over resumes
};

// Writes checkpoint-<global_step> under `checkpoints_dir` out of place and publishes it
// (run/checkpoint.h), keeping cfg.save_total_limit checkpoints. Returns its final path.
std::filesystem::path save_checkpoint(const std::filesystem::path& checkpoints_dir, const config::TrainConfig& cfg,
                                      const model::Model& m, const optim::AdamW& opt, const data::DataLoader& loader,
                                      const TrainerState& ts);

// Restores the optimizer (and copies its masters into `params`, the tensors it was built from,
// in its order), the model's dropout generator, the default CPU generator and the loader
// position from the checkpoint `ckpt`; returns the counters.
TrainerState restore_checkpoint(const std::filesystem::path& ckpt, model::Model& m, optim::AdamW& opt,
                                const std::vector<at::Tensor>& params, data::DataLoader& loader);

// The config a checkpoint was saved with (its config.yaml).
config::TrainConfig read_checkpoint_config(const std::filesystem::path& ckpt);

}  // namespace qlora::run

// What a training checkpoint holds and how it is written and read back (file names:
// run/layout.h): the LoRA adapter as PEFT files (the fp32 masters), the optimizer state, the
// dropout and CPU generator states, the step counters and the data loader's position, and the
// config. Restoring all of it and continuing gives bit-identical steps to a run that never
// stopped (tests/train).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
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
  // Data-parallel processes that trained the steps since the last resume: every optimizer step
  // drew gradient_accumulation_steps x world_size micro-batches (written when > 1).
  int64_t world_size = 1;
};

// Writes checkpoint-<global_step> under `checkpoints_dir` out of place and publishes it
// (run/checkpoint.h), keeping cfg.save_total_limit checkpoints. Returns its final path.
std::filesystem::path save_checkpoint(const std::filesystem::path& checkpoints_dir, const config::TrainConfig& cfg,
                                      const model::Model& m, const optim::AdamW& opt, const data::DataLoader& loader,
                                      const TrainerState& ts);

// Why an intact checkpoint (its files match manifest.json) still cannot be used, as one line
// "FILE: what is wrong" naming the file inside `ckpt`, or nullopt. Checks what needs no model:
// every JSON file parses with the fields and types it must have; counters are in range and agree
// with each other (trainer_state.json's step with the manifest's, the optimizer's step, and the
// data loader's epoch and position); optimizer tensors have exactly the names, dtypes and shapes
// optimizer.json and the optimizer kind of config.yaml call for; the adapter holds exactly the
// optimizer's parameters (rank and target modules as adapter_config.json says, float32, equal to
// the optimizer's masters); RNG states have the generator's size; float values are finite.
std::optional<std::string> check_checkpoint_contents(const std::filesystem::path& ckpt);

// verify_checkpoint (manifest, sizes, checksums) and then check_checkpoint_contents.
std::optional<std::string> check_checkpoint(const std::filesystem::path& ckpt);

// Restores the optimizer (and copies its masters into `params`, the tensors it was built from,
// in its order), the model's dropout generator, the default CPU generator and the loader
// position from the checkpoint `ckpt`; returns the counters. Everything is checked before any
// state changes: check_checkpoint_contents, then the optimizer state against the model's LoRA
// parameters and the loader position against the data; UserError naming the checkpoint file.
TrainerState restore_checkpoint(const std::filesystem::path& ckpt, model::Model& m, optim::AdamW& opt,
                                const std::vector<at::Tensor>& params, data::DataLoader& loader);

// The counters of a checkpoint (its trainer_state.json, checked as check_checkpoint_contents
// does); UserError naming the file.
TrainerState read_trainer_state(const std::filesystem::path& ckpt);

// The config a checkpoint was saved with (its config.yaml).
config::TrainConfig read_checkpoint_config(const std::filesystem::path& ckpt);

}  // namespace qlora::run

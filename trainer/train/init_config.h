// `qlora init`: a commented training config for a model directory, and optionally a dataset,
// with the QLoRA paper's settings, the model family's linear layers as LoRA targets, a
// sequence length from the data's token lengths and a micro-batch that fits this machine.
#pragma once
#include <c10/core/Device.h>

#include <cstdint>
#include <string>

#include "trainer/config/config.h"
#include "trainer/model/model_config.h"

namespace qlora::train {

// The largest micro_batch_size of 1, 2, 4, 8, 16 whose planned peak memory (trainer/train/plan.h,
// every row sequence_len tokens long) fits the memory
// available on `device` (free device memory on CUDA, host_memory_available() on the CPU):
// without gradient checkpointing when any fits so, else with it. `fits` is false when not even
// 1 with checkpointing fits (the choice is then 1 with checkpointing); `available` is 0 when it
// cannot be read (the choice is then 1 without checkpointing).
struct MicroBatchChoice {
  int64_t micro_batch_size = 1;
  bool gradient_checkpointing = false;
  bool fits = true;
  uint64_t estimate = 0;   // bytes, for the choice
  uint64_t available = 0;  // bytes
  std::string source;      // where `available` was read ("MemAvailable", "free on cuda:0", ...)
};
MicroBatchChoice choose_micro_batch(const config::TrainConfig& cfg, const model::ModelConfig& mc, at::Device device);

struct InitOptions {
  std::string model;  // base_model as written into the config
  std::string data;   // dataset file, "" for a placeholder the user must edit
};

// The config's YAML text. UserError naming the model directory, the data file (and line) or
// what is missing: a model qlora cannot read, a dataset whose records fit no format.
std::string init_config_text(const InitOptions& o);

}  // namespace qlora::train

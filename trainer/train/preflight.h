// Checks of a training config against the base model's config.json, before anything is loaded
// or written: values far outside sense, and whether the run fits in memory.
#pragma once
#include <c10/core/Device.h>

#include <cstdint>
#include <functional>
#include <string>

#include "trainer/common/error.h"
#include "trainer/config/config.h"
#include "trainer/config/load.h"
#include "trainer/data/dataset.h"
#include "trainer/model/model_config.h"
#include "trainer/train/plan.h"

namespace qlora::train {

// UserError "CONFIG:LINE: KEY: ..." for lora_r above the smallest dimension of the layers it
// adapts, sequence_len beyond 32-bit positions or far beyond max_position_embeddings (more than
// 8 times; above it, a warning), batch shapes whose element counts overflow, and
// overrides_of_model_config router keys on a model without routers.
void check_shapes(const config::TrainConfig& cfg, const model::ModelConfig& mc);

// The checks above plus the LoRA targets and lora_modules_to_save resolved against the model:
// everything about the config that config.json can refute. Errors name the config's line.
void check_config_against_model(const config::TrainConfig& cfg, const model::ModelConfig& mc);

// The memory a run takes, in three numbers (trainer/train/plan.h has the parts), every row
// sequence_len tokens long and every token a target.
struct MemoryEstimate {
  // the base and 16-bit weights; LoRA with gradients and optimizer state; saved activations; the
  // step's working set (the loss chunk or a block's backward); the data and runtime allowance
  uint64_t weights = 0, lora = 0, activations = 0, working = 0, transient = 0;
  uint64_t peak = 0;  // the plan's peak: the larger of loading and training
  uint64_t total() const { return peak; }
  std::string describe() const;  // "about X (weights A, LoRA+optimizer B, activations C)"
};
MemoryEstimate estimate_memory(const config::TrainConfig& cfg, const model::ModelConfig& mc, at::Device device);

// Refuses (UserError naming the config key whose change fits, with the changes that fit) a run
// whose planned peak (trainer/train/plan.h, for the data's actual batches) exceeds the memory
// available: free device memory on CUDA; on the CPU, MemAvailable or the room under the cgroup
// limit, shared by the `processes` data-parallel workers on this machine. memory_check: false
// turns the refusal into a warning. Says nothing when the available memory cannot be read.
// `budget` > 0 replaces the memory available (tests). Returns the planned peak.
uint64_t check_memory(const config::TrainConfig& cfg, const model::ModelConfig& mc, at::Device device,
                      const DataShape& data, int processes = 1, uint64_t budget = 0);

// The run's datasets as `qlora train` prepares them: from the dataset_prepared_path cache when
// the config sets one (the tokenizer at tok_path digested for its key), else built. `log` gets the
// data lines. Errors name the config's lines.
data::Datasets prepare_run_data(const config::TrainConfig& cfg, const tok::Tokenizer& tk, const std::string& tok_path,
                                const std::function<void(const std::string&)>& log);

// Runs `f`; a UserError from a deeper layer that names a config key ("sequence_len: ...")
// gets the config file and line of that key in front.
template <class F>
auto located(const config::TrainConfig& cfg, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const UserError& e) {
    const std::string m = config::locate_message(cfg, e.what());
    if (m == e.what()) throw;
    throw UserError(m);
  }
}

}  // namespace qlora::train

// `qlora plan`: what a training run will take, before anything is loaded. Peak memory, broken
// down by what holds it, from config.json's shapes, the config and the data's token lengths;
// step time from a short calibration of our own kernels on the device; and, when the run does not
// fit a memory budget, the smallest changes that make it fit. `qlora train` runs the same
// prediction first (trainer/train/preflight.h) and refuses a run that cannot fit.
//
// The memory model counts the tensors the code keeps, per token and layer, in the compute dtype
// (docs/plan.md lists every term):
//   load       the frozen base (NF4 codes + absmax + double-quant statistics, or 16-bit), the
//              embeddings, norms and lm_head in the compute dtype, and while loading one weight
//              in fp32 twice (the copy being quantized)
//   training   the base, the LoRA tensors with their gradients, the optimizer's fp32 masters and
//              moments (8-bit: one byte each plus absmax), on a GPU split into the paging budget
//              and the host pool; the activations saved for backward (with gradient
//              checkpointing only each block's input, plus one block recomputed); the backward's
//              working set (one block's gradients); the chunked loss (one chunk of fp32 logits,
//              softmax and gradient) and the gradient of the final hidden states; the tokenized
//              data; a fixed allocator and runtime allowance
// The peak is the larger of the two phases.
#pragma once
#include <c10/core/Device.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "trainer/config/config.h"
#include "trainer/model/model_config.h"

namespace qlora::data {
struct PackedData;
}

namespace qlora::train {

// What the data contributes: the largest micro-batch the loader can form and what stays in
// memory. Without data (known = false) every row is sequence_len tokens, every token a target.
struct DataShape {
  bool known = false;
  int64_t batch_tokens = 0;   // real tokens of the fullest micro-batch (its B longest rows)
  int64_t batch_padded = 0;   // B x the longest row (what attention sees with padding)
  int64_t batch_targets = 0;  // supervised tokens of the most supervised micro-batch
  int64_t batch_rows = 0;     // rows of that micro-batch (micro_batch_size, or fewer rows in all)
  int64_t avg_batch_tokens = 0, avg_batch_targets = 0;  // of an average micro-batch (step time)
  int64_t longest_row = 0;                              // tokens of the longest row
  int64_t resident_tokens = 0;  // tokens of train + validation held in memory for the run (0 when streamed)
  int64_t rows = 0;             // training rows
};

// The shape of the data for micro_batch_size rows per batch (train rows; validation adds to
// resident_tokens only).
DataShape data_shape(const data::PackedData& train, const data::PackedData* val, int64_t micro_batch_size,
                     bool pad_to_sequence_len);

// The same, assumed: micro_batch_size full rows of sequence_len tokens.
DataShape full_rows(const config::TrainConfig& cfg);

// Row shards of a micro-batch on the CPU (trainer/train/step.h): one per OpenMP thread, at most
// one per row; 1 on a GPU and for a mixture of experts with its router loss.
int64_t row_shards(const config::TrainConfig& cfg, const model::ModelConfig& mc, at::Device device,
                   const DataShape& data);

struct MemoryPart {
  std::string name;  // "NF4 base weights", "activations", ...
  uint64_t bytes = 0;
  std::string note;  // how it was counted, one short phrase
};

struct MemoryPlan {
  at::Device device{at::kCPU};
  std::vector<MemoryPart> parts;       // the training phase on the device (on the CPU: host memory)
  uint64_t load_peak = 0;              // the loading phase's peak on the device
  uint64_t train_peak = 0;             // sum of parts
  std::vector<MemoryPart> host_parts;  // CUDA only: host memory (data, paged state, offload)
  uint64_t host_peak = 0;              // CUDA only
  uint64_t peak() const { return load_peak > train_peak ? load_peak : train_peak; }
};

MemoryPlan plan_memory(const config::TrainConfig& cfg, const model::ModelConfig& mc, at::Device device,
                       const DataShape& data);

// Step time from timing our kernels on `device` at the model's shapes (a few hundred tokens,
// random NF4 weights, a second or two) and scaling by the tokens of a full micro-batch.
struct TimePlan {
  double step_seconds = 0;                            // one optimizer step (gradient_accumulation_steps micro-batches)
  double tokens_per_second = 0;                       // real tokens
  std::vector<std::pair<std::string, double>> parts;  // seconds per step, by part
  double calibration_seconds = 0;
};
TimePlan plan_time(const config::TrainConfig& cfg, const model::ModelConfig& mc, at::Device device,
                   const DataShape& data);

// A change to the config that makes the run fit `budget`, with the peak it leads to.
struct Fix {
  std::string change;  // "gradient_checkpointing: true", "micro_batch_size: 2 (gradient_accumulation_steps: 8)"
  uint64_t peak = 0;
};
// The single changes that fit, smallest first (in the order of what they cost the run); if none
// alone fits, combinations of two. Empty when nothing tried fits.
std::vector<Fix> fixes_for(const config::TrainConfig& cfg, const model::ModelConfig& mc, at::Device device,
                           const DataShape& data, uint64_t budget);

// Memory the run may use on `device`: free device memory (CUDA) or host memory available (CPU;
// shared by `processes` workers); source says which. nullopt where it cannot be read.
struct Budget {
  uint64_t bytes = 0;
  std::string source;
};
std::optional<Budget> memory_budget(at::Device device, int processes = 1);

// Text for the terminal and JSON for scripts.
std::string describe_plan(const config::TrainConfig& cfg, const model::ModelConfig& mc, const MemoryPlan& m,
                          const TimePlan* t, const DataShape& data, const std::optional<Budget>& budget,
                          const std::vector<Fix>& fixes);
std::string plan_json(const config::TrainConfig& cfg, const model::ModelConfig& mc, const MemoryPlan& m,
                      const TimePlan* t, const DataShape& data, const std::optional<Budget>& budget,
                      const std::vector<Fix>& fixes);

}  // namespace qlora::train

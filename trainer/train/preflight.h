// Checks of a training config against the base model's config.json, before anything is loaded
// or written: values far outside sense, and whether the run fits in memory.
#pragma once
#include <c10/core/Device.h>

#include <cstdint>
#include <string>

#include "trainer/config/config.h"
#include "trainer/model/model_config.h"

namespace qlora::train {

// UserError "CONFIG:LINE: KEY: ..." for lora_r above the smallest dimension of the layers it
// adapts, sequence_len beyond 32-bit positions or far beyond max_position_embeddings (more than
// 8 times; above it, a warning), batch shapes whose element counts overflow, and
// overrides_of_model_config router keys on a model without routers.
void check_shapes(const config::TrainConfig& cfg, const model::ModelConfig& mc);

// A conservative upper bound on the memory a training run takes, from config.json's shapes and
// the config alone (every micro-batch full, every row sequence_len tokens long):
//   weights      embeddings and norms in the compute dtype, lm_head unless tied; the projections
//                in NF4 (half a byte per weight + 4 bytes of quantization stats per block) or,
//                for adapter: lora, in the compute dtype
//   lora         LoRA A and B, their gradients (compute dtype), the fp32 master copy, AdamW's two
//                moments (fp32) and a gradient copy for clipping (fp32)
//   activations  what backward keeps: per token and layer, the norms, residuals, q/k/v (before
//                and after RoPE), the attention output, gate/up/activation/product of the MLP (of
//                each of the k active experts and the shared expert in a mixture of experts) and
//                each adapted layer's input and r outputs; with gradient_checkpointing only each
//                layer's input (on a GPU none with gradient_checkpointing: offload) plus one
//                layer's full set. Plus, for one layer at a time, on the CPU the attention score
//                matrix (fp32, twice; on a GPU only a mask where a sliding window bites) and the
//                activation gradients of one layer (twice its activations)
//   logits       one chunk of fp32 logits of the chunked cross-entropy (three copies: logits,
//                softmax, gradient) and the gradient of the final hidden states
//   transient    the largest weight in fp32, twice (the copy being quantized while loading)
struct MemoryEstimate {
  uint64_t weights = 0, lora = 0, activations = 0, logits = 0, transient = 0;
  uint64_t total() const { return weights + lora + activations + logits + transient; }
  std::string describe() const;  // "about X (weights A, LoRA+optimizer B, activations C)"
};
MemoryEstimate estimate_memory(const config::TrainConfig& cfg, const model::ModelConfig& mc, at::Device device);

// Refuses (UserError naming the config key that weighs most) a run whose estimate exceeds the
// memory available: free device memory on CUDA; on the CPU, MemAvailable or the room under the
// cgroup limit. memory_check: false turns the refusal into a warning. Prints nothing when the
// available memory cannot be read. `processes` (data-parallel workers on this machine) share
// the host memory on the CPU: the bound is counted once per process there.
void check_memory(const config::TrainConfig& cfg, const model::ModelConfig& mc, at::Device device, int processes = 1);

}  // namespace qlora::train

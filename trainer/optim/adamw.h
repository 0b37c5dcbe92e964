// AdamW over fp32 master weights, with fp32 or 8-bit blockwise state, optionally paged.
//
//   std::vector<optim::NamedParam> params = {{"model.layers.0.self_attn.q_proj.lora_A.weight", a}, ...};
//   optim::AdamWOptions o;  o.weight_decay = 0.01;  o.state_8bit = true;  o.paging.enabled = true;
//   optim::AdamW opt(params, o, device);           // copies each value into an fp32 master
//   ... forward/backward on the model's compute copies (bf16 on GPU) ...
//   opt.step(schedule.lr_at(opt.step_count()), grads, compute_copies);
//
// step() updates the masters and writes each updated master, rounded once, into the model's
// compute copy, so the model never holds weights of its own to keep in sync.
//
// Numerics (kernels/adamw_math.h): PyTorch's AdamW (torch.optim.AdamW, decoupled weight decay
// applied before the update, bias correction, eps added to sqrt(v)/sqrt(1-b2^t)); the fp32 state
// matches torch.optim.AdamW to within 1 ulp per op (torch's sqrt is not correctly rounded). The
// 8-bit state is bitsandbytes' AdamW8bit layout (m with the signed dynamic map, v with the
// unsigned map, float32 absmax per 256 elements, params under min_8bit_size keep fp32 state) with
// the update of bitsandbytes' CPU path, which is PyTorch's formula; bitsandbytes' CUDA kernel
// instead applies weight decay after the update and folds eps as eps*sqrt(1-b2^t), which differs in
// the last bits. Requantization picks the exact nearest map entry (bitsandbytes' CUDA rule;
// its CPU path uses a coarser lookup table and sometimes picks a neighbour).
// A known 8-bit hazard, shared with bitsandbytes' CUDA kernels: v below ~1.6e-7 of its block's
// absmax is stored as 0, and an exact-zero gradient for that element then moves it by lr*m/eps.
// Gradients must be finite: check with optim::all_finite (or the clipped norm) and skip the step.
//
// Paging (trainer/optim/paging.h): the state of all parameters is laid out in fixed-size pages;
// with paging enabled and a budget smaller than the state, some pages stay on the device and the
// rest stream through two device slots from the host pool on every step. For any budget the
// results are bit-identical to the unpaged optimizer: every element is updated by the same
// arithmetic, whichever page or slot it sits in.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "trainer/optim/paging.h"

namespace qlora::optim {

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.0;
  bool state_8bit = false;       // bitsandbytes-style 8-bit blockwise m and v
  int64_t min_8bit_size = 4096;  // parameters with fewer elements keep fp32 state (bitsandbytes)
  PagingOptions paging;
};

// A trainable parameter: its name (the checkpoint key) and initial value (any float dtype/device).
struct NamedParam {
  std::string name;
  at::Tensor value;
  double lr_scale = 1.0;  // this parameter's learning rate is lr * lr_scale (LoRA+: lora_B's ratio)
};

// Optimizer state as the checkpoint stores it: named CPU tensors (for safetensors) and a small
// JSON object of scalars. Keys, for a parameter named N:
//   N.master                              float32, the parameter's shape (the fp32 master weight)
//   N.exp_avg, N.exp_avg_sq               float32 (fp32 state), like torch.optim.AdamW
//   N.state1, N.state2                    uint8 codes, the parameter's shape (8-bit state) and
//   N.absmax1, N.absmax2                  float32 [ceil(numel/256)], like bitsandbytes' AdamW8bit
// JSON: {"format": "qlora.adamw.v1", "step": t, "betas": [b1, b2], "eps", "weight_decay",
//        "state_8bit", "min_8bit_size", "params": [{"name", "shape", "state": "fp32"|"8bit"}]}
struct OptimizerState {
  std::map<std::string, at::Tensor> tensors;
  std::string json;
};

class AdamW {
 public:
  // device: where the update runs (and where grads and compute copies live).
  AdamW(const std::vector<NamedParam>& params, const AdamWOptions& options, at::Device device);
  ~AdamW();
  AdamW(const AdamW&) = delete;
  AdamW& operator=(const AdamW&) = delete;

  // One AdamW step with learning rate lr (the step counter goes up by one first).
  //   grads[i]: parameter i's gradient, float32/bfloat16/float16, contiguous, numel like the
  //             parameter, on the device; an undefined tensor leaves parameter i and its state
  //             untouched (like a parameter without .grad in PyTorch).
  //   compute[i] (optional, empty vector or undefined entries allowed): a contiguous
  //             float32/bfloat16/float16 tensor on the device that receives the updated master.
  // Asynchronous on CUDA (queued on the current stream).
  void step(double lr, const std::vector<at::Tensor>& grads, const std::vector<at::Tensor>& compute = {});

  int64_t step_count() const { return step_; }
  size_t size() const;
  const std::string& name(size_t i) const;
  bool is_8bit(size_t i) const;  // state format of parameter i

  // Parameter i's fp32 master (a CPU copy, the parameter's shape). Synchronizes.
  at::Tensor master(size_t i) const;
  // Writes the master of parameter i, rounded to dst's dtype, into dst (e.g. after a resume).
  void copy_master_to(size_t i, const at::Tensor& dst) const;

  // Checkpoint state (see OptimizerState). Synchronizes.
  OptimizerState state_dict() const;
  // Restores a state_dict(); the paging budget may differ from the one that saved it.
  // UserError naming the key when names, shapes or state formats do not match.
  void load_state_dict(const OptimizerState& state);

  // Paging counters (cumulative); the stall time may synchronize on CUDA.
  PagingStats stats() const;
  // One line for the log: parameters, state format and bytes, placement.
  std::string describe() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int64_t step_ = 0;
};

}  // namespace qlora::optim

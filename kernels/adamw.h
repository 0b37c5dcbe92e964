// AdamW update kernels with an at::Tensor API: fp32 state and 8-bit blockwise state. Each call
// updates one contiguous range of elements in place and picks the CPU or CUDA path from the
// device of `p`. The element math (and why it is bit-reproducible) is in kernels/adamw_math.h;
// the CPU path (kernels/cpu/adamw_cpu.cpp) defines "correct", the CUDA path must match it bit
// for bit. The optimizer that owns the state and pages it is trainer/optim/adamw.h.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>

#include "kernels/adamw_math.h"

namespace qlora::kernels {

// The per-step constants of AdamW (kernels/adamw_math.h), computed like PyTorch does:
// Python-float (double) arithmetic, then one rounding to float32. step counts from 1.
adamw::Hyper adamw_hyper(double lr, double beta1, double beta2, double eps, double weight_decay, int64_t step);

// fp32 state. p, m, v: float32 [n], contiguous, updated in place. g: [n] float32, bfloat16 or
// float16. out: undefined, or [n] float32/bfloat16/float16 that receives the updated p
// (the model's compute copy), one rounding from float32.
void adamw_step_fp32(const adamw::Hyper& h, at::Tensor& p, at::Tensor& m, at::Tensor& v, const at::Tensor& g,
                     const at::Tensor& out);

// 8-bit blockwise state over n elements, where element 0 starts a block (a block is
// adamw::kBlock8bit = 256 elements; the last may be partial):
//   m_codes, v_codes: uint8 [n]; absmax_m, absmax_v: float32 [ceil(n/256)];
//   map_m: the signed dynamic map, map_v: the unsigned one (float32 [256], on p's device).
// p, g, out as for adamw_step_fp32.
void adamw_step_8bit(const adamw::Hyper& h, at::Tensor& p, at::Tensor& m_codes, at::Tensor& v_codes,
                     at::Tensor& absmax_m, at::Tensor& absmax_v, const at::Tensor& g, const at::Tensor& out,
                     const at::Tensor& map_m, const at::Tensor& map_v);

}  // namespace qlora::kernels

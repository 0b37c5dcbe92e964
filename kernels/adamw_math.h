// AdamW element math shared by the CPU twin (kernels/cpu/adamw_cpu.cpp) and the CUDA kernels
// (kernels/cuda/adamw.cu). Host + device, no torch.
//
// One element of one step, in float32, in this exact order (PyTorch's single-tensor AdamW,
// torch/optim/adamw.py, op by op; fmaf where ATen's CPU kernels fuse):
//   p     = p * decay                          decay = 1 - lr*wd   (decoupled, BEFORE the update)
//   m     = fmaf(1-b1, g - m, m)               exp_avg.lerp_(g, 1-b1)
//   v     = fmaf((1-b2)*g, g, v*b2)            exp_avg_sq.mul_(b2).addcmul_(g, g, value=1-b2)
//   denom = sqrtf(v) / sqrt(1-b2^t) + eps      IEEE sqrt (torch's MKL sqrt can differ by 1 ulp)
//   p     = fmaf(-lr/(1-b1^t), m / denom, p)   param.addcdiv_(m, denom, value=-step_size)
// Every other operation is a separately rounded float32 operation: the host compiler runs in ISO
// mode (-std=c++20: no FP contraction) and the CUDA side uses __fmul_rn/__fadd_rn/__fdiv_rn, so
// both devices produce the same bits, and a chunk of a tensor updates exactly like the whole.
//
// 8-bit state (bitsandbytes' blockwise layout): m as codes into the signed dynamic map, v into
// the unsigned one, one float32 absmax per 256 elements for each. A block is dequantized
// (map[code] * absmax), updated as above, then requantized: absmax' = max |x| over the block,
// code = the nearest map entry to x * (1/absmax') (ties to the lower index, scale 0 for an
// all-zero block) - the same rule as kernels::quantize_blockwise_8bit.
#pragma once
#include <cstdint>

#include <cmath>

#if defined(__CUDACC__)
#define QLORA_ADAMW_HD __host__ __device__ __forceinline__
#else
#define QLORA_ADAMW_HD inline __attribute__((always_inline))
#endif

namespace qlora::adamw {

inline constexpr int kBlock8bit = 256;  // elements per absmax block of the 8-bit state

// Step constants, computed once per step on the host in double (as Python computes them) and
// rounded to float32 (as ATen does when a Python float meets a float32 tensor).
struct Hyper {
  float decay;            // 1 - lr * weight_decay
  float one_minus_beta1;  // 1 - beta1
  float beta2;
  float one_minus_beta2;  // 1 - beta2
  float bc2_sqrt;         // sqrt(1 - beta2^step)
  float neg_step_size;    // -lr / (1 - beta1^step)
  float eps;
};

#if defined(__CUDA_ARCH__)  // device code: explicitly rounded intrinsics
QLORA_ADAMW_HD float f_add(float a, float b) { return __fadd_rn(a, b); }
QLORA_ADAMW_HD float f_sub(float a, float b) { return __fsub_rn(a, b); }
QLORA_ADAMW_HD float f_mul(float a, float b) { return __fmul_rn(a, b); }
QLORA_ADAMW_HD float f_div(float a, float b) { return __fdiv_rn(a, b); }
QLORA_ADAMW_HD float f_fma(float a, float b, float c) { return __fmaf_rn(a, b, c); }
QLORA_ADAMW_HD float f_sqrt(float a) { return __fsqrt_rn(a); }
QLORA_ADAMW_HD float f_abs(float a) { return fabsf(a); }
QLORA_ADAMW_HD float f_max(float a, float b) { return fmaxf(a, b); }
QLORA_ADAMW_HD bool f_isnan(float a) { return isnan(a); }
#else  // host code: ISO C++ mode, no contraction; fma only where written
QLORA_ADAMW_HD float f_add(float a, float b) { return a + b; }
QLORA_ADAMW_HD float f_sub(float a, float b) { return a - b; }
QLORA_ADAMW_HD float f_mul(float a, float b) { return a * b; }
QLORA_ADAMW_HD float f_div(float a, float b) { return a / b; }
QLORA_ADAMW_HD float f_fma(float a, float b, float c) { return std::fma(a, b, c); }
QLORA_ADAMW_HD float f_sqrt(float a) { return std::sqrt(a); }
QLORA_ADAMW_HD float f_abs(float a) { return std::fabs(a); }
QLORA_ADAMW_HD float f_max(float a, float b) { return std::fmax(a, b); }
QLORA_ADAMW_HD bool f_isnan(float a) { return std::isnan(a); }
#endif

// Updates one element: p (fp32 master), m, v in place, from the gradient g.
QLORA_ADAMW_HD void update(const Hyper& h, float g, float& p, float& m, float& v) {
  p = f_mul(p, h.decay);
  m = f_fma(h.one_minus_beta1, f_sub(g, m), m);
  v = f_fma(f_mul(h.one_minus_beta2, g), g, f_mul(v, h.beta2));
  const float denom = f_add(f_div(f_sqrt(v), h.bc2_sqrt), h.eps);
  // addcdiv as ATen's vectorized CPU kernel computes it: one fused multiply-add. Written as an
  // explicit fma so the scalar, AVX2 and CUDA paths agree bit for bit whatever the compiler's
  // contraction setting (kernels/ are built with -ffp-contract=off).
  p = f_fma(h.neg_step_size, f_div(m, denom), p);
}

// Index of the map entry nearest to x in a sorted 256-entry map; ties go to the lower index;
// NaN is treated as 0. Same rule as kernels/cpu nearest_code8 (std::lower_bound + compare).
QLORA_ADAMW_HD uint8_t nearest_code8(const float* map, float x) {
  if (f_isnan(x)) x = 0.f;
  // lower_bound: first index with map[i] >= x
  int lo = 0, count = 256;
  while (count > 0) {
    const int half = count / 2;
    if (map[lo + half] < x) {
      lo += half + 1;
      count -= half + 1;
    } else {
      count = half;
    }
  }
  if (lo == 0) return 0;
  if (lo == 256) return 255;
  // Distances in double are exact for these floats, so the nearer entry is found exactly (as
  // kernels/cpu's nearest_code8 does).
  const double xd = x, hi_v = map[lo], lo_v = map[lo - 1];
  return static_cast<uint8_t>((hi_v - xd) < (xd - lo_v) ? lo : lo - 1);
}

// Quantization scale for a block with the given absmax (as kernels::quantize_blockwise_8bit).
QLORA_ADAMW_HD float block_scale(float absmax) { return absmax > 0.f ? f_div(1.0f, absmax) : 0.f; }

}  // namespace qlora::adamw

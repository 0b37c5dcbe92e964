// CUDA launchers for the AdamW kernels (raw pointers; compiled by nvcc without torch headers).
// CPU twin: kernels/cpu/adamw_cpu.cpp; element math: kernels/adamw_math.h.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/adamw_math.h"

namespace qlora::kernels::cuda {

// Element types of the gradient and of the optional compute copy written with the new p.
enum class FloatType { None = -1, F32 = 0, BF16 = 1, F16 = 2 };

// fp32 state: p, m, v float [n] updated in place; g [n] of g_type; out [n] of out_type or null.
cudaError_t adamw_fp32(const adamw::Hyper& h, float* p, float* m, float* v, const void* g, FloatType g_type, void* out,
                       FloatType out_type, int64_t n, cudaStream_t stream);

// 8-bit blockwise state: codes uint8 [n], absmax float [ceil(n/256)], maps float [256] on device.
cudaError_t adamw_8bit(const adamw::Hyper& h, float* p, uint8_t* m_codes, uint8_t* v_codes, float* absmax_m,
                       float* absmax_v, const void* g, FloatType g_type, void* out, FloatType out_type,
                       const float* map_m, const float* map_v, int64_t n, cudaStream_t stream);

}  // namespace qlora::kernels::cuda

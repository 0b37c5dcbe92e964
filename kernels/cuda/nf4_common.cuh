// Device helpers shared by the NF4 CUDA kernels: the code table, block scales, conversions.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/cuda/nf4_cuda.h"
#include "kernels/nf4.h"

namespace qlora::kernels::cuda {

// static: each .cu keeps its own copy (no relocatable device code).
static __constant__ float c_nf4_codes[16] = {QLORA_NF4_CODES};

// Copies the 16 codes into shared memory (call before __syncthreads): indexing a __constant__
// array with per-lane indices serializes; shared memory serves 16 distinct words conflict-free.
__device__ __forceinline__ void load_codes(float* s_codes) {
  if (threadIdx.x < 16) s_codes[threadIdx.x] = c_nf4_codes[threadIdx.x];
}

// Scale of block b: plain absmax, or the double-quantized reconstruction (two roundings, no FMA,
// exactly the CPU twin's nf4::dq_absmax).
__device__ __forceinline__ float block_scale(const Nf4Stats& st, int64_t b) {
  if (st.qabsmax) return nf4::dq_absmax(__ldg(st.map8 + __ldg(st.qabsmax + b)), __ldg(st.nested + (b >> 8)), st.offset);
  return __ldg(st.absmax + b);
}

template <class T>
__device__ __forceinline__ float to_f32(T v);
template <>
__device__ __forceinline__ float to_f32<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ float to_f32<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <>
__device__ __forceinline__ float to_f32<__half>(__half v) {
  return __half2float(v);
}

template <class T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) {
  return __float2half_rn(v);
}

// Two floats packed as one 32-bit word of T pairs (first value at the lower address); for float
// the caller stores the two floats itself.
__device__ __forceinline__ uint32_t pack2(__nv_bfloat16*, float a, float b) {
  __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
  return *reinterpret_cast<uint32_t*>(&h);
}
__device__ __forceinline__ uint32_t pack2(__half*, float a, float b) {
  __half2 h = __floats2half2_rn(a, b);
  return *reinterpret_cast<uint32_t*>(&h);
}

template <class T>
__device__ __forceinline__ float bits16_to_f32(unsigned short b);
template <>
__device__ __forceinline__ float bits16_to_f32<__nv_bfloat16>(unsigned short b) {
  return __bfloat162float(__ushort_as_bfloat16(b));
}
template <>
__device__ __forceinline__ float bits16_to_f32<__half>(unsigned short b) {
  return __half2float(__ushort_as_half(b));
}

// 8 values of T (bf16 / fp16) from one 16-byte word, as floats in memory order.
template <class T>
__device__ __forceinline__ void unpack8(const uint4& q, float* f) {
  const uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    f[2 * i] = bits16_to_f32<T>(static_cast<unsigned short>(w[i] & 0xFFFFu));
    f[2 * i + 1] = bits16_to_f32<T>(static_cast<unsigned short>(w[i] >> 16));
  }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

inline int log2_int(int v) {
  int l = 0;
  while ((1 << l) < v) ++l;
  return l;
}

}  // namespace qlora::kernels::cuda

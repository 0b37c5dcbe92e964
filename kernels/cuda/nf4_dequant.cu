// NF4 dequantize on CUDA: one launch, double-quantized statistics included.
// CPU twin: kernels/cpu/nf4_cpu.cpp nf4_dequantize (the GPU test compares the two).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/cuda/nf4_cuda.h"
#include "kernels/nf4.h"

namespace qlora::kernels::cuda {

namespace {

__constant__ float c_codes[16] = {QLORA_NF4_CODES};

template <class T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }

// Each thread handles one packed byte (two elements).
template <class T>
__global__ void nf4_dequant_kernel(const uint8_t* __restrict__ packed, const float* __restrict__ absmax,
                                   const uint8_t* __restrict__ qabsmax, const float* __restrict__ nested,
                                   const float* __restrict__ map8, float offset, int64_t n, int blocksize,
                                   T* __restrict__ out) {
  const int64_t nbytes = (n + 1) / 2;
  for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < nbytes;
       j += (int64_t)gridDim.x * blockDim.x) {
    const int64_t i = 2 * j;
    const int64_t b = i / blocksize;  // blocksize is even: both elements share a block
    float s;
    if (qabsmax) {
      // two separately rounded operations, like the CPU twin (no FMA)
      s = __fadd_rn(__fmul_rn(map8[qabsmax[b]], nested[b / qlora::nf4::kNestedBlocksize]), offset);
    } else {
      s = absmax[b];
    }
    const uint8_t byte = packed[j];
    out[i] = from_float<T>(__fmul_rn(c_codes[byte >> 4], s));
    if (i + 1 < n) out[i + 1] = from_float<T>(__fmul_rn(c_codes[byte & 0x0F], s));
  }
}

}  // namespace

cudaError_t nf4_dequantize(const uint8_t* packed, const float* absmax, const uint8_t* qabsmax,
                           const float* nested, const float* map8, float offset, int64_t n,
                           int blocksize, void* out, OutType type, cudaStream_t stream) {
  const int64_t nbytes = (n + 1) / 2;
  if (nbytes == 0) return cudaSuccess;
  const int threads = 256;
  int64_t blocks64 = (nbytes + threads - 1) / threads;
  const int blocks = static_cast<int>(blocks64 < 65535 * 32 ? blocks64 : 65535 * 32);
  switch (type) {
    case OutType::F32:
      nf4_dequant_kernel<float><<<blocks, threads, 0, stream>>>(packed, absmax, qabsmax, nested, map8, offset, n,
                                                                 blocksize, static_cast<float*>(out));
      break;
    case OutType::BF16:
      nf4_dequant_kernel<__nv_bfloat16><<<blocks, threads, 0, stream>>>(
          packed, absmax, qabsmax, nested, map8, offset, n, blocksize, static_cast<__nv_bfloat16*>(out));
      break;
    case OutType::F16:
      nf4_dequant_kernel<__half><<<blocks, threads, 0, stream>>>(packed, absmax, qabsmax, nested, map8, offset, n,
                                                                  blocksize, static_cast<__half*>(out));
      break;
  }
  return cudaGetLastError();
}

}  // namespace qlora::kernels::cuda

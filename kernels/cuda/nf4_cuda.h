// CUDA launchers for the NF4 kernels (raw pointers; compiled by nvcc without torch headers).
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace qlora::kernels::cuda {

// Output element types for dequantization.
enum class OutType { F32 = 0, BF16 = 1, F16 = 2 };

// One launch: dequantizes n NF4 elements (packed two per byte) to `out`, reconstructing absmax
// from double-quantized statistics when `qabsmax` is non-null (then `absmax` is ignored).
//   absmax:  float [nblocks]                   (plain statistics)
//   qabsmax: uint8 [nblocks], nested: float [ceil(nblocks/256)], map8: float [256], offset
cudaError_t nf4_dequantize(const uint8_t* packed, const float* absmax, const uint8_t* qabsmax,
                           const float* nested, const float* map8, float offset, int64_t n,
                           int blocksize, void* out, OutType type, cudaStream_t stream);

}  // namespace qlora::kernels::cuda

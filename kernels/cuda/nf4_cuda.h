// CUDA launchers for the NF4 kernels (raw pointers; compiled by nvcc without torch headers).
// Each kernel's CPU twin (kernels/cpu/nf4_cpu.cpp) defines what "correct" means; tests/gpu
// compares the two on fresh random inputs.
//   nf4_dequant.cu  nf4_dequantize   one launch, DQ statistics included, 16-byte loads/stores
//   nf4_gemv.cu     nf4_gemv         y = x W^T for M <= 16, 4-bit weights read directly
//                   nf4_gemv_t       dx = dy W for M <= 16 (split over rows + a reduction)
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

namespace qlora::kernels::cuda {

// Element types of activations / outputs.
enum class OutType { F32 = 0, BF16 = 1, F16 = 2 };

// The per-block scales of an NF4 weight: either plain float absmax [nblocks], or double-quantized
// (qabsmax uint8 [nblocks], nested float [ceil(nblocks/256)], map8 float [256], offset):
//   absmax_b = float(float(map8[qabsmax[b]] * nested[b / 256]) + offset).
struct Nf4Stats {
  const float* absmax = nullptr;
  const uint8_t* qabsmax = nullptr;
  const float* nested = nullptr;
  const float* map8 = nullptr;
  float offset = 0.f;
};

// One launch: dequantizes n NF4 elements (packed two per byte) to `out`, reconstructing absmax
// from double-quantized statistics when `qabsmax` is non-null (then `absmax` is ignored).
//   absmax:  float [nblocks]                   (plain statistics)
//   qabsmax: uint8 [nblocks], nested: float [ceil(nblocks/256)], map8: float [256], offset
// blocksize: power of two in [32, 4096].
cudaError_t nf4_dequantize(const uint8_t* packed, const float* absmax, const uint8_t* qabsmax, const float* nested,
                           const float* map8, float offset, int64_t n, int blocksize, void* out, OutType type,
                           cudaStream_t stream);

// Largest M the fused small-M kernels take.
inline constexpr int kGemvMaxRows = 16;

// Whether nf4_gemv takes this problem: 1 <= M <= 16, K % 32 == 0, packed and x 16-byte aligned.
bool nf4_gemv_supported(int64_t M, int64_t K, const void* packed, const void* x);
// y [M, N] = x [M, K] @ W^T with W [N, K] in NF4 (row-major, flattened blocks); x and y of `type`;
// fp32 accumulation. Each warp decodes one weight row from 16-byte loads.
cudaError_t nf4_gemv(const uint8_t* packed, const Nf4Stats& stats, int blocksize, int64_t N, int64_t K, const void* x,
                     int M, void* y, OutType type, cudaStream_t stream);

// Whether nf4_gemv_t takes this problem: 1 <= M <= 16, K % 8 == 0, packed 4-byte aligned.
bool nf4_gemv_t_supported(int64_t M, int64_t K, const void* packed);
// Row splits nf4_gemv_t uses for [N, K]; the caller provides a float workspace of
// splits * M * K elements.
int nf4_gemv_t_splits(int64_t N, int64_t K);
// dx [M, K] = dy [M, N] @ W; dy and dx of `type`; fp32 accumulation; deterministic (partial sums
// per row split in `workspace`, then one reduction launch).
cudaError_t nf4_gemv_t(const uint8_t* packed, const Nf4Stats& stats, int blocksize, int64_t N, int64_t K,
                       const void* dy, int M, void* dx, OutType type, float* workspace, int splits,
                       cudaStream_t stream);

}  // namespace qlora::kernels::cuda

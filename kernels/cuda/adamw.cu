// AdamW on CUDA: fp32 state (one thread per element) and 8-bit blockwise state (one CUDA block
// of 256 threads per 256-element state block). Bit-identical to the CPU twin
// kernels/cpu/adamw_cpu.cpp: the element math is the shared kernels/adamw_math.h with explicitly
// rounded intrinsics (no FMA contraction), and the block max is order-independent.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/adamw_math.h"
#include "kernels/cuda/adamw_cuda.h"

namespace qlora::kernels::cuda {

namespace {

using adamw::Hyper;
using adamw::kBlock8bit;

struct NoOut {};

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }

__device__ __forceinline__ void store(NoOut*, int64_t, float) {}
__device__ __forceinline__ void store(float* o, int64_t i, float v) { o[i] = v; }
__device__ __forceinline__ void store(__nv_bfloat16* o, int64_t i, float v) { o[i] = __float2bfloat16_rn(v); }
__device__ __forceinline__ void store(__half* o, int64_t i, float v) { o[i] = __float2half_rn(v); }

template <class G, class O>
__global__ void adamw_fp32_kernel(Hyper h, float* __restrict__ p, float* __restrict__ m, float* __restrict__ v,
                                  const G* __restrict__ g, O* __restrict__ out, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    float pi = p[i], mi = m[i], vi = v[i];
    adamw::update(h, to_float(g[i]), pi, mi, vi);
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
    store(out, i, pi);
  }
}

// Block of 256 threads; thread t owns element b*256 + t of state block b.
template <class G, class O>
__global__ void __launch_bounds__(kBlock8bit)
    adamw_8bit_kernel(Hyper h, float* __restrict__ p, uint8_t* __restrict__ mc, uint8_t* __restrict__ vc,
                      float* __restrict__ am, float* __restrict__ av, const G* __restrict__ g, O* __restrict__ out,
                      const float* __restrict__ map_m, const float* __restrict__ map_v, int64_t n, int64_t nblocks) {
  __shared__ float s_map_m[256];
  __shared__ float s_map_v[256];
  __shared__ float s_red_m[kBlock8bit / 32];
  __shared__ float s_red_v[kBlock8bit / 32];
  const int t = threadIdx.x;
  s_map_m[t] = map_m[t];
  s_map_v[t] = map_v[t];
  __syncthreads();
  for (int64_t b = blockIdx.x; b < nblocks; b += gridDim.x) {
    const int64_t i = b * kBlock8bit + t;
    const bool valid = i < n;
    const float old_am = am[b], old_av = av[b];
    float mi = 0.f, vi = 0.f;
    if (valid) {
      float pi = p[i];
      mi = adamw::f_mul(s_map_m[mc[i]], old_am);
      vi = adamw::f_mul(s_map_v[vc[i]], old_av);
      adamw::update(h, to_float(g[i]), pi, mi, vi);
      p[i] = pi;
      store(out, i, pi);
    }
    // max |m|, max |v| over the block (fmaxf: exact and order-independent)
    float rm = valid ? fabsf(mi) : 0.f, rv = valid ? fabsf(vi) : 0.f;
    for (int off = 16; off > 0; off >>= 1) {
      rm = fmaxf(rm, __shfl_xor_sync(0xffffffffu, rm, off));
      rv = fmaxf(rv, __shfl_xor_sync(0xffffffffu, rv, off));
    }
    if ((t & 31) == 0) {
      s_red_m[t >> 5] = rm;
      s_red_v[t >> 5] = rv;
    }
    __syncthreads();
    float new_am = 0.f, new_av = 0.f;
    for (int w = 0; w < kBlock8bit / 32; ++w) {
      new_am = fmaxf(new_am, s_red_m[w]);
      new_av = fmaxf(new_av, s_red_v[w]);
    }
    __syncthreads();  // s_red is reused by the next block; every thread has read old am/av
    if (t == 0) {
      am[b] = new_am;
      av[b] = new_av;
    }
    if (valid) {
      mc[i] = adamw::nearest_code8(s_map_m, adamw::f_mul(mi, adamw::block_scale(new_am)));
      vc[i] = adamw::nearest_code8(s_map_v, adamw::f_mul(vi, adamw::block_scale(new_av)));
    }
  }
}

int grid_for(int64_t work, int threads) {
  const int64_t blocks = (work + threads - 1) / threads;
  return static_cast<int>(blocks < 65535 * 16 ? (blocks > 0 ? blocks : 1) : 65535 * 16);
}

// Calls fn(G*, O*) with typed pointers.
template <class Fn>
cudaError_t with_types(const void* g, FloatType gt, void* out, FloatType ot, Fn fn) {
  auto with_out = [&](auto* gp) -> cudaError_t {
    switch (ot) {
      case FloatType::None: fn(gp, static_cast<NoOut*>(nullptr)); break;
      case FloatType::F32: fn(gp, static_cast<float*>(out)); break;
      case FloatType::BF16: fn(gp, static_cast<__nv_bfloat16*>(out)); break;
      case FloatType::F16: fn(gp, static_cast<__half*>(out)); break;
      default: return cudaErrorInvalidValue;
    }
    return cudaGetLastError();
  };
  switch (gt) {
    case FloatType::F32: return with_out(static_cast<const float*>(g));
    case FloatType::BF16: return with_out(static_cast<const __nv_bfloat16*>(g));
    case FloatType::F16: return with_out(static_cast<const __half*>(g));
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t adamw_fp32(const Hyper& h, float* p, float* m, float* v, const void* g, FloatType g_type, void* out,
                       FloatType out_type, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const int threads = 256;
  const int blocks = grid_for(n, threads);
  return with_types(g, g_type, out, out_type, [&](auto* gp, auto* op) {
    adamw_fp32_kernel<<<blocks, threads, 0, stream>>>(h, p, m, v, gp, op, n);
  });
}

cudaError_t adamw_8bit(const Hyper& h, float* p, uint8_t* m_codes, uint8_t* v_codes, float* absmax_m, float* absmax_v,
                       const void* g, FloatType g_type, void* out, FloatType out_type, const float* map_m,
                       const float* map_v, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const int64_t nblocks = (n + kBlock8bit - 1) / kBlock8bit;
  const int blocks = static_cast<int>(nblocks < 65535 * 16 ? nblocks : 65535 * 16);
  return with_types(g, g_type, out, out_type, [&](auto* gp, auto* op) {
    adamw_8bit_kernel<<<blocks, kBlock8bit, 0, stream>>>(h, p, m_codes, v_codes, absmax_m, absmax_v, gp, op, map_m,
                                                         map_v, n, nblocks);
  });
}

}  // namespace qlora::kernels::cuda

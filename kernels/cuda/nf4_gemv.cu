// Fused small-M NF4 products on CUDA (generation-sized batches, M <= 16): the 4-bit weights are
// read once from memory and decoded in registers, never written out.
// CPU twins: kernels/cpu/nf4_cpu.cpp nf4_linear_cpu / nf4_linear_grad_input_cpu (fused path),
// compared by tests/gpu with a relative-norm tolerance (the summation order differs).
//
// nf4_gemv (y = x W^T): one warp per weight row n. Each lane owns 32-element chunks of the row
// (one 16-byte load each, 4 loads in flight), decodes codes from a shared-memory table, and
// accumulates sum_j x[m, k+j] * code_j for each of the M rows of x; the chunk's block scale is
// applied once per chunk (fp32 throughout). A warp reduction finishes each y[m, n].
//
// nf4_gemv_t (dx = dy W): a warp owns 256 columns (8 per lane: one 4-byte load per weight row)
// and a range of weight rows; acc[m][j] += dy[m, n] * w[n, k+j]. Partial sums per row split go
// to a float workspace; a second launch adds the splits in a fixed order (deterministic) and
// converts to the output type.
#include "kernels/cuda/nf4_common.cuh"

namespace qlora::kernels::cuda {

namespace {

constexpr int kWarpsPerBlock = 4;
constexpr int kGemvUnroll = 4;  // 16-byte weight loads in flight per lane

// x[m, k .. k+32) as floats (16-byte loads; k is a multiple of 32, rows 16-byte aligned).
template <class T>
__device__ __forceinline__ void load_x32(const T* p, float* f) {
  const uint4* q = reinterpret_cast<const uint4*>(p);
#pragma unroll
  for (int i = 0; i < 4; ++i) unpack8<T>(__ldg(q + i), f + 8 * i);
}
template <>
__device__ __forceinline__ void load_x32<float>(const float* p, float* f) {
  const float4* q = reinterpret_cast<const float4*>(p);
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const float4 v = __ldg(q + i);
    f[4 * i] = v.x;
    f[4 * i + 1] = v.y;
    f[4 * i + 2] = v.z;
    f[4 * i + 3] = v.w;
  }
}

template <class T, int MT>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    nf4_gemv_kernel(const uint8_t* __restrict__ packed, Nf4Stats st, int log2bs, int64_t N, int64_t K,
                    const T* __restrict__ x, int M, T* __restrict__ y) {
  __shared__ float s_codes[16];
  load_codes(s_codes);
  __syncthreads();
  const int lane = threadIdx.x & 31;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (n >= N) return;
  const int64_t nchunks = K / 32;  // 32-element chunks per row
  const uint4* wrow = reinterpret_cast<const uint4*>(packed + n * (K / 2));
  float acc[MT];
#pragma unroll
  for (int m = 0; m < MT; ++m) acc[m] = 0.f;

  for (int64_t c0 = 0; c0 < nchunks; c0 += 32 * kGemvUnroll) {
    uint4 q[kGemvUnroll];
    float sc[kGemvUnroll];
#pragma unroll
    for (int u = 0; u < kGemvUnroll; ++u) {
      const int64_t c = c0 + u * 32 + lane;
      if (c < nchunks) {
        q[u] = __ldg(wrow + c);
        sc[u] = block_scale(st, (n * K + c * 32) >> log2bs);
      }
    }
#pragma unroll
    for (int u = 0; u < kGemvUnroll; ++u) {
      const int64_t c = c0 + u * 32 + lane;
      if (c >= nchunks) break;
      float w[32];
      const uint32_t words[4] = {q[u].x, q[u].y, q[u].z, q[u].w};
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int b = 0; b < 4; ++b) {
          const uint32_t byte = (words[i] >> (8 * b)) & 0xFFu;
          w[8 * i + 2 * b] = s_codes[byte >> 4];
          w[8 * i + 2 * b + 1] = s_codes[byte & 0xFu];
        }
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        if (m >= M) break;
        float xv[32];
        load_x32<T>(x + m * K + c * 32, xv);
        float part = 0.f;
#pragma unroll
        for (int j = 0; j < 32; ++j) part = fmaf(xv[j], w[j], part);
        acc[m] = fmaf(part, sc[u], acc[m]);
      }
    }
  }
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    if (m >= M) break;
    const float v = warp_sum(acc[m]);
    if (lane == 0) y[m * N + n] = from_f32<T>(v);
  }
}

template <class T, int MT>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    nf4_gemv_t_kernel(const uint8_t* __restrict__ packed, Nf4Stats st, int log2bs, int64_t N, int64_t K,
                      int64_t rows_per_split, const T* __restrict__ dy, int M, float* __restrict__ ws) {
  __shared__ float s_codes[16];
  load_codes(s_codes);
  __syncthreads();
  const int lane = threadIdx.x & 31;
  const int64_t k = (static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5)) * 256 + lane * 8;
  if (k >= K) return;
  const int split = blockIdx.y;
  const int64_t n0 = split * rows_per_split;
  const int64_t n1 = n0 + rows_per_split < N ? n0 + rows_per_split : N;
  float acc[MT][8];
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[m][j] = 0.f;

  for (int64_t nb = n0; nb < n1; nb += 4) {
    uint32_t q[4];
    float sc[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int64_t n = nb + u;
      if (n < n1) {
        const int64_t e = n * K + k;  // multiple of 8: 8 elements in one block, 4-byte aligned
        q[u] = __ldg(reinterpret_cast<const uint32_t*>(packed + e / 2));
        sc[u] = block_scale(st, e >> log2bs);
      }
    }
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int64_t n = nb + u;
      if (n >= n1) break;
      float w[8];
#pragma unroll
      for (int b = 0; b < 4; ++b) {
        const uint32_t byte = (q[u] >> (8 * b)) & 0xFFu;
        w[2 * b] = __fmul_rn(s_codes[byte >> 4], sc[u]);
        w[2 * b + 1] = __fmul_rn(s_codes[byte & 0xFu], sc[u]);
      }
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        if (m >= M) break;
        const float g = to_f32<T>(dy[m * N + n]);
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[m][j] = fmaf(g, w[j], acc[m][j]);
      }
    }
  }
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    if (m >= M) break;
    float4* o = reinterpret_cast<float4*>(ws + (static_cast<int64_t>(split) * M + m) * K + k);
    o[0] = make_float4(acc[m][0], acc[m][1], acc[m][2], acc[m][3]);
    o[1] = make_float4(acc[m][4], acc[m][5], acc[m][6], acc[m][7]);
  }
}

// dx[i] = T(sum over splits of ws[s * total + i]), i < total = M * K.
template <class T>
__global__ void nf4_reduce_splits_kernel(const float* __restrict__ ws, int splits, int64_t total, T* __restrict__ dx) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    float s = 0.f;
    for (int p = 0; p < splits; ++p) s += ws[p * total + i];
    dx[i] = from_f32<T>(s);
  }
}

template <class T, int MT>
cudaError_t gemv_launch(const uint8_t* packed, const Nf4Stats& st, int log2bs, int64_t N, int64_t K, const T* x, int M,
                        T* y, cudaStream_t stream) {
  const int64_t blocks = (N + kWarpsPerBlock - 1) / kWarpsPerBlock;
  nf4_gemv_kernel<T, MT>
      <<<static_cast<unsigned>(blocks), kWarpsPerBlock * 32, 0, stream>>>(packed, st, log2bs, N, K, x, M, y);
  return cudaGetLastError();
}

template <class T>
cudaError_t gemv_dispatch(const uint8_t* packed, const Nf4Stats& st, int blocksize, int64_t N, int64_t K, const void* x,
                          int M, void* y, cudaStream_t stream) {
  const int l = log2_int(blocksize);
  const T* xp = static_cast<const T*>(x);
  T* yp = static_cast<T*>(y);
  if (M <= 1) return gemv_launch<T, 1>(packed, st, l, N, K, xp, M, yp, stream);
  if (M <= 2) return gemv_launch<T, 2>(packed, st, l, N, K, xp, M, yp, stream);
  if (M <= 4) return gemv_launch<T, 4>(packed, st, l, N, K, xp, M, yp, stream);
  if (M <= 8) return gemv_launch<T, 8>(packed, st, l, N, K, xp, M, yp, stream);
  return gemv_launch<T, 16>(packed, st, l, N, K, xp, M, yp, stream);
}

template <class T, int MT>
cudaError_t gemv_t_launch(const uint8_t* packed, const Nf4Stats& st, int log2bs, int64_t N, int64_t K, const T* dy,
                          int M, T* dx, float* ws, int splits, cudaStream_t stream) {
  const int64_t rows = (N + splits - 1) / splits;
  const int64_t col_blocks = (K + 256 * kWarpsPerBlock - 1) / (256 * kWarpsPerBlock);
  dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(splits));
  nf4_gemv_t_kernel<T, MT><<<grid, kWarpsPerBlock * 32, 0, stream>>>(packed, st, log2bs, N, K, rows, dy, M, ws);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  const int64_t total = static_cast<int64_t>(M) * K;
  const int64_t blocks = (total + 255) / 256;
  nf4_reduce_splits_kernel<T>
      <<<static_cast<unsigned>(blocks < 65535 * 32 ? blocks : 65535 * 32), 256, 0, stream>>>(ws, splits, total, dx);
  return cudaGetLastError();
}

template <class T>
cudaError_t gemv_t_dispatch(const uint8_t* packed, const Nf4Stats& st, int blocksize, int64_t N, int64_t K,
                            const void* dy, int M, void* dx, float* ws, int splits, cudaStream_t stream) {
  const int l = log2_int(blocksize);
  const T* g = static_cast<const T*>(dy);
  T* o = static_cast<T*>(dx);
  if (M <= 1) return gemv_t_launch<T, 1>(packed, st, l, N, K, g, M, o, ws, splits, stream);
  if (M <= 2) return gemv_t_launch<T, 2>(packed, st, l, N, K, g, M, o, ws, splits, stream);
  if (M <= 4) return gemv_t_launch<T, 4>(packed, st, l, N, K, g, M, o, ws, splits, stream);
  if (M <= 8) return gemv_t_launch<T, 8>(packed, st, l, N, K, g, M, o, ws, splits, stream);
  return gemv_t_launch<T, 16>(packed, st, l, N, K, g, M, o, ws, splits, stream);
}

int sm_count() {
  static int count = [] {
    int dev = 0, c = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&c, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
      return 108;
    return c;
  }();
  return count;
}

}  // namespace

bool nf4_gemv_supported(int64_t M, int64_t K, const void* packed, const void* x) {
  return M >= 1 && M <= kGemvMaxRows && K > 0 && K % 32 == 0 && reinterpret_cast<uintptr_t>(packed) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(x) % 16 == 0;
}

cudaError_t nf4_gemv(const uint8_t* packed, const Nf4Stats& stats, int blocksize, int64_t N, int64_t K, const void* x,
                     int M, void* y, OutType type, cudaStream_t stream) {
  if (N <= 0 || M <= 0) return cudaSuccess;
  if (!nf4_gemv_supported(M, K, packed, x) || blocksize < 32) return cudaErrorInvalidValue;
  switch (type) {
    case OutType::F32: return gemv_dispatch<float>(packed, stats, blocksize, N, K, x, M, y, stream);
    case OutType::BF16: return gemv_dispatch<__nv_bfloat16>(packed, stats, blocksize, N, K, x, M, y, stream);
    case OutType::F16: return gemv_dispatch<__half>(packed, stats, blocksize, N, K, x, M, y, stream);
  }
  return cudaErrorInvalidValue;
}

bool nf4_gemv_t_supported(int64_t M, int64_t K, const void* packed) {
  return M >= 1 && M <= kGemvMaxRows && K > 0 && K % 8 == 0 && reinterpret_cast<uintptr_t>(packed) % 4 == 0;
}

int nf4_gemv_t_splits(int64_t N, int64_t K) {
  // Enough warps to cover every SM several times; each split keeps >= 16 weight rows.
  const int64_t col_warps = (K + 255) / 256;
  const int64_t want_warps = static_cast<int64_t>(sm_count()) * 32;
  int64_t splits = (want_warps + col_warps - 1) / col_warps;
  const int64_t max_splits = (N + 15) / 16;
  if (splits > max_splits) splits = max_splits;
  if (splits > 1024) splits = 1024;
  return static_cast<int>(splits < 1 ? 1 : splits);
}

cudaError_t nf4_gemv_t(const uint8_t* packed, const Nf4Stats& stats, int blocksize, int64_t N, int64_t K,
                       const void* dy, int M, void* dx, OutType type, float* workspace, int splits,
                       cudaStream_t stream) {
  if (K <= 0 || M <= 0) return cudaSuccess;
  if (!nf4_gemv_t_supported(M, K, packed) || blocksize < 32 || splits < 1) return cudaErrorInvalidValue;
  if (N <= 0) return cudaErrorInvalidValue;  // the caller zero-fills instead
  switch (type) {
    case OutType::F32:
      return gemv_t_dispatch<float>(packed, stats, blocksize, N, K, dy, M, dx, workspace, splits, stream);
    case OutType::BF16:
      return gemv_t_dispatch<__nv_bfloat16>(packed, stats, blocksize, N, K, dy, M, dx, workspace, splits, stream);
    case OutType::F16:
      return gemv_t_dispatch<__half>(packed, stats, blocksize, N, K, dy, M, dx, workspace, splits, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace qlora::kernels::cuda

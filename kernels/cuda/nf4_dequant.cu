// NF4 dequantize on CUDA: one launch, double-quantized statistics included.
// CPU twin: kernels/cpu/nf4_cpu.cpp nf4_dequantize_cpu (tests/gpu compares the two bit for bit).
//
// Vector kernel: each thread turns one 16-byte load of packed codes (32 elements, always inside
// one absmax block since blocksize >= 32 is a power of two) into 32 outputs written with 16-byte
// stores (8 for float32, 4 for bf16 / fp16). out = T(code * absmax): product in float32 (IEEE,
// no FTZ), one rounding to T. The last n % 32 elements, and buffers that are not 16-byte aligned,
// go through the per-byte kernel.
#include "kernels/cuda/nf4_common.cuh"

namespace qlora::kernels::cuda {

namespace {

// 32 float outputs of one 16-byte word of packed codes with scale s.
__device__ __forceinline__ void decode32(const uint4& q, float s, const float* s_codes, float* v) {
  const uint32_t w[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int b = 0; b < 4; ++b) {
      const uint32_t byte = (w[i] >> (8 * b)) & 0xFFu;  // little-endian: packed[4i + b]
      v[8 * i + 2 * b] = __fmul_rn(s_codes[byte >> 4], s);
      v[8 * i + 2 * b + 1] = __fmul_rn(s_codes[byte & 0xFu], s);
    }
  }
}

__device__ __forceinline__ void store32(float* out, const float* v) {
  float4* o = reinterpret_cast<float4*>(out);
#pragma unroll
  for (int i = 0; i < 8; ++i) o[i] = make_float4(v[4 * i], v[4 * i + 1], v[4 * i + 2], v[4 * i + 3]);
}

template <class T>
__device__ __forceinline__ void store32(T* out, const float* v) {
  uint4* o = reinterpret_cast<uint4*>(out);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float* p = v + 8 * i;
    o[i] = make_uint4(pack2(out, p[0], p[1]), pack2(out, p[2], p[3]), pack2(out, p[4], p[5]), pack2(out, p[6], p[7]));
  }
}

template <class T>
__global__ void __launch_bounds__(256) nf4_dequant_vec_kernel(const uint8_t* __restrict__ packed, Nf4Stats st,
                                                              int64_t nchunks, int log2bs, T* __restrict__ out) {
  __shared__ float s_codes[16];
  load_codes(s_codes);
  __syncthreads();
  const uint4* src = reinterpret_cast<const uint4*>(packed);
  for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < nchunks; t += (int64_t)gridDim.x * blockDim.x) {
    const uint4 q = __ldg(src + t);
    const float s = block_scale(st, (t * 32) >> log2bs);
    float v[32];
    decode32(q, s, s_codes, v);
    store32(out + t * 32, v);
  }
}

// Per-byte kernel for elements [e0, n) (e0 even): the tail and unaligned buffers.
template <class T>
__global__ void nf4_dequant_byte_kernel(const uint8_t* __restrict__ packed, Nf4Stats st, int64_t e0, int64_t n,
                                        int log2bs, T* __restrict__ out) {
  __shared__ float s_codes[16];
  load_codes(s_codes);
  __syncthreads();
  const int64_t nbytes = (n + 1) / 2;
  for (int64_t j = e0 / 2 + blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < nbytes;
       j += (int64_t)gridDim.x * blockDim.x) {
    const int64_t i = 2 * j;
    const float s = block_scale(st, i >> log2bs);  // blocksize is even: both elements share it
    const uint8_t byte = packed[j];
    out[i] = from_f32<T>(__fmul_rn(s_codes[byte >> 4], s));
    if (i + 1 < n) out[i + 1] = from_f32<T>(__fmul_rn(s_codes[byte & 0x0F], s));
  }
}

template <class T>
cudaError_t launch(const uint8_t* packed, const Nf4Stats& st, int64_t n, int blocksize, T* out, cudaStream_t stream) {
  const int log2bs = log2_int(blocksize);
  const bool aligned = (reinterpret_cast<uintptr_t>(packed) % 16 == 0) && (reinterpret_cast<uintptr_t>(out) % 16 == 0);
  const int64_t nchunks = aligned ? n / 32 : 0;
  if (nchunks > 0) {
    const int threads = 256;
    const int64_t blocks = (nchunks + threads - 1) / threads;
    nf4_dequant_vec_kernel<T><<<static_cast<unsigned>(blocks < (1 << 30) ? blocks : (1 << 30)), threads, 0, stream>>>(
        packed, st, nchunks, log2bs, out);
  }
  const int64_t e0 = nchunks * 32;
  if (e0 < n) {
    const int threads = 256;
    const int64_t bytes = (n - e0 + 1) / 2;
    const int64_t blocks = (bytes + threads - 1) / threads;
    nf4_dequant_byte_kernel<T>
        <<<static_cast<unsigned>(blocks < 65535 * 32 ? blocks : 65535 * 32), threads, 0, stream>>>(packed, st, e0, n,
                                                                                                   log2bs, out);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t nf4_dequantize(const uint8_t* packed, const float* absmax, const uint8_t* qabsmax, const float* nested,
                           const float* map8, float offset, int64_t n, int blocksize, void* out, OutType type,
                           cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (blocksize < 32 || (blocksize & (blocksize - 1)) != 0) return cudaErrorInvalidValue;
  Nf4Stats st;
  st.absmax = absmax;
  st.qabsmax = qabsmax;
  st.nested = nested;
  st.map8 = map8;
  st.offset = offset;
  switch (type) {
    case OutType::F32: return launch(packed, st, n, blocksize, static_cast<float*>(out), stream);
    case OutType::BF16: return launch(packed, st, n, blocksize, static_cast<__nv_bfloat16*>(out), stream);
    case OutType::F16: return launch(packed, st, n, blocksize, static_cast<__half*>(out), stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace qlora::kernels::cuda

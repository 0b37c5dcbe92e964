// AVX-512 (F + BW + VL) NF4 kernels. This file alone is compiled with -mavx512f -mavx512bw
// -mavx512vl; it is only called after the run-time check in nf4_cpu_dispatch.cpp. Bit-identical
// to nf4_cpu_scalar.cpp for absmax / quantize / dequant; shares only intrinsics and static inline
// functions with other files.
//
// Dequantize is one permute per vector: vpermps over the 16 float32 values code[c] * scale, or
// vpermw over the 16 pre-rounded bf16 / fp16 values (32 outputs per instruction).
#include <immintrin.h>

#include "kernels/cpu/float_bits.h"
#include "kernels/cpu/nf4_cpu_isa.h"
#include "kernels/cpu/skinny_avx2.h"
#include "kernels/dropout.h"
#include "kernels/nf4.h"

namespace qlora::kernels::cpu {

namespace {

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

inline float load1(const void* x, Elem t, int64_t i) {
  switch (t) {
    case Elem::F32: return static_cast<const float*>(x)[i];
    case Elem::BF16: return bf16_to_f32(static_cast<const uint16_t*>(x)[i]);
    case Elem::F16: return f16_to_f32(static_cast<const uint16_t*>(x)[i]);
  }
  return 0.f;
}

template <Elem T>
inline __m512 load16(const void* x, int64_t i) {
  if constexpr (T == Elem::F32) {
    return _mm512_loadu_ps(static_cast<const float*>(x) + i);
  } else if constexpr (T == Elem::BF16) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(x) + i));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  } else {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(x) + i));
    return _mm512_cvtph_ps(h);
  }
}

inline uint8_t code_at(const uint8_t* packed, int64_t e) {
  const uint8_t b = packed[e >> 1];
  return (e & 1) ? nf4::lo_nibble(b) : nf4::hi_nibble(b);
}

// ---- absmax ------------------------------------------------------------------------------------

template <Elem T>
float absmax_t(const void* x, int64_t n) {
  __m512 acc = _mm512_setzero_ps();
  int64_t i = 0;
  // vmaxps returns its second operand when either is NaN: max(|x|, acc) ignores a NaN x.
  for (; i + 16 <= n; i += 16) acc = _mm512_max_ps(_mm512_abs_ps(load16<T>(x, i)), acc);
  float r = _mm512_reduce_max_ps(acc);  // acc holds no NaN
  for (; i < n; ++i) {
    const float a = load1(x, T, i);
    const float fa = a < 0.f ? -a : a;
    if (fa > r) r = fa;
  }
  return r;
}

float absmax_avx512(const void* x, Elem t, int64_t n) {
  switch (t) {
    case Elem::F32: return absmax_t<Elem::F32>(x, n);
    case Elem::BF16: return absmax_t<Elem::BF16>(x, n);
    case Elem::F16: return absmax_t<Elem::F16>(x, n);
  }
  return 0.f;
}

// ---- quantize ----------------------------------------------------------------------------------

// 16 codes as bytes: the number of midpoints strictly below each scaled value (NaN -> 0).
inline __m128i codes16(__m512 v, const __m512* mids) {
  const __m512i one = _mm512_set1_epi32(1);
  __m512i c = _mm512_setzero_si512();
  for (int i = 0; i < 15; ++i) c = _mm512_mask_add_epi32(c, _mm512_cmp_ps_mask(v, mids[i], _CMP_GT_OQ), c, one);
  return _mm512_cvtepi32_epi8(c);
}

// 16 code bytes in element order -> 8 packed bytes (c[2j] << 4 | c[2j+1]) in the low half.
inline __m128i pack_pairs(__m128i c8) {
  const __m128i pairs =
      _mm_or_si128(_mm_slli_epi16(_mm_and_si128(c8, _mm_set1_epi16(0x00FF)), 4), _mm_srli_epi16(c8, 8));
  return _mm_packus_epi16(pairs, pairs);
}

template <Elem T>
void quantize_t(const void* x, int64_t n, float scale, uint8_t* dst) {
  __m512 mids[15];
  for (int i = 0; i < 15; ++i) mids[i] = _mm512_set1_ps(nf4::kMidpoints[i]);
  const __m512 vs = _mm512_set1_ps(scale);
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m128i c8 = codes16(_mm512_mul_ps(load16<T>(x, j), vs), mids);
    _mm_storel_epi64(reinterpret_cast<__m128i*>(dst + j / 2), pack_pairs(c8));
  }
  for (; j < n; j += 2) {
    const uint8_t c0 = nf4::quantize_scaled(load1(x, T, j) * scale);
    const uint8_t c1 = j + 1 < n ? nf4::quantize_scaled(load1(x, T, j + 1) * scale) : nf4::kPadCode;
    dst[j / 2] = static_cast<uint8_t>((c0 << 4) | c1);
  }
}

void quantize_avx512(const void* x, Elem t, int64_t n, float scale, uint8_t* dst) {
  switch (t) {
    case Elem::F32: quantize_t<Elem::F32>(x, n, scale, dst); break;
    case Elem::BF16: quantize_t<Elem::BF16>(x, n, scale, dst); break;
    case Elem::F16: quantize_t<Elem::F16>(x, n, scale, dst); break;
  }
}

// ---- dequantize --------------------------------------------------------------------------------

// 32 codes in element order from 16 packed bytes: c0 = elements 0..15, c1 = 16..31.
inline void unpack32(const uint8_t* p, __m128i& c0, __m128i& c1) {
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  const __m128i m = _mm_set1_epi8(0x0F);
  const __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), m), lo = _mm_and_si128(b, m);
  c0 = _mm_unpacklo_epi8(hi, lo);
  c1 = _mm_unpackhi_epi8(hi, lo);
}

// float32 -> bf16 bits (in 32-bit lanes), round to nearest even, NaN truncated and quieted:
// f32_to_bf16, 16 at a time.
inline __m512i bf16_rne16(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)), lsb), 16);
  const __m512i qnan = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x0040));
  return _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), qnan);
}

void dequant_f32(const uint8_t* packed, int64_t e0, int64_t n, const float* scales, int64_t bs, float* dst) {
  const __m512 codes = _mm512_loadu_ps(nf4::kCodes);
  alignas(64) float tab[16];
  const int64_t b0 = e0 / bs;
  for (int64_t k = 0; k < n;) {
    const int64_t b = (e0 + k) / bs;
    const int64_t end = min64(n, (b + 1) * bs - e0);
    const __m512 t = _mm512_mul_ps(codes, _mm512_set1_ps(scales[b - b0]));
    _mm512_store_ps(tab, t);
    if ((e0 + k) & 1) {
      dst[k] = tab[code_at(packed, e0 + k)];
      ++k;
    }
    for (; k + 32 <= end; k += 32) {
      __m128i c0, c1;
      unpack32(packed + ((e0 + k) >> 1), c0, c1);
      _mm512_storeu_ps(dst + k, _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(c0), t));
      _mm512_storeu_ps(dst + k + 16, _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(c1), t));
    }
    for (; k < end; ++k) dst[k] = tab[code_at(packed, e0 + k)];
  }
}

// 16-bit outputs: one vpermw over the block's 16 pre-rounded values gives 32 outputs.
void dequant_u16(const uint8_t* packed, int64_t e0, int64_t n, const float* scales, int64_t bs, bool bf16,
                 uint16_t* dst) {
  const __m512 codes = _mm512_loadu_ps(nf4::kCodes);
  alignas(64) uint16_t tab[16];
  const int64_t b0 = e0 / bs;
  for (int64_t k = 0; k < n;) {
    const int64_t b = (e0 + k) / bs;
    const int64_t end = min64(n, (b + 1) * bs - e0);
    const __m512 v = _mm512_mul_ps(codes, _mm512_set1_ps(scales[b - b0]));
    const __m256i h =
        bf16 ? _mm512_cvtepi32_epi16(bf16_rne16(v)) : _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm256_store_si256(reinterpret_cast<__m256i*>(tab), h);
    const __m512i t = _mm512_zextsi256_si512(h);
    if ((e0 + k) & 1) {
      dst[k] = tab[code_at(packed, e0 + k)];
      ++k;
    }
    for (; k + 32 <= end; k += 32) {
      __m128i c0, c1;
      unpack32(packed + ((e0 + k) >> 1), c0, c1);
      const __m512i idx = _mm512_cvtepu8_epi16(_mm256_inserti128_si256(_mm256_castsi128_si256(c0), c1, 1));
      _mm512_storeu_si512(dst + k, _mm512_permutexvar_epi16(idx, t));
    }
    for (; k < end; ++k) dst[k] = tab[code_at(packed, e0 + k)];
  }
}

void dequant_avx512(const uint8_t* packed, int64_t e0, int64_t n, const float* scales, int64_t bs, void* dst, Elem t) {
  if (t == Elem::F32) return dequant_f32(packed, e0, n, scales, bs, static_cast<float*>(dst));
  dequant_u16(packed, e0, n, scales, bs, t == Elem::BF16, static_cast<uint16_t*>(dst));
}

// ---- fused small-M products ---------------------------------------------------------------------

template <int M>
void dot_row_t(const uint8_t* packed, int64_t e0, int64_t K, const float* scales, int64_t bs, const float* x,
               int64_t ldx, float* y) {
  const __m512 codes = _mm512_loadu_ps(nf4::kCodes);
  __m512 acc[M];
  float tail[M];
  for (int m = 0; m < M; ++m) {
    acc[m] = _mm512_setzero_ps();
    tail[m] = 0.f;
  }
  const int64_t b0 = e0 / bs;
  int64_t k = 0;
  while (k < K) {
    const int64_t b = (e0 + k) / bs;
    const int64_t end = min64(K, (b + 1) * bs - e0);
    const float s = scales[b - b0];
    const __m512 t = _mm512_mul_ps(codes, _mm512_set1_ps(s));
    for (; k + 32 <= end; k += 32) {
      __m128i c0, c1;
      unpack32(packed + ((e0 + k) >> 1), c0, c1);
      const __m512 w0 = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(c0), t);
      const __m512 w1 = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(c1), t);
      for (int m = 0; m < M; ++m) {
        acc[m] = _mm512_fmadd_ps(_mm512_loadu_ps(x + m * ldx + k), w0, acc[m]);
        acc[m] = _mm512_fmadd_ps(_mm512_loadu_ps(x + m * ldx + k + 16), w1, acc[m]);
      }
    }
    for (; k < end; ++k) {
      const float w = nf4::kCodes[code_at(packed, e0 + k)] * s;
      for (int m = 0; m < M; ++m) tail[m] += x[m * ldx + k] * w;
    }
  }
  for (int m = 0; m < M; ++m) y[m] = _mm512_reduce_add_ps(acc[m]) + tail[m];
}

void dot_row_avx512(const uint8_t* packed, int64_t e0, int64_t K, const float* scales, int64_t bs, const float* x,
                    int64_t ldx, int M, float* y) {
  if (e0 & 1) return nf4_isa_scalar().dot_row(packed, e0, K, scales, bs, x, ldx, M, y);
  switch (M) {
    case 1: return dot_row_t<1>(packed, e0, K, scales, bs, x, ldx, y);
    case 2: return dot_row_t<2>(packed, e0, K, scales, bs, x, ldx, y);
    case 3: return dot_row_t<3>(packed, e0, K, scales, bs, x, ldx, y);
    default: return dot_row_t<4>(packed, e0, K, scales, bs, x, ldx, y);
  }
}

template <int M>
void axpy_row_t(const uint8_t* packed, int64_t e0, int64_t n, const float* scales, int64_t bs, const float* coef,
                int64_t ldcoef, float* acc, int64_t ldacc) {
  const __m512 codes = _mm512_loadu_ps(nf4::kCodes);
  __m512 cf[M];
  for (int m = 0; m < M; ++m) cf[m] = _mm512_set1_ps(coef[m * ldcoef]);
  const int64_t b0 = e0 / bs;
  int64_t k = 0;
  while (k < n) {
    const int64_t b = (e0 + k) / bs;
    const int64_t end = min64(n, (b + 1) * bs - e0);
    const float s = scales[b - b0];
    const __m512 t = _mm512_mul_ps(codes, _mm512_set1_ps(s));
    for (; k + 32 <= end; k += 32) {
      __m128i c0, c1;
      unpack32(packed + ((e0 + k) >> 1), c0, c1);
      const __m512 w0 = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(c0), t);
      const __m512 w1 = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(c1), t);
      for (int m = 0; m < M; ++m) {
        float* a = acc + m * ldacc + k;
        _mm512_storeu_ps(a, _mm512_fmadd_ps(cf[m], w0, _mm512_loadu_ps(a)));
        _mm512_storeu_ps(a + 16, _mm512_fmadd_ps(cf[m], w1, _mm512_loadu_ps(a + 16)));
      }
    }
    for (; k < end; ++k) {
      const float w = nf4::kCodes[code_at(packed, e0 + k)] * s;
      for (int m = 0; m < M; ++m) acc[m * ldacc + k] += coef[m * ldcoef] * w;
    }
  }
}

void axpy_row_avx512(const uint8_t* packed, int64_t e0, int64_t n, const float* scales, int64_t bs, const float* coef,
                     int64_t ldcoef, int M, float* acc, int64_t ldacc) {
  if (e0 & 1) return nf4_isa_scalar().axpy_row(packed, e0, n, scales, bs, coef, ldcoef, M, acc, ldacc);
  switch (M) {
    case 1: return axpy_row_t<1>(packed, e0, n, scales, bs, coef, ldcoef, acc, ldacc);
    case 2: return axpy_row_t<2>(packed, e0, n, scales, bs, coef, ldcoef, acc, ldacc);
    case 3: return axpy_row_t<3>(packed, e0, n, scales, bs, coef, ldcoef, acc, ldacc);
    default: return axpy_row_t<4>(packed, e0, n, scales, bs, coef, ldcoef, acc, ldacc);
  }
}

void dropout_avx512(const float* x, uint64_t i0, int64_t n, uint64_t seed, uint32_t thr, float scale, float* dst,
                    bool accumulate) {
  dropout::apply(x, i0, n, seed, thr, scale, dst, accumulate);
}

}  // namespace

const Nf4Isa& nf4_isa_avx512() {
  static const Nf4Isa isa{"avx512", absmax_avx512, quantize_avx512, dequant_avx512, dot_row_avx512, axpy_row_avx512,
                          dropout_avx512,
                          // the 8-wide kernel (no 16-wide one: a rank of 8 fills one 8-lane vector)
                          skinny_detail::skinny_avx2};
  return isa;
}

}  // namespace qlora::kernels::cpu

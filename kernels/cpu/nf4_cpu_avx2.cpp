// AVX2 + FMA + F16C NF4 kernels (this file alone is compiled with -mavx2 -mfma -mf16c; it is
// only called after the run-time check in nf4_cpu_dispatch.cpp). Bit-identical to
// nf4_cpu_scalar.cpp for absmax / quantize / dequant; everything it shares with other files is
// either an intrinsic or a static inline function (no out-of-line code built for AVX2 can leak to
// other translation units).
//
// Dequantize is a table lookup per block: the 16 values T(code[c] * scale) are computed once per
// block with the scalar conversion functions (so the rounding is the scalar path's by
// construction), then
//   float32:       two 8-entry vpermps lookups + a blend on bit 3 of the code;
//   bf16 / fp16:   two 16-entry byte shuffles (vpshufb) give the low and high bytes.
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

// 8 elements from x + i as float32 (exact conversions).
template <Elem T>
inline __m256 load8(const void* x, int64_t i) {
  if constexpr (T == Elem::F32) {
    return _mm256_loadu_ps(static_cast<const float*>(x) + i);
  } else if constexpr (T == Elem::BF16) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(x) + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  } else {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(x) + i));
    return _mm256_cvtph_ps(h);
  }
}

// ---- absmax ------------------------------------------------------------------------------------

template <Elem T>
float absmax_t(const void* x, int64_t n) {
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  // vmaxps returns its second operand when either is NaN: max(|x|, acc) ignores a NaN x.
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_max_ps(_mm256_and_ps(load8<T>(x, i), absmask), acc0);
    acc1 = _mm256_max_ps(_mm256_and_ps(load8<T>(x, i + 8), absmask), acc1);
  }
  for (; i + 8 <= n; i += 8) acc0 = _mm256_max_ps(_mm256_and_ps(load8<T>(x, i), absmask), acc0);
  acc0 = _mm256_max_ps(acc0, acc1);
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(acc0), _mm256_extractf128_ps(acc0, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
  float r = _mm_cvtss_f32(m);
  for (; i < n; ++i) {
    const float a = load1(x, T, i);
    const float fa = a < 0.f ? -a : a;
    if (fa > r) r = fa;  // false for NaN: ignored, like fmaxf
  }
  return r;
}

float absmax_avx2(const void* x, Elem t, int64_t n) {
  switch (t) {
    case Elem::F32: return absmax_t<Elem::F32>(x, n);
    case Elem::BF16: return absmax_t<Elem::BF16>(x, n);
    case Elem::F16: return absmax_t<Elem::F16>(x, n);
  }
  return 0.f;
}

// ---- quantize ----------------------------------------------------------------------------------

// Codes of 8 scaled values: the number of midpoints strictly below (cmp GT, ordered: NaN -> 0).
inline __m256i codes8(__m256 v, const __m256* mids) {
  __m256i c = _mm256_setzero_si256();
  for (int i = 0; i < 15; ++i) c = _mm256_sub_epi32(c, _mm256_castps_si256(_mm256_cmp_ps(v, mids[i], _CMP_GT_OQ)));
  return c;
}

template <Elem T>
void quantize_t(const void* x, int64_t n, float scale, uint8_t* dst) {
  __m256 mids[15];
  for (int i = 0; i < 15; ++i) mids[i] = _mm256_set1_ps(nf4::kMidpoints[i]);
  const __m256 vs = _mm256_set1_ps(scale);
  const __m128i lowbyte = _mm_set1_epi16(0x00FF);
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    const __m256i ca = codes8(_mm256_mul_ps(load8<T>(x, j), vs), mids);
    const __m256i cb = codes8(_mm256_mul_ps(load8<T>(x, j + 8), vs), mids);
    // 16 codes as uint16 in element order (packus works within 128-bit lanes; fix the qwords).
    const __m256i p16 = _mm256_permute4x64_epi64(_mm256_packus_epi32(ca, cb), 0xD8);
    const __m128i c8 = _mm_packus_epi16(_mm256_castsi256_si128(p16), _mm256_extracti128_si256(p16, 1));
    // byte pairs (c[2j] low, c[2j+1] high) -> (c[2j] << 4) | c[2j+1]
    const __m128i pairs = _mm_or_si128(_mm_slli_epi16(_mm_and_si128(c8, lowbyte), 4), _mm_srli_epi16(c8, 8));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(dst + j / 2), _mm_packus_epi16(pairs, pairs));
  }
  for (; j < n; j += 2) {
    const uint8_t c0 = nf4::quantize_scaled(load1(x, T, j) * scale);
    const uint8_t c1 = j + 1 < n ? nf4::quantize_scaled(load1(x, T, j + 1) * scale) : nf4::kPadCode;
    dst[j / 2] = static_cast<uint8_t>((c0 << 4) | c1);
  }
}

void quantize_avx2(const void* x, Elem t, int64_t n, float scale, uint8_t* dst) {
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

// 16 codes from 8 packed bytes.
inline __m128i unpack16(const uint8_t* p) {
  const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  const __m128i m = _mm_set1_epi8(0x0F);
  return _mm_unpacklo_epi8(_mm_and_si128(_mm_srli_epi16(b, 4), m), _mm_and_si128(b, m));
}

// Table lookup of 8 codes (low 8 bytes of c) in a 16-entry float table split in two halves.
inline __m256 lut8(__m128i c, __m256 tlo, __m256 thi) {
  const __m256i idx = _mm256_cvtepu8_epi32(c);
  return _mm256_blendv_ps(_mm256_permutevar8x32_ps(tlo, idx), _mm256_permutevar8x32_ps(thi, idx),
                          _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

inline uint8_t code_at(const uint8_t* packed, int64_t e) {
  const uint8_t b = packed[e >> 1];
  return (e & 1) ? nf4::lo_nibble(b) : nf4::hi_nibble(b);
}

// 16-bit results (in 32-bit lanes) of float32 -> bf16, round to nearest even, NaN truncated and
// quieted: f32_to_bf16, 8 at a time.
inline __m256i bf16_rne8(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  const __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), lsb), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  const __m256i qnan = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x0040));
  return _mm256_blendv_epi8(r, qnan, nan);
}

// The block's 16 output values T(code[c] * s) (computed 8 at a time, same roundings as the
// scalar f32_to_bf16 / f32_to_f16), stored to tab and split into low / high byte shuffle tables.
inline void tables_u16(__m256 clo, __m256 chi, float s, bool bf16, uint16_t* tab, __m128i& tl, __m128i& th) {
  const __m256 vs = _mm256_set1_ps(s);
  const __m256 a = _mm256_mul_ps(clo, vs), b = _mm256_mul_ps(chi, vs);
  __m256i p;
  if (bf16) {
    p = _mm256_permute4x64_epi64(_mm256_packus_epi32(bf16_rne8(a), bf16_rne8(b)), 0xD8);
  } else {
    const __m128i ha = _mm256_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m128i hb = _mm256_cvtps_ph(b, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    p = _mm256_inserti128_si256(_mm256_castsi128_si256(ha), hb, 1);
  }
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(tab), p);
  // per 128-bit lane: low bytes of its 8 entries, then high bytes; then gather the lanes' halves
  const __m256i split = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15, 0, 2, 4, 6, 8, 10, 12,
                                         14, 1, 3, 5, 7, 9, 11, 13, 15);
  const __m256i q = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(p, split), 0xD8);
  tl = _mm256_castsi256_si128(q);
  th = _mm256_extracti128_si256(q, 1);
}

void dequant_f32(const uint8_t* packed, int64_t e0, int64_t n, const float* scales, int64_t bs, float* dst) {
  const __m256 clo = _mm256_loadu_ps(nf4::kCodes), chi = _mm256_loadu_ps(nf4::kCodes + 8);
  alignas(32) float tab[16];
  const int64_t b0 = e0 / bs;
  for (int64_t k = 0; k < n;) {
    const int64_t b = (e0 + k) / bs;
    const int64_t end = min64(n, (b + 1) * bs - e0);
    const __m256 vs = _mm256_set1_ps(scales[b - b0]);
    const __m256 tlo = _mm256_mul_ps(clo, vs), thi = _mm256_mul_ps(chi, vs);
    _mm256_store_ps(tab, tlo);
    _mm256_store_ps(tab + 8, thi);
    if ((e0 + k) & 1) {
      dst[k] = tab[code_at(packed, e0 + k)];
      ++k;
    }
    for (; k + 32 <= end; k += 32) {
      __m128i c0, c1;
      unpack32(packed + ((e0 + k) >> 1), c0, c1);
      _mm256_storeu_ps(dst + k, lut8(c0, tlo, thi));
      _mm256_storeu_ps(dst + k + 8, lut8(_mm_srli_si128(c0, 8), tlo, thi));
      _mm256_storeu_ps(dst + k + 16, lut8(c1, tlo, thi));
      _mm256_storeu_ps(dst + k + 24, lut8(_mm_srli_si128(c1, 8), tlo, thi));
    }
    for (; k < end; ++k) dst[k] = tab[code_at(packed, e0 + k)];
  }
}

// 16-bit outputs: two 16-entry byte shuffles (vpshufb) give each output's low and high byte.
void dequant_u16(const uint8_t* packed, int64_t e0, int64_t n, const float* scales, int64_t bs, bool bf16,
                 uint16_t* dst) {
  const __m256 clo = _mm256_loadu_ps(nf4::kCodes), chi = _mm256_loadu_ps(nf4::kCodes + 8);
  alignas(32) uint16_t tab[16];
  const int64_t b0 = e0 / bs;
  for (int64_t k = 0; k < n;) {
    const int64_t b = (e0 + k) / bs;
    const int64_t end = min64(n, (b + 1) * bs - e0);
    __m128i vl, vh;
    tables_u16(clo, chi, scales[b - b0], bf16, tab, vl, vh);
    if ((e0 + k) & 1) {
      dst[k] = tab[code_at(packed, e0 + k)];
      ++k;
    }
    for (; k + 32 <= end; k += 32) {
      __m128i c0, c1;
      unpack32(packed + ((e0 + k) >> 1), c0, c1);
      const __m128i l0 = _mm_shuffle_epi8(vl, c0), h0 = _mm_shuffle_epi8(vh, c0);
      const __m128i l1 = _mm_shuffle_epi8(vl, c1), h1 = _mm_shuffle_epi8(vh, c1);
      __m128i* d = reinterpret_cast<__m128i*>(dst + k);
      _mm_storeu_si128(d + 0, _mm_unpacklo_epi8(l0, h0));
      _mm_storeu_si128(d + 1, _mm_unpackhi_epi8(l0, h0));
      _mm_storeu_si128(d + 2, _mm_unpacklo_epi8(l1, h1));
      _mm_storeu_si128(d + 3, _mm_unpackhi_epi8(l1, h1));
    }
    for (; k < end; ++k) dst[k] = tab[code_at(packed, e0 + k)];
  }
}

void dequant_avx2(const uint8_t* packed, int64_t e0, int64_t n, const float* scales, int64_t bs, void* dst, Elem t) {
  if (t == Elem::F32) return dequant_f32(packed, e0, n, scales, bs, static_cast<float*>(dst));
  dequant_u16(packed, e0, n, scales, bs, t == Elem::BF16, static_cast<uint16_t*>(dst));
}

// ---- fused small-M products ---------------------------------------------------------------------

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

template <int M>
void dot_row_t(const uint8_t* packed, int64_t e0, int64_t K, const float* scales, int64_t bs, const float* x,
               int64_t ldx, float* y) {
  const __m256 clo = _mm256_loadu_ps(nf4::kCodes), chi = _mm256_loadu_ps(nf4::kCodes + 8);
  __m256 acc[M];
  float tail[M];
  for (int m = 0; m < M; ++m) {
    acc[m] = _mm256_setzero_ps();
    tail[m] = 0.f;
  }
  const int64_t b0 = e0 / bs;
  int64_t k = 0;
  while (k < K) {
    const int64_t b = (e0 + k) / bs;
    const int64_t end = min64(K, (b + 1) * bs - e0);
    const float s = scales[b - b0];
    const __m256 vs = _mm256_set1_ps(s);
    // Table of code * scale: the float32 weights dequant would write.
    const __m256 tlo = _mm256_mul_ps(clo, vs), thi = _mm256_mul_ps(chi, vs);
    for (; k + 16 <= end; k += 16) {
      const __m128i c = unpack16(packed + ((e0 + k) >> 1));
      const __m256 w0 = lut8(c, tlo, thi), w1 = lut8(_mm_srli_si128(c, 8), tlo, thi);
      for (int m = 0; m < M; ++m) {
        acc[m] = _mm256_fmadd_ps(_mm256_loadu_ps(x + m * ldx + k), w0, acc[m]);
        acc[m] = _mm256_fmadd_ps(_mm256_loadu_ps(x + m * ldx + k + 8), w1, acc[m]);
      }
    }
    for (; k < end; ++k) {
      const float w = nf4::kCodes[code_at(packed, e0 + k)] * s;
      for (int m = 0; m < M; ++m) tail[m] += x[m * ldx + k] * w;
    }
  }
  for (int m = 0; m < M; ++m) y[m] = hsum(acc[m]) + tail[m];
}

void dot_row_avx2(const uint8_t* packed, int64_t e0, int64_t K, const float* scales, int64_t bs, const float* x,
                  int64_t ldx, int M, float* y) {
  // An odd row start splits bytes between rows: take the scalar definition.
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
  const __m256 clo = _mm256_loadu_ps(nf4::kCodes), chi = _mm256_loadu_ps(nf4::kCodes + 8);
  __m256 cf[M];
  for (int m = 0; m < M; ++m) cf[m] = _mm256_set1_ps(coef[m * ldcoef]);
  const int64_t b0 = e0 / bs;
  int64_t k = 0;
  while (k < n) {
    const int64_t b = (e0 + k) / bs;
    const int64_t end = min64(n, (b + 1) * bs - e0);
    const float s = scales[b - b0];
    const __m256 vs = _mm256_set1_ps(s);
    const __m256 tlo = _mm256_mul_ps(clo, vs), thi = _mm256_mul_ps(chi, vs);
    for (; k + 16 <= end; k += 16) {
      const __m128i c = unpack16(packed + ((e0 + k) >> 1));
      const __m256 w0 = lut8(c, tlo, thi), w1 = lut8(_mm_srli_si128(c, 8), tlo, thi);
      for (int m = 0; m < M; ++m) {
        float* a = acc + m * ldacc + k;
        _mm256_storeu_ps(a, _mm256_fmadd_ps(cf[m], w0, _mm256_loadu_ps(a)));
        _mm256_storeu_ps(a + 8, _mm256_fmadd_ps(cf[m], w1, _mm256_loadu_ps(a + 8)));
      }
    }
    for (; k < end; ++k) {
      const float w = nf4::kCodes[code_at(packed, e0 + k)] * s;
      for (int m = 0; m < M; ++m) acc[m * ldacc + k] += coef[m * ldcoef] * w;
    }
  }
}

void axpy_row_avx2(const uint8_t* packed, int64_t e0, int64_t n, const float* scales, int64_t bs, const float* coef,
                   int64_t ldcoef, int M, float* acc, int64_t ldacc) {
  if (e0 & 1) return nf4_isa_scalar().axpy_row(packed, e0, n, scales, bs, coef, ldcoef, M, acc, ldacc);
  switch (M) {
    case 1: return axpy_row_t<1>(packed, e0, n, scales, bs, coef, ldcoef, acc, ldacc);
    case 2: return axpy_row_t<2>(packed, e0, n, scales, bs, coef, ldcoef, acc, ldacc);
    case 3: return axpy_row_t<3>(packed, e0, n, scales, bs, coef, ldcoef, acc, ldacc);
    default: return axpy_row_t<4>(packed, e0, n, scales, bs, coef, ldcoef, acc, ldacc);
  }
}

void dropout_avx2(const float* x, uint64_t i0, int64_t n, uint64_t seed, uint32_t thr, float scale, float* dst,
                  bool accumulate) {
  dropout::apply(x, i0, n, seed, thr, scale, dst, accumulate);
}

}  // namespace

const Nf4Isa& nf4_isa_avx2() {
  static const Nf4Isa isa{"avx2",       absmax_avx2,   quantize_avx2, dequant_avx2,
                          dot_row_avx2, axpy_row_avx2, dropout_avx2,  skinny_detail::skinny_avx2};
  return isa;
}

}  // namespace qlora::kernels::cpu

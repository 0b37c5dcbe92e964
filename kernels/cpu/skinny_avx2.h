// The skinny product of Nf4Isa::skinny with AVX2 + FMA intrinsics: static inline only, included
// by the AVX2 and AVX-512 translation units (each compiled with its own -m flags), so no code
// built for one instruction set leaks into another file.
//
// Eight rows at a time hold one 8-wide accumulator each per 8 output columns: per k, one load of
// w's row and eight broadcasts of a, eight FMAs. Every output is one FMA chain in k order, exactly
// the scalar table's, so the bits agree with it.
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace qlora::kernels::cpu::skinny_detail {

template <int MR, bool FULL>
static inline void tile_avx2(const float* a, int64_t si, int64_t sk, int64_t len, const float* w, int64_t r,
                             __m256i mask, float alpha, float* out) {
  __m256 acc[MR];
  for (int i = 0; i < MR; ++i) acc[i] = _mm256_setzero_ps();
  for (int64_t k = 0; k < len; ++k) {
    const __m256 wv = FULL ? _mm256_loadu_ps(w + k * r) : _mm256_maskload_ps(w + k * r, mask);
    const float* ak = a + k * sk;
    for (int i = 0; i < MR; ++i) acc[i] = _mm256_fmadd_ps(_mm256_broadcast_ss(ak + i * si), wv, acc[i]);
  }
  const __m256 va = _mm256_set1_ps(alpha);
  for (int i = 0; i < MR; ++i) {
    const __m256 v = _mm256_mul_ps(acc[i], va);
    if (FULL) {
      _mm256_storeu_ps(out + i * r, v);
    } else {
      _mm256_maskstore_ps(out + i * r, mask, v);
    }
  }
}

template <bool FULL>
static inline void rows_avx2(const float* a, int64_t si, int64_t sk, int64_t rows, int64_t len, const float* w,
                             int64_t r, __m256i mask, float alpha, float* out) {
  int64_t i = 0;
  for (; i + 8 <= rows; i += 8) tile_avx2<8, FULL>(a + i * si, si, sk, len, w, r, mask, alpha, out + i * r);
  for (; i + 4 <= rows; i += 4) tile_avx2<4, FULL>(a + i * si, si, sk, len, w, r, mask, alpha, out + i * r);
  for (; i < rows; ++i) tile_avx2<1, FULL>(a + i * si, si, sk, len, w, r, mask, alpha, out + i * r);
}

static inline void skinny_avx2(const float* a, int64_t si, int64_t sk, int64_t rows, int64_t len, const float* w,
                               int64_t r, float alpha, float* out) {
  // Row blocks outside, column groups inside: a block's rows of a are re-read from cache per group.
  constexpr int64_t kRowBlock = 64;
  for (int64_t i0 = 0; i0 < rows; i0 += kRowBlock) {
    const int64_t nr = rows - i0 < kRowBlock ? rows - i0 : kRowBlock;
    for (int64_t c = 0; c < r; c += 8) {
      const int64_t nc = r - c < 8 ? r - c : 8;
      const __m256i mask =
          _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(nc)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
      if (nc == 8) {
        rows_avx2<true>(a + i0 * si, si, sk, nr, len, w + c, r, mask, alpha, out + i0 * r + c);
      } else {
        rows_avx2<false>(a + i0 * si, si, sk, nr, len, w + c, r, mask, alpha, out + i0 * r + c);
      }
    }
  }
}

}  // namespace qlora::kernels::cpu::skinny_detail

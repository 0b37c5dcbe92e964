// Scalar NF4 kernels: the definition the vector tables (avx2, avx512) must match bit for bit.
// Plain C++, no torch (compiled without the precompiled header).
#include <algorithm>
#include <cmath>

#include "kernels/cpu/float_bits.h"
#include "kernels/cpu/nf4_cpu_isa.h"
#include "kernels/dropout.h"
#include "kernels/nf4.h"

namespace qlora::kernels::cpu {

namespace {

float load_elem(const void* x, Elem t, int64_t i) {
  switch (t) {
    case Elem::F32: return static_cast<const float*>(x)[i];
    case Elem::BF16: return bf16_to_f32(static_cast<const uint16_t*>(x)[i]);
    case Elem::F16: return f16_to_f32(static_cast<const uint16_t*>(x)[i]);
  }
  return 0.f;
}

float absmax_scalar(const void* x, Elem t, int64_t n) {
  float m = 0.f;
  for (int64_t i = 0; i < n; ++i) m = std::fmax(m, std::fabs(load_elem(x, t, i)));
  return m;
}

void quantize_scalar(const void* x, Elem t, int64_t n, float scale, uint8_t* dst) {
  for (int64_t j = 0; j < n; j += 2) {
    const uint8_t c0 = nf4::quantize_scaled(load_elem(x, t, j) * scale);
    const uint8_t c1 = j + 1 < n ? nf4::quantize_scaled(load_elem(x, t, j + 1) * scale) : nf4::kPadCode;
    dst[j / 2] = static_cast<uint8_t>((c0 << 4) | c1);
  }
}

template <class T, class Conv>
void dequant_typed(const uint8_t* packed, int64_t e0, int64_t n, const float* scales, int64_t bs, T* dst, Conv conv) {
  const int64_t b0 = e0 / bs;
  for (int64_t k = 0; k < n;) {
    const int64_t b = (e0 + k) / bs;
    const int64_t end = std::min(n, (b + 1) * bs - e0);
    T tab[16];
    for (int c = 0; c < 16; ++c) tab[c] = conv(nf4::kCodes[c] * scales[b - b0]);
    for (; k < end; ++k) {
      const int64_t e = e0 + k;
      const uint8_t byte = packed[e >> 1];
      dst[k] = tab[(e & 1) ? nf4::lo_nibble(byte) : nf4::hi_nibble(byte)];
    }
  }
}

void dequant_scalar(const uint8_t* packed, int64_t e0, int64_t n, const float* scales, int64_t bs, void* dst, Elem t) {
  switch (t) {
    case Elem::F32:
      dequant_typed(packed, e0, n, scales, bs, static_cast<float*>(dst), [](float v) { return v; });
      break;
    case Elem::BF16: dequant_typed(packed, e0, n, scales, bs, static_cast<uint16_t*>(dst), f32_to_bf16); break;
    case Elem::F16: dequant_typed(packed, e0, n, scales, bs, static_cast<uint16_t*>(dst), f32_to_f16); break;
  }
}

inline float weight_at(const uint8_t* packed, int64_t e, float scale) {
  const uint8_t b = packed[e >> 1];
  return nf4::kCodes[(e & 1) ? nf4::lo_nibble(b) : nf4::hi_nibble(b)] * scale;
}

void dot_row_scalar(const uint8_t* packed, int64_t e0, int64_t K, const float* scales, int64_t bs, const float* x,
                    int64_t ldx, int M, float* y) {
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  const int64_t b0 = e0 / bs;
  for (int64_t k = 0; k < K; ++k) {
    const int64_t e = e0 + k;
    const float w = weight_at(packed, e, scales[e / bs - b0]);
    for (int m = 0; m < M; ++m) acc[m] += x[m * ldx + k] * w;
  }
  for (int m = 0; m < M; ++m) y[m] = acc[m];
}

void axpy_row_scalar(const uint8_t* packed, int64_t e0, int64_t n, const float* scales, int64_t bs, const float* coef,
                     int64_t ldcoef, int M, float* acc, int64_t ldacc) {
  const int64_t b0 = e0 / bs;
  for (int64_t k = 0; k < n; ++k) {
    const int64_t e = e0 + k;
    const float w = weight_at(packed, e, scales[e / bs - b0]);
    for (int m = 0; m < M; ++m) acc[m * ldacc + k] += coef[m * ldcoef] * w;
  }
}

void dropout_scalar(const float* x, uint64_t i0, int64_t n, uint64_t seed, uint32_t thr, float scale, float* dst,
                    bool accumulate) {
  dropout::apply(x, i0, n, seed, thr, scale, dst, accumulate);
}

void skinny_scalar(const float* a, int64_t si, int64_t sk, int64_t rows, int64_t len, const float* w, int64_t r,
                   float alpha, float* out) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t c = 0; c < r; ++c) {
      float acc = 0.f;
      for (int64_t k = 0; k < len; ++k) acc = std::fma(a[i * si + k * sk], w[k * r + c], acc);
      out[i * r + c] = acc * alpha;
    }
}

}  // namespace

const Nf4Isa& nf4_isa_scalar() {
  static const Nf4Isa isa{"scalar",       absmax_scalar,   quantize_scalar, dequant_scalar,
                          dot_row_scalar, axpy_row_scalar, dropout_scalar,  skinny_scalar};
  return isa;
}

}  // namespace qlora::kernels::cpu

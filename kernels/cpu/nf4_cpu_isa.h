// The per-instruction-set CPU kernels behind kernels/cpu/nf4_cpu.cpp (no torch in here).
//
// One table of function pointers per instruction set, each in its own translation unit compiled
// with its own -m flags (nf4_cpu_scalar.cpp, nf4_cpu_avx2.cpp, nf4_cpu_avx512.cpp); the table is
// picked once at run time from what the CPU supports (or QLORA_CPU_ISA=scalar|avx2|avx512).
// absmax, quantize and dequant are bit-identical across tables (the scalar table is the
// definition; tests compare the others with it). dot_row and axpy_row sum in another order
// (vector lanes, FMA), so they agree to float32 rounding only.
//
// Element positions are indices into the flattened weight ("element e" lives in byte e/2, high
// nibble when e is even). Scales are float32 per absmax block.
#pragma once
#include <cstdint>

namespace qlora::kernels::cpu {

// Element type of a raw buffer (the kernels see bits, not torch types).
enum class Elem : int { F32 = 0, BF16 = 1, F16 = 2 };

struct Nf4Isa {
  const char* name;

  // max |x| over x[0, n), NaN ignored (fmaxf semantics); x has element type t.
  float (*absmax)(const void* x, Elem t, int64_t n);

  // Codes of x[0, n) scaled by `scale` (code = #midpoints strictly below x*scale; NaN -> 0),
  // packed two per byte into dst[0, (n+1)/2); an odd n pads the last low nibble with code 7.
  void (*quantize)(const void* x, Elem t, int64_t n, float scale, uint8_t* dst);

  // Dequantizes elements [e0, e0+n) of the packed stream to dst[0, n) of type t:
  // T(code * scale), one rounding, with scales[j] the scale of block e0/bs + j. e0 may be odd.
  void (*dequant)(const uint8_t* packed, int64_t e0, int64_t n, const float* scales, int64_t bs, void* dst, Elem t);

  // Fused small-M product with one weight row: for m < M,
  //   y[m] = sum_{k<K} x[m*ldx + k] * (code[e0+k] * scales[(e0+k)/bs - (e0/bs)])
  // (weights dequantized to float32 exactly as `dequant` does; fp32 accumulation).
  // M <= 4 per call.
  void (*dot_row)(const uint8_t* packed, int64_t e0, int64_t K, const float* scales, int64_t bs, const float* x,
                  int64_t ldx, int M, float* y);

  // Fused small-M accumulation with one weight row segment: for m < M and k < n,
  //   acc[m*ldacc + k] += coef[m*ldcoef] * (code[e0+k] * scales[(e0+k)/bs - (e0/bs)]).
  // M <= 4 per call.
  void (*axpy_row)(const uint8_t* packed, int64_t e0, int64_t n, const float* scales, int64_t bs, const float* coef,
                   int64_t ldcoef, int M, float* acc, int64_t ldacc);

  // LoRA dropout of x[0, n), elements i0.. of one call (kernels/dropout.h: dst = x * keep * scale,
  // or dst += that). Not NF4, but it needs the same per-instruction-set build; bit-identical in
  // every table.
  void (*dropout)(const float* x, uint64_t i0, int64_t n, uint64_t seed, uint32_t thr, float scale, float* dst,
                  bool accumulate);

  // Skinny product for LoRA's rank-r factors (not NF4 either): for i < rows and c < r,
  //   out[i*r + c] = alpha * sum_{k<len} a[i*si + k*sk] * w[k*r + c]
  // with every sum one fused multiply-add at a time in k order from 0, then one multiply by
  // alpha: bit-identical in every table, and a row's result does not depend on the rows computed
  // with it (so not on how rows are split between threads).
  void (*skinny)(const float* a, int64_t si, int64_t sk, int64_t rows, int64_t len, const float* w, int64_t r,
                 float alpha, float* out);
};

const Nf4Isa& nf4_isa_scalar();
const Nf4Isa& nf4_isa_avx2();
const Nf4Isa& nf4_isa_avx512();

// Whether this CPU can run the named table ("scalar", "avx2", "avx512").
bool nf4_isa_supported(const char* name);
// The table in use: QLORA_CPU_ISA if set (and supported), else the best the CPU supports.
const Nf4Isa& nf4_isa();
// Overrides the table in use (tests); returns false if the CPU lacks it.
bool nf4_isa_select(const char* name);

}  // namespace qlora::kernels::cpu

// NF4 numerics shared by the CPU and CUDA paths (host + device helpers, no torch).
//
// Facts (bitsandbytes semantics, docs/formats.md §1):
//  - 16 codes (the NormalFloat-4 table) and the 15 midpoints between neighbours;
//  - a value x already scaled into [-1, 1] takes code = #{ i : x > midpoint[i] } (strict
//    comparisons: a value exactly on a midpoint takes the LOWER code; NaN takes code 0);
//  - two codes per byte, element 2j in the HIGH nibble;
//  - dequantize: T(code[nibble] * absmax[block]), product in float32, one rounding to T;
//  - double quantization: absmax_i = float(float(map8[q_i] * nested[i / 256]) + offset).
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define QLORA_HD __host__ __device__ __forceinline__
#else
// static: every translation unit keeps its own copy, so one compiled with -mavx512f (the ISA
// kernels in kernels/cpu/) can never lend its version to code that runs on other CPUs.
#define QLORA_HD static inline
#endif

// Exact float32 values of the NF4 code table, index 0..15.
#define QLORA_NF4_CODES                                                                               \
  -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f,    \
      -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f, \
      0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f

// Midpoints between code i and i+1 (as bitsandbytes' kernels spell them, rounded to float32).
#define QLORA_NF4_MIDPOINTS                                                                                          \
  -0.8480964004993439f, -0.6106329262256622f, -0.4599952697753906f, -0.33967943489551544f, -0.23460740596055984f,    \
      -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f, 0.1202552504837513f, 0.2035212516784668f, \
      0.2920137718319893f, 0.3893125355243683f, 0.5016634166240692f, 0.6427869200706482f, 0.8614784181118011f

namespace qlora::nf4 {

inline constexpr int kNumCodes = 16;
inline constexpr int kNestedBlocksize = 256;  // double-quantization block over absmax values
inline constexpr int kDefaultBlocksize = 64;
inline constexpr uint8_t kPadCode = 7;  // code of 0.0: pads an odd element count
// Smallest absmax used for scaling. bitsandbytes' CPU path clamps to 1e-38 before taking the
// reciprocal, so 1/absmax stays finite for tiny and all-zero blocks; we do the same (the CUDA
// path would take 1/0 = inf and turn an all-zero block into NaN -> code 0 -> -0.0). The stored
// absmax is the true max |x|, not the clamped one.
inline constexpr float kMinAbsmax = 1e-38f;

inline constexpr float kCodes[16] = {QLORA_NF4_CODES};
inline constexpr float kMidpoints[15] = {QLORA_NF4_MIDPOINTS};

// Code of a value already scaled into [-1, 1]. Written as the same comparisons bitsandbytes'
// decision tree makes (x > t, strict), so ties go to the lower code and NaN gives 0.
QLORA_HD uint8_t quantize_scaled(float x) {
  constexpr float m[15] = {QLORA_NF4_MIDPOINTS};
  uint8_t c = 0;
#if defined(__CUDACC__)
#pragma unroll
#endif
  for (int i = 0; i < 15; ++i) c += (x > m[i]) ? 1 : 0;
  return c;
}

// Multiplier that maps a block with max |x| = absmax into [-1, 1]: x * (1/absmax), the
// reciprocal first, as bitsandbytes does (CUDA: rcp, CPU: 1.0 / absmax.clamp(min=1e-38)).
// Host only (device code would get an approximate reciprocal under fast math).
static inline float block_scale(float absmax) { return 1.0f / (absmax > kMinAbsmax ? absmax : kMinAbsmax); }

// Absmax reconstructed from double-quantized statistics: two separately rounded float32
// operations, float(float(map8[q] * nested) + offset), never contracted to one FMA.
QLORA_HD float dq_absmax(float map8_q, float nested, float offset) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(__fmul_rn(map8_q, nested), offset);
#else
  // The host kernels are compiled with -ffp-contract=off (kernels/CMakeLists.txt).
  const float prod = map8_q * nested;
  return prod + offset;
#endif
}

// Packed byte -> (high, low) codes.
QLORA_HD uint8_t hi_nibble(uint8_t b) { return static_cast<uint8_t>(b >> 4); }
QLORA_HD uint8_t lo_nibble(uint8_t b) { return static_cast<uint8_t>(b & 0x0F); }

// Number of blocks for n elements.
QLORA_HD int64_t num_blocks(int64_t n, int64_t blocksize) { return (n + blocksize - 1) / blocksize; }

}  // namespace qlora::nf4

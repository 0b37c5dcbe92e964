// Bit-exact scalar conversions between float32 and the 16-bit float formats, without torch.
// They define what every vector path must produce (the ISA kernels build their per-block
// lookup tables with these), and they agree with c10::BFloat16 / c10::Half:
//  - float -> bf16: round to nearest even; NaN stays NaN with its sign and top payload bits, quiet
//    (truncation + quiet bit: what bitsandbytes' CPU kernels and AVX512-BF16 produce; c10's scalar
//    rule would give 0x7FC0, ATen's vectorized one 0xFFFF);
//  - float -> fp16: IEEE round to nearest even (subnormals, overflow to inf); NaN -> quiet NaN
//    with the sign kept (what F16C's vcvtps2ph and c10 give for the NaNs we produce).
// The functions are static so that the copies compiled into the AVX translation units stay
// private to them (no ODR sharing of code built for another instruction set).
#pragma once
#include <cstdint>
#include <cstring>

namespace qlora::kernels::cpu {

static inline uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
static inline float bits_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

static inline float bf16_to_f32(uint16_t h) { return bits_f32(static_cast<uint32_t>(h) << 16); }

static inline uint16_t f32_to_bf16(float f) {
  const uint32_t u = f32_bits(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // NaN
  return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

static inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  uint32_t man = h & 0x3FFu;
  if (exp == 0x1F) return bits_f32(sign | 0x7F800000u | (man << 13));  // inf / NaN
  if (exp != 0) return bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
  if (man == 0) return bits_f32(sign);  // +-0
  // Subnormal half: value = man * 2^-24, exactly representable in float32.
  int e = -1;
  do {
    man <<= 1;
    ++e;
  } while ((man & 0x400u) == 0);
  return bits_f32(sign | ((112u - static_cast<uint32_t>(e)) << 23) | ((man & 0x3FFu) << 13));
}

static inline uint16_t f32_to_f16(float f) {
  const uint32_t u = f32_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return static_cast<uint16_t>(sign | 0x7E00u | ((a >> 13) & 0x3FFu));  // NaN, quiet
  if (a >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);                        // rounds to >= 65520: inf
  if (a < 0x38800000u) {
    // Result is a half subnormal (or zero): value / 2^-24 rounded to nearest even.
    if (a < 0x33000000u) return sign;  // below half of the smallest subnormal: +-0
    const uint32_t e = a >> 23;        // 102..112
    const uint32_t m = (a & 0x7FFFFFu) | 0x800000u;
    const uint32_t shift = 126u - e;  // 14..24
    uint32_t r = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (r & 1u))) ++r;
    return static_cast<uint16_t>(sign | r);
  }
  // Normal: rebias the exponent, round the 13 dropped mantissa bits to nearest even
  // (a carry into the exponent is the correct result).
  const uint32_t r = a - 0x38000000u;  // exponent - 112
  const uint32_t q = (r + 0xFFFu + ((r >> 13) & 1u)) >> 13;
  return static_cast<uint16_t>(sign | q);
}

}  // namespace qlora::kernels::cpu

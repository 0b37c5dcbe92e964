// LoRA dropout's mask, counter-based (host + device helpers, no torch).
//
// Element i (contiguous order) of a dropout call with 64-bit `seed` is kept iff
//   bits(seed, i) >= threshold(p),   bits = fmix32(fmix32(lo32(i) ^ lo32(seed)) ^ hi32(i) ^ hi32(seed))
// (fmix32: MurmurHash3's finalizer, a bijection on 32 bits), and a kept element is multiplied by
// 1 / (1 - p). The mask is a pure function of (seed, i): the backward recomputes it instead of
// saving it, every thread count and device draws the same bits, and a training run draws one
// seed per dropout call from its generator (so checkpoints store just that generator's state).
#pragma once
#include <cstdint>

#include "kernels/nf4.h"  // QLORA_HD

namespace qlora::dropout {

QLORA_HD uint32_t fmix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  h ^= h >> 16;
  return h;
}

QLORA_HD uint32_t bits(uint64_t seed, uint64_t i) {
  const uint32_t h = fmix32(static_cast<uint32_t>(i) ^ static_cast<uint32_t>(seed));
  return fmix32(h ^ static_cast<uint32_t>(i >> 32) ^ static_cast<uint32_t>(seed >> 32));
}

// Elements whose bits fall below the threshold are dropped: round(p * 2^32), at most 2^32 - 1.
QLORA_HD uint32_t threshold(double p) {
  if (!(p > 0.0)) return 0;
  const double t = p * 4294967296.0 + 0.5;
  return t >= 4294967295.0 ? 0xFFFFFFFFu : static_cast<uint32_t>(t);
}

// x * scale where keep_bits is all ones, +0.0f where it is zero (bit ops, no branch).
QLORA_HD float masked(float v, uint32_t keep_bits) {
  uint32_t u;
  __builtin_memcpy(&u, &v, 4);
  u &= keep_bits;
  __builtin_memcpy(&v, &u, 4);
  return v;
}

// dst[j] = x[j] * scale if element i0 + j is kept, else +0; with accumulate, dst[j] += that.
// The one definition of the CPU result: each instruction-set table compiles this loop with its
// own flags (static inline: no copy leaks between them), and the compiler vectorizes it (the
// keep test is a bit mask, not a branch). The products and sums are single float32 operations
// (no FMA: the kernels build with -ffp-contract=off), so every table gives the same bits.
QLORA_HD void apply(const float* x, uint64_t i0, int64_t n, uint64_t seed, uint32_t thr, float scale, float* dst,
                    bool accumulate) {
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  int64_t j = 0;
  while (j < n) {
    // A run of elements sharing the high half of the index (the inner loops are pure 32-bit).
    const uint64_t i = i0 + static_cast<uint64_t>(j);
    const uint32_t hi = static_cast<uint32_t>(i >> 32) ^ k1;
    const uint32_t lo0 = static_cast<uint32_t>(i);
    const uint64_t room = uint64_t{0x100000000} - lo0;
    const uint64_t left = static_cast<uint64_t>(n - j);
    const uint32_t len = static_cast<uint32_t>(room < left ? room : left);  // room == 2^32 only if left < 2^32
    const float* xs = x + j;
    float* ds = dst + j;
    if (accumulate) {
      for (uint32_t t = 0; t < len; ++t) {
        const uint32_t keep = 0u - static_cast<uint32_t>(fmix32(fmix32((lo0 + t) ^ k0) ^ hi) >= thr);
        ds[t] = ds[t] + masked(xs[t] * scale, keep);
      }
    } else {
      for (uint32_t t = 0; t < len; ++t) {
        const uint32_t keep = 0u - static_cast<uint32_t>(fmix32(fmix32((lo0 + t) ^ k0) ^ hi) >= thr);
        ds[t] = masked(xs[t] * scale, keep);
      }
    }
    j += len;
  }
}

}  // namespace qlora::dropout

// CPU NF4: quantize, dequantize, and the linear ops.
// Reference implementation: scalar loops parallelized over blocks. Numerics follow nf4.h.
#include "kernels/cpu/nf4_cpu.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

#include "kernels/nf4.h"

namespace qlora::kernels::cpu {

namespace {

// max |x| over [p, p+n), NaN ignored like fmaxf.
float block_absmax(const float* p, int64_t n) {
  float m = 0.f;
  for (int64_t i = 0; i < n; ++i) m = std::fmax(m, std::fabs(p[i]));
  return m;
}

// Nearest entry of a sorted 256-entry map; ties go to the lower index. NaN -> index of 0.0
// would be arbitrary, so NaN maps to the entry nearest 0.
uint8_t nearest_code8(const float* map, float x) {
  if (std::isnan(x)) x = 0.f;
  const float* hi = std::lower_bound(map, map + 256, x);
  if (hi == map) return 0;
  if (hi == map + 256) return 255;
  const float* lo = hi - 1;
  // x in (lo, hi]: pick the nearer, ties to lo.
  return static_cast<uint8_t>((std::fabs(*hi - x) < std::fabs(x - *lo)) ? (hi - map) : (lo - map));
}

}  // namespace

NF4Tensor nf4_quantize_cpu(const at::Tensor& w_in, int64_t blocksize, bool double_quant) {
  TORCH_CHECK(w_in.is_floating_point(), "nf4_quantize: expected a floating tensor");
  TORCH_CHECK(blocksize >= 32 && blocksize <= 4096 && (blocksize & (blocksize - 1)) == 0,
              "nf4_quantize: blocksize must be a power of two in [32, 4096], got ", blocksize);
  at::Tensor w = w_in.detach().to(at::kFloat).contiguous().view(-1);
  const int64_t n = w.numel();
  const int64_t nb = nf4::num_blocks(n, blocksize);
  NF4Tensor out;
  out.blocksize = blocksize;
  out.shape = w_in.sizes().vec();
  out.dtype = w_in.scalar_type();
  out.packed = at::zeros({(n + 1) / 2}, at::kByte);
  at::Tensor absmax = at::empty({nb}, at::kFloat);
  const float* src = w.data_ptr<float>();
  uint8_t* dst = out.packed.data_ptr<uint8_t>();
  float* am = absmax.data_ptr<float>();
  // blocksize is even, so a block never splits a byte.
  at::parallel_for(0, nb, 16, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t i0 = b * blocksize;
      const int64_t len = std::min(blocksize, n - i0);
      const float m = block_absmax(src + i0, len);
      am[b] = m;
      // All-zero block: bitsandbytes' CUDA path gets 0*inf = NaN -> code 0 (-0.0); we take
      // scale 0 -> every element code 7 (+0.0), as bitsandbytes' CPU path does.
      const float scale = m > 0.f ? 1.0f / m : 0.f;
      for (int64_t j = 0; j < len; j += 2) {
        uint8_t c0 = nf4::quantize_scaled(src[i0 + j] * scale);
        uint8_t c1 = (j + 1 < len) ? nf4::quantize_scaled(src[i0 + j + 1] * scale) : 7;  // pad: 0.0
        dst[(i0 + j) / 2] = static_cast<uint8_t>((c0 << 4) | c1);
      }
    }
  });
  if (!double_quant) {
    out.absmax = absmax;
    return out;
  }
  // Double quantization of absmax: subtract the mean, 8-bit blockwise with the signed map.
  out.nested_offset = absmax.mean().item<float>();
  at::Tensor centered = absmax - out.nested_offset;
  at::Tensor nested;
  out.absmax = quantize_blockwise_8bit_cpu(centered, dynamic_map(true), nf4::kNestedBlocksize, nested);
  out.nested_absmax = nested;
  return out;
}

at::Tensor nf4_absmax_cpu(const NF4Tensor& w) {
  if (!w.double_quant()) return w.absmax.to(at::kFloat);
  const int64_t nb = w.nblocks();
  at::Tensor map = dynamic_map(true);
  const float* m8 = map.data_ptr<float>();
  at::Tensor q = w.absmax.contiguous();
  at::Tensor nested = w.nested_absmax.to(at::kFloat).contiguous();
  const uint8_t* qp = q.data_ptr<uint8_t>();
  const float* np = nested.data_ptr<float>();
  at::Tensor out = at::empty({nb}, at::kFloat);
  float* op = out.data_ptr<float>();
  const float off = w.nested_offset;
  for (int64_t i = 0; i < nb; ++i) {
    // Two separately rounded float32 operations (no FMA contraction).
    volatile float prod = m8[qp[i]] * np[i / nf4::kNestedBlocksize];
    op[i] = prod + off;
  }
  return out;
}

at::Tensor nf4_dequantize_cpu(const NF4Tensor& w, at::ScalarType dtype) {
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
              "nf4_dequantize: dtype must be float32, bfloat16 or float16");
  const int64_t n = w.numel();
  at::Tensor absmax = nf4_absmax_cpu(w);
  at::Tensor out32 = at::empty({n}, at::kFloat);
  const uint8_t* src = w.packed.data_ptr<uint8_t>();
  const float* am = absmax.data_ptr<float>();
  float* dst = out32.data_ptr<float>();
  const int64_t bs = w.blocksize;
  at::parallel_for(0, w.nblocks(), 16, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const float s = am[b];
      const int64_t i0 = b * bs, i1 = std::min(n, i0 + bs);
      for (int64_t i = i0; i < i1; ++i) {
        uint8_t byte = src[i / 2];
        uint8_t c = (i & 1) ? nf4::lo_nibble(byte) : nf4::hi_nibble(byte);
        dst[i] = nf4::kCodes[c] * s;
      }
    }
  });
  // One rounding from the float32 product to the target type.
  return out32.to(dtype).view(w.shape);
}

at::Tensor nf4_linear_cpu(const at::Tensor& x, const NF4Tensor& w) {
  TORCH_CHECK(w.shape.size() == 2, "nf4_linear: weight must be 2-D");
  TORCH_CHECK(x.size(-1) == w.shape[1], "nf4_linear: x has ", x.size(-1), " features, weight expects ", w.shape[1]);
  at::Tensor W = nf4_dequantize_cpu(w, at::kFloat);
  return at::matmul(x.to(at::kFloat), W.t()).to(x.scalar_type());
}

at::Tensor nf4_linear_grad_input_cpu(const at::Tensor& dy, const NF4Tensor& w) {
  TORCH_CHECK(w.shape.size() == 2, "nf4_linear_grad_input: weight must be 2-D");
  TORCH_CHECK(dy.size(-1) == w.shape[0], "nf4_linear_grad_input: dy has ", dy.size(-1), " features, weight has ", w.shape[0], " rows");
  at::Tensor W = nf4_dequantize_cpu(w, at::kFloat);
  return at::matmul(dy.to(at::kFloat), W).to(dy.scalar_type());
}

at::Tensor quantize_blockwise_8bit_cpu(const at::Tensor& x_in, const at::Tensor& map_in, int64_t blocksize,
                                   at::Tensor& absmax_out) {
  at::Tensor x = x_in.detach().to(at::kFloat).contiguous().view(-1);
  at::Tensor map = map_in.to(at::kFloat).contiguous();
  TORCH_CHECK(map.numel() == 256, "quantize_blockwise_8bit: map must have 256 entries");
  const int64_t n = x.numel();
  const int64_t nb = nf4::num_blocks(n, blocksize);
  at::Tensor codes = at::empty({n}, at::kByte);
  absmax_out = at::empty({nb}, at::kFloat);
  const float* xp = x.data_ptr<float>();
  const float* mp = map.data_ptr<float>();
  uint8_t* cp = codes.data_ptr<uint8_t>();
  float* ap = absmax_out.data_ptr<float>();
  at::parallel_for(0, nb, 4, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t i0 = b * blocksize, len = std::min(blocksize, n - i0);
      const float m = block_absmax(xp + i0, len);
      ap[b] = m;
      const float scale = m > 0.f ? 1.0f / m : 0.f;
      for (int64_t i = 0; i < len; ++i) cp[i0 + i] = nearest_code8(mp, xp[i0 + i] * scale);
    }
  });
  return codes;
}

at::Tensor dequantize_blockwise_8bit_cpu(const at::Tensor& codes_in, const at::Tensor& map_in,
                                     const at::Tensor& absmax_in, int64_t blocksize) {
  at::Tensor codes = codes_in.contiguous().view(-1);
  at::Tensor map = map_in.to(at::kFloat).contiguous();
  at::Tensor absmax = absmax_in.to(at::kFloat).contiguous();
  const int64_t n = codes.numel();
  at::Tensor out = at::empty({n}, at::kFloat);
  const uint8_t* cp = codes.data_ptr<uint8_t>();
  const float* mp = map.data_ptr<float>();
  const float* ap = absmax.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, n, 4096, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) op[i] = mp[cp[i]] * ap[i / blocksize];
  });
  return out;
}

}  // namespace qlora::kernels::cpu

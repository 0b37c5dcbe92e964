// CPU NF4: quantize, dequantize and the linear ops (the CPU twins of the CUDA kernels).
//
// This file holds the orchestration (threads via at::parallel_for, blocks, panels); the inner
// loops live in the instruction-set tables of nf4_cpu_isa.h (scalar / AVX2 / AVX-512, picked at
// run time). Numerics follow kernels/nf4.h; deliberate differences from bitsandbytes are listed
// in kernels/README.md.
#include "kernels/cpu/nf4_cpu.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/nf4_cpu_isa.h"
#include "kernels/dropout.h"
#include "kernels/nf4.h"

namespace qlora::kernels::cpu {

namespace {

// Work per parallel chunk: enough elements that the fork/join cost stays small.
constexpr int64_t kGrainElems = 1 << 15;
// fp32 panel of dequantized weights per thread in the tiled linear ops (stays in L3; large enough
// that BLAS's repacking of the activations per panel is a few percent). Measured 1-4 MB alike.
constexpr int64_t kPanelBytes = 2 << 20;
// Up to this many rows of x the linear ops use the fused kernels (decode the 4-bit weights in
// registers, never write them out); above it, dequantized panels + sgemm. Measured on the
// 2-core EPYC: fused is well ahead for M <= 8 and even with the tiled path at 16 (forward) or
// ahead (backward); the same limit as the CUDA small-M kernels.
constexpr int64_t kFusedMaxRows = 16;

Elem elem_of(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return Elem::F32;
    case at::kBFloat16: return Elem::BF16;
    case at::kHalf: return Elem::F16;
    default: TORCH_CHECK(false, "NF4: expected float32, bfloat16 or float16, got ", t);
  }
}

// Raw view of an NF4Tensor's buffers, validated once, with the per-block scale.
struct Nf4View {
  const uint8_t* packed = nullptr;
  const float* absmax = nullptr;     // plain statistics
  const uint8_t* qabsmax = nullptr;  // double-quantized statistics
  const float* nested = nullptr;
  const float* map8 = nullptr;
  float offset = 0.f;
  int64_t bs = 64;
  int64_t n = 0;
  at::Tensor keep_nested, keep_map;  // owners of converted buffers

  explicit Nf4View(const NF4Tensor& w) {
    n = w.numel();
    bs = w.blocksize;
    TORCH_CHECK(bs >= 2 && bs % 2 == 0, "NF4: blocksize must be even, got ", bs);
    TORCH_CHECK(w.packed.defined() && w.packed.is_cpu() && w.packed.scalar_type() == at::kByte &&
                    w.packed.is_contiguous() && w.packed.numel() == (n + 1) / 2,
                "NF4: packed must be contiguous uint8 with ", (n + 1) / 2, " bytes for ", n, " elements");
    packed = w.packed.data_ptr<uint8_t>();
    const int64_t nb = w.nblocks();
    TORCH_CHECK(w.absmax.defined() && w.absmax.is_contiguous() && w.absmax.numel() == nb,
                "NF4: absmax must be contiguous with ", nb, " entries");
    if (w.double_quant()) {
      TORCH_CHECK(w.absmax.scalar_type() == at::kByte, "NF4: double-quantized absmax must be uint8");
      keep_nested = w.nested_absmax.to(at::kFloat).contiguous();
      TORCH_CHECK(keep_nested.numel() == nf4::num_blocks(nb, nf4::kNestedBlocksize),
                  "NF4: nested_absmax must have ceil(nblocks/256) entries");
      keep_map = dynamic_map(true);
      qabsmax = w.absmax.data_ptr<uint8_t>();
      nested = keep_nested.data_ptr<float>();
      map8 = keep_map.data_ptr<float>();
      offset = w.nested_offset;
    } else {
      TORCH_CHECK(w.absmax.scalar_type() == at::kFloat, "NF4: absmax must be float32 without double quantization");
      absmax = w.absmax.data_ptr<float>();
    }
  }

  float scale(int64_t b) const {
    if (qabsmax) return nf4::dq_absmax(map8[qabsmax[b]], nested[b / nf4::kNestedBlocksize], offset);
    return absmax[b];
  }

  // Scales of the blocks covering elements [e0, e0+len) into out (out[0] = block of e0).
  void scales(int64_t e0, int64_t len, float* out) const {
    const int64_t b0 = e0 / bs, b1 = (e0 + len - 1) / bs;
    for (int64_t b = b0; b <= b1; ++b) out[b - b0] = scale(b);
  }

  // Dequantizes elements [e0, e0+len) into dst (type t): scales of up to 256 blocks at a time
  // into a stack buffer, one kernel call per batch.
  void dequant(const Nf4Isa& isa, int64_t e0, int64_t len, char* dst, Elem t) const {
    constexpr int64_t kBatchBlocks = 256;
    const int64_t esize = t == Elem::F32 ? 4 : 2;
    const int64_t e1 = e0 + len;
    float sc[kBatchBlocks];
    for (int64_t e = e0; e < e1;) {
      const int64_t end = std::min(e1, (e / bs + kBatchBlocks) * bs);
      scales(e, end - e, sc);
      isa.dequant(packed, e, end - e, sc, bs, dst + (e - e0) * esize, t);
      e = end;
    }
  }
};

// Exact nearest entry of a sorted 256-entry map (distances in double, exact for float inputs);
// ties go to the lower index. NaN maps to the entry nearest 0.
uint8_t nearest_code8(const float* map, float xf) {
  if (std::isnan(xf)) xf = 0.f;
  const double x = xf;
  const float* hi = std::lower_bound(map, map + 256, xf);
  if (hi == map) return 0;
  if (hi == map + 256) return 255;
  const float* lo = hi - 1;
  return static_cast<uint8_t>(((double)*hi - x) < (x - (double)*lo) ? (hi - map) : (lo - map));
}

}  // namespace

NF4Tensor nf4_quantize_cpu(const at::Tensor& w_in, int64_t blocksize, bool double_quant) {
  TORCH_CHECK(w_in.is_floating_point(), "nf4_quantize: expected a floating tensor");
  TORCH_CHECK(blocksize >= 32 && blocksize <= 4096 && (blocksize & (blocksize - 1)) == 0,
              "nf4_quantize: blocksize must be a power of two in [32, 4096], got ", blocksize);
  at::Tensor w = w_in.detach();
  if (w.scalar_type() != at::kFloat && w.scalar_type() != at::kBFloat16 && w.scalar_type() != at::kHalf)
    w = w.to(at::kFloat);
  w = w.contiguous();
  const Elem t = elem_of(w.scalar_type());
  const int64_t esize = w.element_size();
  const int64_t n = w.numel();
  const int64_t nb = nf4::num_blocks(n, blocksize);
  NF4Tensor out;
  out.blocksize = blocksize;
  out.shape = w_in.sizes().vec();
  out.dtype = w_in.scalar_type();
  out.packed = at::empty({(n + 1) / 2}, at::kByte);
  at::Tensor absmax = at::empty({nb}, at::kFloat);
  const char* src = static_cast<const char*>(w.data_ptr());
  uint8_t* dst = out.packed.data_ptr<uint8_t>();
  float* am = absmax.data_ptr<float>();
  const Nf4Isa& isa = nf4_isa();
  // blocksize is even, so a block never splits a byte.
  at::parallel_for(0, nb, std::max<int64_t>(1, kGrainElems / blocksize), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t i0 = b * blocksize;
      const int64_t len = std::min(blocksize, n - i0);
      const float m = isa.absmax(src + i0 * esize, t, len);
      am[b] = m;
      isa.quantize(src + i0 * esize, t, len, nf4::block_scale(m), dst + i0 / 2);
    }
  });
  if (!double_quant) {
    out.absmax = absmax;
    return out;
  }
  // Double quantization of absmax (bitsandbytes' compress_statistics): subtract the mean (float32,
  // torch's own reduction, as bitsandbytes computes it), then 8-bit blockwise with the signed map.
  at::Tensor offset = absmax.mean();
  out.nested_offset = offset.item<float>();
  at::Tensor nested;
  out.absmax = quantize_blockwise_8bit_cpu(absmax - offset, dynamic_map(true), nf4::kNestedBlocksize, nested);
  out.nested_absmax = nested;
  return out;
}

at::Tensor nf4_absmax_cpu(const NF4Tensor& w) {
  Nf4View v(w);
  const int64_t nb = w.nblocks();
  at::Tensor out = at::empty({nb}, at::kFloat);
  float* op = out.data_ptr<float>();
  at::parallel_for(0, nb, kGrainElems, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) op[b] = v.scale(b);
  });
  return out;
}

at::Tensor nf4_dequantize_cpu(const NF4Tensor& w, at::ScalarType dtype) {
  elem_of(dtype);  // checks the type before allocating
  at::Tensor out = at::empty(w.shape, at::TensorOptions().dtype(dtype));
  nf4_dequantize_into_cpu(w, out);
  return out;
}

at::Tensor nf4_row_sq_norms_cpu(const NF4Tensor& w) {
  TORCH_CHECK(!w.shape.empty() && w.shape.back() > 0, "nf4_row_sq_norms: the weight needs a non-empty last dimension");
  Nf4View v(w);
  const int64_t cols = w.shape.back(), rows = v.n / cols;
  at::Tensor out = at::empty({rows}, at::kFloat);
  float* o = out.data_ptr<float>();
  const Nf4Isa& isa = nf4_isa();
  at::parallel_for(0, rows, std::max<int64_t>(1, kGrainElems / cols), [&](int64_t r0, int64_t r1) {
    std::vector<float> row(static_cast<size_t>(cols));
    for (int64_t r = r0; r < r1; ++r) {
      v.dequant(isa, r * cols, cols, reinterpret_cast<char*>(row.data()), Elem::F32);
      double acc = 0;
      for (const float x : row) acc += static_cast<double>(x) * x;
      o[r] = static_cast<float>(acc);
    }
  });
  return out;
}

void nf4_dequantize_into_cpu(const NF4Tensor& w, at::Tensor& out) {
  const Elem t = elem_of(out.scalar_type());
  TORCH_CHECK(out.is_cpu() && out.is_contiguous() && out.numel() == w.numel(),
              "nf4_dequantize_into: out must be a contiguous CPU tensor with ", w.numel(), " elements");
  Nf4View v(w);
  char* dst = static_cast<char*>(out.data_ptr());
  const int64_t esize = out.element_size();
  const Nf4Isa& isa = nf4_isa();
  const int64_t bs = w.blocksize, n = v.n;
  at::parallel_for(0, w.nblocks(), std::max<int64_t>(1, kGrainElems / bs), [&](int64_t b0, int64_t b1) {
    const int64_t e0 = b0 * bs, e1 = std::min(n, b1 * bs);
    v.dequant(isa, e0, e1 - e0, dst + e0 * esize, t);
  });
}

namespace {

void check_linear_weight(const NF4Tensor& w, const char* op) {
  TORCH_CHECK(w.shape.size() == 2, op, ": weight must be 2-D [out, in], got ", w.shape.size(), " dims");
}

// x as a contiguous float32 matrix [M, cols], detached: the BLAS calls below run on OpenMP worker
// threads, where grad mode is not inherited from the caller (a custom autograd Function's forward
// runs with it off only on the calling thread), and out= ops refuse inputs that require grad.
at::Tensor as_f32_matrix(const at::Tensor& x, int64_t cols) {
  return x.detach().reshape({-1, cols}).to(at::kFloat).contiguous();
}

std::vector<int64_t> out_shape(const at::Tensor& x, int64_t last) {
  std::vector<int64_t> s = x.sizes().vec();
  s.back() = last;
  return s;
}

// Dequantizes W[r0:r1, c0:c1] (row-major W with `cols` columns) to float32 dst with leading
// dimension ld, on the calling thread.
void dequant_tile(const Nf4View& v, const Nf4Isa& isa, int64_t cols, int64_t r0, int64_t r1, int64_t c0, int64_t c1,
                  float* dst, int64_t ld) {
  for (int64_t r = r0; r < r1; ++r)
    v.dequant(isa, r * cols + c0, c1 - c0, reinterpret_cast<char*>(dst + (r - r0) * ld), Elem::F32);
}

}  // namespace

at::Tensor nf4_linear_cpu(const at::Tensor& x, const NF4Tensor& w) {
  check_linear_weight(w, "nf4_linear");
  const int64_t N = w.shape[0], K = w.shape[1];
  TORCH_CHECK(x.size(-1) == K, "nf4_linear: x has ", x.size(-1), " features, weight expects ", K);
  Nf4View v(w);
  const Nf4Isa& isa = nf4_isa();
  at::Tensor xf = as_f32_matrix(x, K);
  const int64_t M = xf.size(0);
  at::Tensor y = at::empty({M, N}, at::kFloat);
  if (M == 0 || N == 0) return y.to(x.scalar_type()).view(out_shape(x, N));
  if (K == 0) return y.zero_().to(x.scalar_type()).view(out_shape(x, N));
  const float* xp = xf.data_ptr<float>();
  float* yp = y.data_ptr<float>();

  if (M <= kFusedMaxRows) {
    // Fused: each weight row is decoded in registers once per group of <= 4 rows of x.
    at::parallel_for(0, N, std::max<int64_t>(1, kGrainElems / K), [&](int64_t n0, int64_t n1) {
      std::vector<float> sc(K / v.bs + 2);
      float acc[4];
      for (int64_t n = n0; n < n1; ++n) {
        v.scales(n * K, K, sc.data());
        for (int64_t m0 = 0; m0 < M; m0 += 4) {
          const int mc = static_cast<int>(std::min<int64_t>(4, M - m0));
          isa.dot_row(v.packed, n * K, K, sc.data(), v.bs, xp + m0 * K, K, mc, acc);
          for (int i = 0; i < mc; ++i) yp[(m0 + i) * N + n] = acc[i];
        }
      }
    });
  } else {
    // Tiled, in ONE parallel region: each task owns a range of W's rows (y's columns), dequantizes
    // it panel by panel into its own fp32 buffer and multiplies with BLAS, which runs
    // single-threaded nested in the region: y[:, n0:n1] = x @ panel^T. One fork/join per call
    // (no barrier between the dequantize and GEMM steps; robust when cores are shared).
    const int64_t tasks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), N / 16));
    at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t r0 = N * t / tasks, r1 = N * (t + 1) / tasks;
        const int64_t np = std::clamp<int64_t>(kPanelBytes / (4 * K) / 16 * 16, 16, r1 - r0);
        at::Tensor panel = at::empty({np, K}, at::kFloat);
        for (int64_t n0 = r0; n0 < r1; n0 += np) {
          const int64_t rows = std::min(np, r1 - n0);
          dequant_tile(v, isa, K, n0, n0 + rows, 0, K, panel.data_ptr<float>(), K);
          at::Tensor yv = y.narrow(1, n0, rows);  // strides (N, 1): BLAS writes it in place
          at::mm_out(yv, xf, panel.narrow(0, 0, rows).t());
        }
      }
    });
  }
  return y.to(x.scalar_type()).view(out_shape(x, N));
}

at::Tensor nf4_linear_grad_input_cpu(const at::Tensor& dy, const NF4Tensor& w) {
  check_linear_weight(w, "nf4_linear_grad_input");
  const int64_t N = w.shape[0], K = w.shape[1];
  TORCH_CHECK(dy.size(-1) == N, "nf4_linear_grad_input: dy has ", dy.size(-1), " features, weight has ", N, " rows");
  Nf4View v(w);
  const Nf4Isa& isa = nf4_isa();
  at::Tensor gf = as_f32_matrix(dy, N);
  const int64_t M = gf.size(0);
  at::Tensor dx = at::zeros({M, K}, at::kFloat);
  if (M == 0 || K == 0 || N == 0) return dx.to(dy.scalar_type()).view(out_shape(dy, K));
  const float* gp = gf.data_ptr<float>();
  float* dxp = dx.data_ptr<float>();

  if (M <= kFusedMaxRows) {
    // Fused: threads own column ranges of dx and sweep all weight rows, dx[:, cols] += dy[:, n] W[n, cols].
    const int64_t cw = std::max<int64_t>(256, (K / std::max(1, at::get_num_threads()) + 255) / 256 * 256);
    const int64_t nchunks = (K + cw - 1) / cw;
    at::parallel_for(0, nchunks, 1, [&](int64_t q0, int64_t q1) {
      std::vector<float> sc(cw / v.bs + 2);
      for (int64_t q = q0; q < q1; ++q) {
        const int64_t c0 = q * cw, len = std::min(cw, K - c0);
        for (int64_t n = 0; n < N; ++n) {
          v.scales(n * K + c0, len, sc.data());
          for (int64_t m0 = 0; m0 < M; m0 += 4) {
            const int mc = static_cast<int>(std::min<int64_t>(4, M - m0));
            isa.axpy_row(v.packed, n * K + c0, len, sc.data(), v.bs, gp + m0 * N + n, N, mc, dxp + m0 * K + c0, K);
          }
        }
      }
    });
  } else {
    // Tiled, in ONE parallel region: each task owns a range of dx's columns [c0, c1) and sweeps
    // W's rows panel by panel: dequantize W[n0:n1, c0:c1] into its own fp32 buffer, then
    // dx[:, c0:c1] += dy[:, n0:n1] @ tile (single-threaded BLAS nested in the region). Each GEMM
    // packs only its slice of dy; each task's slice of dx stays in cache.
    const int64_t tasks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), K / 32));
    at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        // column ranges on 32-element boundaries (whole vector steps, blocks when K % bs == 0)
        const int64_t c0 = t == 0 ? 0 : (K * t / tasks) / 32 * 32;
        const int64_t c1 = t + 1 == tasks ? K : (K * (t + 1) / tasks) / 32 * 32;
        const int64_t kw = c1 - c0;
        if (kw <= 0) continue;
        const int64_t np = std::clamp<int64_t>(kPanelBytes / (4 * kw) / 16 * 16, 16, N);
        at::Tensor tile = at::empty({np, kw}, at::kFloat);
        at::Tensor dxv = dx.narrow(1, c0, kw);
        for (int64_t n0 = 0; n0 < N; n0 += np) {
          const int64_t rows = std::min(np, N - n0);
          dequant_tile(v, isa, K, n0, n0 + rows, c0, c1, tile.data_ptr<float>(), kw);
          dxv.addmm_(gf.narrow(1, n0, rows), tile.narrow(0, 0, rows));
        }
      }
    });
  }
  return dx.to(dy.scalar_type()).view(out_shape(dy, K));
}

void hashed_dropout_cpu(const at::Tensor& x, double p, uint64_t seed, at::Tensor& dst, bool accumulate) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && dst.scalar_type() == at::kFloat && x.is_contiguous() &&
                  dst.is_contiguous() && x.numel() == dst.numel(),
              "hashed_dropout_cpu: expected contiguous float32 x and dst of the same size");
  const Nf4Isa& isa = nf4_isa();
  const uint32_t thr = dropout::threshold(p);
  const float scale = static_cast<float>(1.0 / (1.0 - p));
  const float* xp = x.data_ptr<float>();
  float* dp = dst.data_ptr<float>();
  at::parallel_for(0, x.numel(), kGrainElems, [&](int64_t a, int64_t b) {
    isa.dropout(xp + a, static_cast<uint64_t>(a), b - a, seed, thr, scale, dp + a, accumulate);
  });
}

at::Tensor skinny_mm_cpu(const at::Tensor& x, const at::Tensor& w_in, double alpha) {
  TORCH_CHECK(x.dim() == 2 && w_in.dim() == 2 && x.size(1) == w_in.size(0) && x.scalar_type() == at::kFloat &&
                  w_in.scalar_type() == at::kFloat && x.is_cpu() && w_in.is_cpu(),
              "skinny_mm_cpu: expected float32 CPU matrices x [rows, len] and w [len, r]");
  const at::Tensor w = w_in.contiguous();
  const int64_t rows = x.size(0), len = x.size(1), r = w.size(1);
  at::Tensor out = at::empty({rows, r}, at::kFloat);
  if (rows == 0 || r == 0) return out;
  if (len == 0) return out.zero_();
  // x's own strides (a transposed view reads x^T without a copy).
  const int64_t si = x.stride(0), sk = x.stride(1);
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const float a = static_cast<float>(alpha);
  const Nf4Isa& isa = nf4_isa();
  // Blocks of 8 rows (the kernels' row group); enough of them per task that fork/join stays small.
  const int64_t blocks = (rows + 7) / 8;
  const int64_t grain = std::max<int64_t>(1, kGrainElems / (8 * std::max<int64_t>(len, 1)));
  at::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
    const int64_t i0 = b0 * 8, i1 = std::min(rows, b1 * 8);
    isa.skinny(xp + i0 * si, si, sk, i1 - i0, len, wp, r, a, op + i0 * r);
  });
  return out;
}

at::Tensor quantize_blockwise_8bit_cpu(const at::Tensor& x_in, const at::Tensor& map_in, int64_t blocksize,
                                       at::Tensor& absmax_out) {
  TORCH_CHECK(blocksize > 0, "quantize_blockwise_8bit: blocksize must be positive");
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
  const Nf4Isa& isa = nf4_isa();
  at::parallel_for(0, nb, std::max<int64_t>(1, kGrainElems / blocksize), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t i0 = b * blocksize, len = std::min(blocksize, n - i0);
      const float m = isa.absmax(xp + i0, Elem::F32, len);
      ap[b] = m;
      // x * (1/absmax) like the CUDA kernel (bitsandbytes' CPU path divides instead).
      const float scale = nf4::block_scale(m);
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
  TORCH_CHECK(absmax.numel() == nf4::num_blocks(n, blocksize), "dequantize_blockwise_8bit: absmax size mismatch");
  at::Tensor out = at::empty({n}, at::kFloat);
  const uint8_t* cp = codes.data_ptr<uint8_t>();
  const float* mp = map.data_ptr<float>();
  const float* ap = absmax.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, n, kGrainElems, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) op[i] = mp[cp[i]] * ap[i / blocksize];
  });
  return out;
}

}  // namespace qlora::kernels::cpu

// CPU AdamW (fp32 and 8-bit blockwise state): the definition of "correct" for the CUDA kernels.
// Scalar loops over kernels/adamw_math.h, parallel over elements (fp32) or 256-element blocks
// (8-bit). Each element's result depends only on its own inputs, so any split of the work (threads,
// pages) gives the same bits. An AVX2+FMA build of the same loop is picked at run time: fmaf is
// then one instruction instead of a libm call; the rounding is identical.
#include "kernels/cpu/adamw_cpu.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>

namespace qlora::kernels::cpu {

namespace {

using adamw::Hyper;
using adamw::kBlock8bit;

struct NoOut {};

template <class T>
inline float load(const T* p, int64_t i) {
  return static_cast<float>(p[i]);
}

template <class O>
inline void store(O* o, int64_t i, float v) {
  o[i] = static_cast<O>(v);  // c10::BFloat16 / c10::Half round to nearest even, like the GPU
}
template <>
inline void store<NoOut>(NoOut*, int64_t, float) {}

template <class G, class O>
[[gnu::always_inline]] inline void fp32_range(const Hyper& h, float* p, float* m, float* v, const G* g, O* out,
                                              int64_t i0, int64_t i1) {
  for (int64_t i = i0; i < i1; ++i) {
    float pi = p[i], mi = m[i], vi = v[i];
    adamw::update(h, load(g, i), pi, mi, vi);
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
    store(out, i, pi);
  }
}

// One 256-element block (len <= 256) of 8-bit state starting at element i0; b is its block index.
template <class G, class O>
[[gnu::always_inline]] inline void block8_range(const Hyper& h, float* p, uint8_t* mc, uint8_t* vc, float* am,
                                                float* av, const G* g, O* out, const float* map_m, const float* map_v,
                                                int64_t n, int64_t b0, int64_t b1) {
  float ms[kBlock8bit], vs[kBlock8bit];
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t i0 = b * kBlock8bit, len = std::min<int64_t>(kBlock8bit, n - i0);
    const float old_am = am[b], old_av = av[b];
    float new_am = 0.f, new_av = 0.f;
    for (int64_t k = 0; k < len; ++k) {
      const int64_t i = i0 + k;
      float pi = p[i];
      float mi = adamw::f_mul(map_m[mc[i]], old_am);
      float vi = adamw::f_mul(map_v[vc[i]], old_av);
      adamw::update(h, load(g, i), pi, mi, vi);
      p[i] = pi;
      store(out, i, pi);
      ms[k] = mi;
      vs[k] = vi;
      new_am = adamw::f_max(new_am, adamw::f_abs(mi));
      new_av = adamw::f_max(new_av, adamw::f_abs(vi));
    }
    am[b] = new_am;
    av[b] = new_av;
    const float sm = adamw::block_scale(new_am), sv = adamw::block_scale(new_av);
    for (int64_t k = 0; k < len; ++k) {
      mc[i0 + k] = adamw::nearest_code8(map_m, adamw::f_mul(ms[k], sm));
      vc[i0 + k] = adamw::nearest_code8(map_v, adamw::f_mul(vs[k], sv));
    }
  }
}

// Two builds of each loop: baseline x86-64 and AVX2+FMA (chosen once at run time).
template <class G, class O>
[[gnu::target("avx2,fma")]] void fp32_range_avx2(const Hyper& h, float* p, float* m, float* v, const G* g, O* out,
                                                 int64_t i0, int64_t i1) {
  fp32_range(h, p, m, v, g, out, i0, i1);
}
template <class G, class O>
void fp32_range_base(const Hyper& h, float* p, float* m, float* v, const G* g, O* out, int64_t i0, int64_t i1) {
  fp32_range(h, p, m, v, g, out, i0, i1);
}
template <class G, class O>
[[gnu::target("avx2,fma")]] void block8_range_avx2(const Hyper& h, float* p, uint8_t* mc, uint8_t* vc, float* am,
                                                   float* av, const G* g, O* out, const float* map_m,
                                                   const float* map_v, int64_t n, int64_t b0, int64_t b1) {
  block8_range(h, p, mc, vc, am, av, g, out, map_m, map_v, n, b0, b1);
}
template <class G, class O>
void block8_range_base(const Hyper& h, float* p, uint8_t* mc, uint8_t* vc, float* am, float* av, const G* g, O* out,
                       const float* map_m, const float* map_v, int64_t n, int64_t b0, int64_t b1) {
  block8_range(h, p, mc, vc, am, av, g, out, map_m, map_v, n, b0, b1);
}

bool have_fma() {
  static const bool ok = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return ok;
}

// Calls fn(g_ptr, out_ptr) with typed pointers for g's and out's dtypes.
template <class Fn>
void dispatch_types(const at::Tensor& g, const at::Tensor& out, Fn&& fn) {
  auto with_out = [&](auto* gp) {
    if (!out.defined()) return fn(gp, static_cast<NoOut*>(nullptr));
    switch (out.scalar_type()) {
      case at::kFloat: return fn(gp, out.data_ptr<float>());
      case at::kBFloat16: return fn(gp, reinterpret_cast<c10::BFloat16*>(out.data_ptr()));
      case at::kHalf: return fn(gp, reinterpret_cast<c10::Half*>(out.data_ptr()));
      default: TORCH_CHECK(false, "adamw: out must be float32, bfloat16 or float16, got ", out.scalar_type());
    }
  };
  switch (g.scalar_type()) {
    case at::kFloat: return with_out(g.data_ptr<float>());
    case at::kBFloat16: return with_out(reinterpret_cast<const c10::BFloat16*>(g.data_ptr()));
    case at::kHalf: return with_out(reinterpret_cast<const c10::Half*>(g.data_ptr()));
    default: TORCH_CHECK(false, "adamw: grad must be float32, bfloat16 or float16, got ", g.scalar_type());
  }
}

void check_common(const at::Tensor& p, const at::Tensor& g, const at::Tensor& out) {
  TORCH_CHECK(p.scalar_type() == at::kFloat && p.is_contiguous(), "adamw: p must be contiguous float32");
  TORCH_CHECK(g.is_contiguous() && g.numel() == p.numel(), "adamw: grad must be contiguous with ", p.numel(),
              " elements, got ", g.numel());
  TORCH_CHECK(!out.defined() || (out.is_contiguous() && out.numel() == p.numel()),
              "adamw: out must be contiguous with ", p.numel(), " elements");
}

}  // namespace

void adamw_step_fp32_cpu(const Hyper& h, at::Tensor& p, at::Tensor& m, at::Tensor& v, const at::Tensor& g,
                         const at::Tensor& out) {
  check_common(p, g, out);
  TORCH_CHECK(m.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat && m.is_contiguous() &&
                  v.is_contiguous() && m.numel() == p.numel() && v.numel() == p.numel(),
              "adamw: m and v must be contiguous float32 like p");
  const int64_t n = p.numel();
  float* pp = p.data_ptr<float>();
  float* mp = m.data_ptr<float>();
  float* vp = v.data_ptr<float>();
  const bool fma = have_fma();
  dispatch_types(g, out, [&](auto* gp, auto* op) {
    at::parallel_for(0, n, 16384, [&](int64_t i0, int64_t i1) {
      if (fma)
        fp32_range_avx2(h, pp, mp, vp, gp, op, i0, i1);
      else
        fp32_range_base(h, pp, mp, vp, gp, op, i0, i1);
    });
  });
}

void adamw_step_8bit_cpu(const Hyper& h, at::Tensor& p, at::Tensor& m_codes, at::Tensor& v_codes, at::Tensor& absmax_m,
                         at::Tensor& absmax_v, const at::Tensor& g, const at::Tensor& out, const at::Tensor& map_m,
                         const at::Tensor& map_v) {
  check_common(p, g, out);
  const int64_t n = p.numel();
  const int64_t nb = (n + kBlock8bit - 1) / kBlock8bit;
  TORCH_CHECK(m_codes.scalar_type() == at::kByte && v_codes.scalar_type() == at::kByte && m_codes.is_contiguous() &&
                  v_codes.is_contiguous() && m_codes.numel() == n && v_codes.numel() == n,
              "adamw_8bit: codes must be contiguous uint8 [", n, "]");
  TORCH_CHECK(absmax_m.scalar_type() == at::kFloat && absmax_v.scalar_type() == at::kFloat &&
                  absmax_m.is_contiguous() && absmax_v.is_contiguous() && absmax_m.numel() == nb &&
                  absmax_v.numel() == nb,
              "adamw_8bit: absmax must be contiguous float32 [", nb, "]");
  TORCH_CHECK(map_m.numel() == 256 && map_v.numel() == 256 && map_m.scalar_type() == at::kFloat &&
                  map_v.scalar_type() == at::kFloat && map_m.is_contiguous() && map_v.is_contiguous(),
              "adamw_8bit: maps must be float32 [256]");
  float* pp = p.data_ptr<float>();
  uint8_t* mc = m_codes.data_ptr<uint8_t>();
  uint8_t* vc = v_codes.data_ptr<uint8_t>();
  float* am = absmax_m.data_ptr<float>();
  float* av = absmax_v.data_ptr<float>();
  const float* mm = map_m.data_ptr<float>();
  const float* mv = map_v.data_ptr<float>();
  const bool fma = have_fma();
  dispatch_types(g, out, [&](auto* gp, auto* op) {
    at::parallel_for(0, nb, 64, [&](int64_t b0, int64_t b1) {
      if (fma)
        block8_range_avx2(h, pp, mc, vc, am, av, gp, op, mm, mv, n, b0, b1);
      else
        block8_range_base(h, pp, mc, vc, am, av, gp, op, mm, mv, n, b0, b1);
    });
  });
}

}  // namespace qlora::kernels::cpu

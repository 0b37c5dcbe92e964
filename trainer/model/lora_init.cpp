#include "trainer/model/lora_init.h"

#include <ATen/ATen.h>

#include "kernels/ops.h"
#include "trainer/common/error.h"
#include "trainer/model/lora.h"

namespace qlora::model {

LoraInitMethod lora_init_method(const config::LoraConfig& cfg) {
  const std::string& v = cfg.init_lora_weights;
  LoraInitMethod m;
  if (v == "true") return m;
  if (v == "false")
    m.kind = LoraInitMethod::KaimingBoth;
  else if (v == "gaussian")
    m.kind = LoraInitMethod::Gaussian;
  else if (v == "pissa")
    m.kind = LoraInitMethod::Pissa;
  else if (v == "olora")
    m.kind = LoraInitMethod::Olora;
  else if (v == "loftq")
    m.kind = LoraInitMethod::Loftq;
  else if (v.starts_with("pissa_niter_") && v.size() > 12 &&
           v.find_first_not_of("0123456789", 12) == std::string::npos) {
    m.kind = LoraInitMethod::Pissa;
    m.niter = std::stoll(v.substr(12));
  } else {
    user_error("init_lora_weights: expected true, false, gaussian, pissa, pissa_niter_K, olora or loftq, got \"", v,
               "\"");
  }
  return m;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> svd_lowrank(const at::Tensor& a_in, int64_t q, int64_t niter,
                                                           at::Generator& gen) {
  // Halko et al.'s algorithms 4.4 and 5.1, step for step as torch._lowrank computes them.
  const bool wide = a_in.size(0) < a_in.size(1);
  const at::Tensor a = wide ? a_in.mH() : a_in;
  at::Tensor r = at::randn({a.size(-1), q}, gen, a.options());
  at::Tensor Q = std::get<0>(at::linalg_qr(at::matmul(a, r)));
  for (int64_t i = 0; i < niter; ++i) {
    Q = std::get<0>(at::linalg_qr(at::matmul(a.mH(), Q)));
    Q = std::get<0>(at::linalg_qr(at::matmul(a, Q)));
  }
  const at::Tensor b = at::matmul(Q.mH(), a);
  auto [u, s, vh] = at::linalg_svd(b, /*full_matrices=*/false);
  at::Tensor v = vh.mH();
  u = Q.matmul(u);
  if (wide) std::swap(u, v);
  return {u, s, v};
}

namespace {

// PiSSA: A = diag(sqrt(S_r)) U_r^T, B = V_r diag(sqrt(S_r)) with S_r divided by the scaling.
LoraInitResult pissa(const at::Tensor& w, int64_t r, double scaling, int64_t niter, at::Generator& gen) {
  at::Tensor Vr, Sr, Uhr;
  if (niter < 0) {
    auto [V, S, Uh] = at::linalg_svd(w, /*full_matrices=*/false);
    Vr = V.slice(1, 0, r);
    Sr = S.slice(0, 0, r).clone();
    Uhr = Uh.slice(0, 0, r);
  } else {
    auto [V, S, U] = svd_lowrank(w, r, niter, gen);
    Vr = V;
    Sr = S;
    Uhr = U.t();
  }
  Sr.div_(scaling);
  LoraInitResult out;
  out.A = at::mm(at::diag(at::sqrt(Sr)), Uhr);
  out.B = at::mm(Vr, at::diag(at::sqrt(Sr)));
  out.left = scaling * out.B;
  out.right = out.A;
  return out;
}

// OLoRA: the first r columns of Q and rows of R of W = QR.
LoraInitResult olora(const at::Tensor& w, int64_t r, double scaling) {
  auto [Q, R] = at::linalg_qr(w);
  LoraInitResult out;
  out.A = R.slice(0, 0, r).contiguous();
  out.B = Q.slice(1, 0, r).contiguous();
  out.left = scaling * out.B;
  out.right = out.A;
  return out;
}

at::Tensor nf4_round(const at::Tensor& x) {
  return kernels::nf4_dequantize(kernels::nf4_quantize(x, 64, /*double_quant=*/false), at::kFloat);
}

// LoftQ (4 bit): alternate NF4 quantization of W - L R and a rank-r SVD of W - Q.
LoraInitResult loftq(const at::Tensor& w, int64_t r, int64_t iters) {
  LoraInitResult out;
  out.nf4_round = true;
  at::Tensor L, R;
  for (int64_t i = 0; i < iters; ++i) {
    if (i > 0) {
      out.left = L;
      out.right = R;
    }
    const at::Tensor res = w - lora_init_base(w, out);
    auto [U, S, Vh] = at::linalg_svd(res, /*full_matrices=*/false);
    const at::Tensor D = at::diag(S);
    L = at::mm(U, at::sqrt(D.slice(1, 0, r)));
    R = at::mm(at::sqrt(D.slice(0, 0, r)), Vh);
  }
  out.A = R;
  out.B = L;
  return out;
}

}  // namespace

at::Tensor lora_init_base(const at::Tensor& w_in, const LoraInitResult& init) {
  const at::Tensor w = w_in.to(at::kCPU, at::kFloat);
  at::Tensor x = init.left.defined() ? w - at::mm(init.left, init.right) : w;
  return init.nf4_round ? nf4_round(x) : x;
}

LoraInitResult lora_init_from_weight(const at::Tensor& w_in, const config::LoraConfig& cfg, at::Generator& gen) {
  const LoraInitMethod m = lora_init_method(cfg);
  TORCH_CHECK(m.changes_base(), "lora_init_from_weight: ", cfg.init_lora_weights, " leaves the base as it is");
  TORCH_CHECK(w_in.dim() == 2, "lora_init_from_weight: expected a [out, in] weight");
  const at::Tensor w = w_in.to(at::kCPU, at::kFloat);
  const int64_t r = cfg.r;
  if (r > std::min(w.size(0), w.size(1)))
    user_error("lora_r: ", r, " exceeds the smaller side of a [", w.size(0), ", ", w.size(1),
               "] layer; init_lora_weights: ", cfg.init_lora_weights, " takes r directions of its weight");
  switch (m.kind) {
    case LoraInitMethod::Pissa: return pissa(w, r, lora_scaling(cfg), m.niter, gen);
    case LoraInitMethod::Olora: return olora(w, r, lora_scaling(cfg));
    case LoraInitMethod::Loftq: return loftq(w, r, cfg.loftq_iter);
    default: break;
  }
  TORCH_CHECK(false, "unreachable");
}

}  // namespace qlora::model

#include "trainer/model/lora_linear.h"

#include <torch/autograd.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>

#include <mutex>
#include <vector>

#include "kernels/step_profile.h"

namespace qlora::model {

namespace {

using torch::autograd::variable_list;

std::vector<int64_t> with_last(at::IntArrayRef sizes, int64_t last) {
  std::vector<int64_t> s(sizes.begin(), sizes.end());
  s.back() = last;
  return s;
}

// Next edges: (x, A, B).
struct LoraLinearBackward : public torch::autograd::Node {
  const kernels::NF4Tensor* nf4 = nullptr;
  at::Tensor weight;       // 16-bit base (when no nf4)
  at::Tensor xd, h, A, B;  // dropout(x) [M, in], h [M, r], the adapter (detached)
  double scaling = 1.0, p = 0.0;
  uint64_t seed = 0;
  std::vector<int64_t> x_sizes;
  bool need_x = false, need_A = false, need_B = false;

  std::string name() const override { return "qlora::LoraLinearBackward"; }

  variable_list apply(variable_list&& grads) override {
    TORCH_CHECK(A.defined(), "lora_linear: backward ran twice (the graph is not retained)");
    variable_list out(3);
    if (!grads[0].defined()) return out;
    const int64_t N = B.size(0);
    const at::Tensor dy = grads[0].reshape({-1, N}).contiguous();
    const at::Tensor g = kernels::skinny_mm(dy, B, scaling);  // [M, r]
    if (need_B) out[2] = kernels::skinny_mm(dy.t(), h, scaling);
    if (need_A) out[1] = kernels::skinny_mm(xd.t(), g).t().contiguous();
    if (need_x) {
      at::Tensor dx = nf4 ? kernels::nf4_linear_grad_input(dy, *nf4) : at::mm(dy, weight);
      if (p > 0.0) {
        kernels::hashed_dropout_add_(dx, at::mm(g, A), p, seed);
      } else {
        dx.addmm_(g, A);
      }
      out[0] = dx.view(x_sizes);
    }
    release_variables();
    return out;
  }

  void release_variables() override { weight = xd = h = A = B = at::Tensor(); }
};

// x W^T (no bias) and dy W for the base, NF4 or 16-bit.
at::Tensor base_product(const at::Tensor& x2, const kernels::NF4Tensor* nf4, const at::Tensor& weight) {
  return nf4 ? kernels::nf4_linear(x2, *nf4) : at::mm(x2, weight.t());
}
at::Tensor base_grad_input(const at::Tensor& dy, const kernels::NF4Tensor* nf4, const at::Tensor& weight) {
  return nf4 ? kernels::nf4_linear_grad_input(dy, *nf4) : at::mm(dy, weight);
}

// Next edges: (x, A, B, magnitude). See lora_linear.h for the formulas.
struct DoraLinearBackward : public torch::autograd::Node {
  const kernels::NF4Tensor* nf4 = nullptr;
  at::Tensor weight;          // 16-bit base (when no nf4)
  at::Tensor xd, h, A, B, u;  // dropout(x) [M, in], h [M, r], the adapter, u [M, N]
  at::Tensor norm, scale;     // ||W + s B A|| and m / norm, [N], float32
  double scaling = 1.0, p = 0.0;
  uint64_t seed = 0;
  std::vector<int64_t> x_sizes;
  bool need_x = false, need_A = false, need_B = false, need_m = false;

  std::string name() const override { return "qlora::DoraLinearBackward"; }

  variable_list apply(variable_list&& grads) override {
    TORCH_CHECK(A.defined(), "dora_linear: backward ran twice (the graph is not retained)");
    variable_list out(4);
    if (!grads[0].defined()) return out;
    const int64_t N = B.size(0);
    const at::Tensor dy = grads[0].reshape({-1, N}).contiguous();
    // The gradient at the scaled output, per column; products with the float32 scale are taken in
    // float32 and rounded once to dy's dtype.
    const at::Tensor dys = (dy * scale).to(dy.scalar_type());
    if (need_m) out[3] = (dy.to(at::kFloat) * u.to(at::kFloat)).sum(0).div_(norm);
    const at::Tensor g = kernels::skinny_mm(dys, B, scaling);  // [M, r]
    if (need_B) out[2] = kernels::skinny_mm(dys.t(), h, scaling);
    if (need_A) out[1] = kernels::skinny_mm(xd.t(), g).t().contiguous();
    if (need_x) {
      at::Tensor dx;
      if (p > 0.0) {
        // The base term scales dropout(x) W^T by (m / norm - 1); the plain base takes x itself.
        dx = base_grad_input(dy, nf4, weight);
        at::Tensor t = base_grad_input((dy * (scale - 1)).to(dy.scalar_type()), nf4, weight);
        t.addmm_(g, A);
        kernels::hashed_dropout_add_(dx, t, p, seed);
      } else {
        dx = base_grad_input(dys, nf4, weight);
        dx.addmm_(g, A);
      }
      out[0] = dx.view(x_sizes);
    }
    release_variables();
    return out;
  }

  void release_variables() override { weight = xd = h = A = B = u = norm = scale = at::Tensor(); }
};

void link(torch::autograd::Node& node, torch::autograd::edge_list edges) {
  // Row shards build their nodes side by side on the same A and B; linking a node marks the
  // shared gradient accumulators as having a parent (a plain write inside torch), so the links
  // are made one at a time.
  static std::mutex link_mutex;
  const std::lock_guard<std::mutex> lock(link_mutex);
  node.set_next_edges(std::move(edges));
}

torch::autograd::edge_list edges_of(std::initializer_list<const at::Tensor*> ts) {
  torch::autograd::edge_list edges;
  for (const at::Tensor* t : ts)
    edges.push_back(t->requires_grad() ? torch::autograd::impl::gradient_edge(*t) : torch::autograd::Edge());
  return edges;
}

at::Tensor dora_linear(const at::Tensor& x, const kernels::NF4Tensor* nf4, const at::Tensor& weight,
                       const at::Tensor& bias, const LoraAdapter& lora, double dropout_p, uint64_t seed) {
  const int64_t K = x.size(-1), N = lora.B.size(0);
  at::Tensor y, xd, h, u, norm, scale;
  {
    at::NoGradGuard no_grad;
    const at::Tensor x2 = x.detach().reshape({-1, K}).contiguous();
    norm = dora_weight_norm(nf4, weight, lora);
    // float32, as PEFT's magnitude / norm is; the products with it are taken in float32 and rounded
    // once to the compute dtype (a 16-bit m / n would add its own rounding of up to 2^-9).
    scale = lora.magnitude.detach().to(at::kFloat).div(norm);
    at::Tensor z = base_product(x2, nf4, weight);
    kernels::profile::Scope prof(kernels::profile::Part::lora);
    xd = dropout_p > 0.0 ? kernels::hashed_dropout(x2, dropout_p, seed) : x2;
    const at::Tensor A = lora.A.detach(), B = lora.B.detach();
    h = kernels::skinny_mm(xd, A.t());
    if (dropout_p > 0.0) {
      // PEFT: base(x) + (m / norm - 1) * dropout(x) W^T + m / norm * s * B A dropout(x).
      const at::Tensor zd = base_product(xd, nf4, weight);
      u = at::addmm(zd, h, B.t(), /*beta=*/1, /*alpha=*/lora.scaling);
      y = z.sub_(zd).add_((u * scale).to(z.scalar_type()));
    } else {
      u = z.addmm_(h, B.t(), /*beta=*/1, /*alpha=*/lora.scaling);
      y = (u * scale).to(u.scalar_type());
    }
    if (bias.defined()) y.add_(bias);
    y = at::_unsafe_view(y, with_last(x.sizes(), N));
  }
  const bool need_x = x.requires_grad(), need_A = lora.A.requires_grad(), need_B = lora.B.requires_grad(),
             need_m = lora.magnitude.requires_grad();
  if (!at::GradMode::is_enabled() || !(need_x || need_A || need_B || need_m)) return y;

  auto node = std::shared_ptr<DoraLinearBackward>(new DoraLinearBackward(), torch::autograd::deleteNode);
  node->nf4 = nf4;
  if (!nf4) node->weight = weight.detach();
  node->xd = xd;
  node->h = h;
  node->u = u;
  node->A = lora.A.detach();
  node->B = lora.B.detach();
  node->norm = norm;
  node->scale = scale;
  node->scaling = lora.scaling;
  node->p = dropout_p;
  node->seed = seed;
  node->x_sizes = x.sizes().vec();
  node->need_x = need_x;
  node->need_A = need_A;
  node->need_B = need_B;
  node->need_m = need_m;
  link(*node, edges_of({&x, &lora.A, &lora.B, &lora.magnitude}));
  torch::autograd::set_history(y, node);
  return y;
}

}  // namespace

// The norm with copies of the A and B it was computed from. A hit compares the values (r (in +
// out) elements, against r in out for the norm): the optimizer writes parameters in place without
// going through autograd's version counters, so nothing cheaper says whether they changed.
struct DoraNormCache {
  std::mutex mu;
  at::Tensor A, B, norm;
};

at::Tensor dora_weight_norm(const kernels::NF4Tensor* nf4, const at::Tensor& weight, const LoraAdapter& lora) {
  TORCH_CHECK(lora.base_sq_norm.defined(), "dora_weight_norm: the adapter is not a DoRA adapter (init_dora)");
  at::NoGradGuard no_grad;
  const at::Tensor A = lora.A.detach(), B = lora.B.detach();
  // No graph is being built (generate, eval, a checkpointed block's first pass): the norm changes
  // only when A or B do.
  DoraNormCache* cache = at::GradMode::is_enabled() ? nullptr : lora.norm_cache.get();
  std::unique_lock<std::mutex> lock;
  if (cache) {
    lock = std::unique_lock<std::mutex>(cache->mu);
    if (cache->norm.defined() && cache->A.sizes() == A.sizes() && cache->B.sizes() == B.sizes() &&
        cache->A.scalar_type() == A.scalar_type() && at::equal(cache->A, A) && at::equal(cache->B, B))
      return cache->norm;
  }
  // ||W_j + s (B A)_j||^2 = ||W_j||^2 + 2 s sum_i B_ji (A W^T)_ij + s^2 (B (A A^T) B^T)_jj: one
  // rank-r product with the base instead of a dense W + s B A.
  const at::Tensor A32 = A.to(at::kFloat), B32 = B.to(at::kFloat);
  const at::Tensor AW = base_product(A32, nf4, nf4 ? weight : weight.to(at::kFloat)).to(at::kFloat);  // [r, N]
  const double s = lora.scaling;
  at::Tensor sq = lora.base_sq_norm.to(at::kFloat).clone();
  sq.add_((B32 * AW.t()).sum(1), 2 * s);
  sq.add_((at::mm(B32, at::mm(A32, A32.t())) * B32).sum(1), s * s);
  at::Tensor norm = sq.clamp_min_(0).sqrt_();
  if (cache) {
    cache->A = A.clone();
    cache->B = B.clone();
    cache->norm = norm;
  }
  return norm;
}

void init_dora(const kernels::NF4Tensor* nf4, const at::Tensor& weight, LoraAdapter& lora) {
  at::NoGradGuard no_grad;
  lora.base_sq_norm =
      nf4 ? kernels::nf4_row_sq_norms(*nf4) : at::linalg_vector_norm(weight, 2, {1}, false, at::kFloat).square_();
  lora.norm_cache = std::make_shared<DoraNormCache>();
  // PEFT's init: the magnitude is the norm itself (a copy: the magnitude trains in place).
  lora.magnitude = dora_weight_norm(nf4, weight, lora).clone().requires_grad_(true);
}

at::Tensor lora_linear(const at::Tensor& x, const kernels::NF4Tensor* nf4, const at::Tensor& weight,
                       const at::Tensor& bias, const LoraAdapter& lora, double dropout_p, uint64_t seed) {
  if (lora.dora()) return dora_linear(x, nf4, weight, bias, lora, dropout_p, seed);
  const int64_t K = x.size(-1), N = lora.B.size(0);
  at::Tensor y, xd, h;
  {
    at::NoGradGuard no_grad;
    const at::Tensor x2 = x.detach().reshape({-1, K}).contiguous();
    y = nf4 ? kernels::nf4_linear(x2, *nf4) : at::mm(x2, weight.t());
    if (bias.defined()) y.add_(bias);
    kernels::profile::Scope prof(kernels::profile::Part::lora);
    xd = dropout_p > 0.0 ? kernels::hashed_dropout(x2, dropout_p, seed) : x2;
    const at::Tensor A = lora.A.detach(), B = lora.B.detach();
    h = kernels::skinny_mm(xd, A.t());
    y.addmm_(h, B.t(), /*beta=*/1, /*alpha=*/lora.scaling);
    // Not an autograd view of the [M, N] product: this node is the output's whole history.
    y = at::_unsafe_view(y, with_last(x.sizes(), N));
  }
  const bool need_x = x.requires_grad(), need_A = lora.A.requires_grad(), need_B = lora.B.requires_grad();
  if (!at::GradMode::is_enabled() || !(need_x || need_A || need_B)) return y;

  auto node = std::shared_ptr<LoraLinearBackward>(new LoraLinearBackward(), torch::autograd::deleteNode);
  node->nf4 = nf4;
  if (!nf4) node->weight = weight.detach();
  node->xd = xd;
  node->h = h;
  node->A = lora.A.detach();
  node->B = lora.B.detach();
  node->scaling = lora.scaling;
  node->p = dropout_p;
  node->seed = seed;
  node->x_sizes = x.sizes().vec();
  node->need_x = need_x;
  node->need_A = need_A;
  node->need_B = need_B;
  link(*node, edges_of({&x, &lora.A, &lora.B}));
  torch::autograd::set_history(y, node);
  return y;
}

}  // namespace qlora::model

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
    const at::Tensor g = at::mm(dy, B).mul_(scaling);  // [M, r]
    if (need_B) out[2] = at::mm(dy.t(), h).mul_(scaling);
    if (need_A) out[1] = at::mm(g.t(), xd);
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

}  // namespace

at::Tensor lora_linear(const at::Tensor& x, const kernels::NF4Tensor* nf4, const at::Tensor& weight,
                       const at::Tensor& bias, const LoraAdapter& lora, double dropout_p, uint64_t seed) {
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
    h = at::mm(xd, A.t());
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
  torch::autograd::edge_list edges;
  for (const at::Tensor* t : {&x, &lora.A, &lora.B})
    edges.push_back(t->requires_grad() ? torch::autograd::impl::gradient_edge(*t) : torch::autograd::Edge());
  {
    // Row shards build their nodes side by side on the same A and B; linking a node marks the
    // shared gradient accumulators as having a parent (a plain write inside torch), so the links
    // are made one at a time.
    static std::mutex link_mutex;
    const std::lock_guard<std::mutex> lock(link_mutex);
    node->set_next_edges(std::move(edges));
  }
  torch::autograd::set_history(y, node);
  return y;
}

}  // namespace qlora::model

#include "trainer/optim/grad.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <utility>

namespace qlora::optim {

namespace {
// torch.nn.utils.clip_grad_norm_ -> get_total_norm: per-tensor vector norms (torch._foreach_norm
// on CUDA, torch.linalg.vector_norm per tensor on CPU; same values), then the norm of their stack.
// torch groups the tensors by (device, dtype) in order of first appearance, so the stacked norms
// come group by group; the order matters for the bits of the final reduction.
at::Tensor total_norm_tensor(const std::vector<at::Tensor>& grads) {
  std::vector<std::pair<at::Device, at::ScalarType>> groups;
  for (const at::Tensor& g : grads) {
    if (!g.defined()) continue;
    auto key = std::make_pair(g.device(), g.scalar_type());
    if (std::find(groups.begin(), groups.end(), key) == groups.end()) groups.push_back(key);
  }
  if (groups.empty()) return at::zeros({}, at::kFloat);
  const at::Device first_device = groups.front().first;
  std::vector<at::Tensor> norms;
  for (const auto& key : groups)
    for (const at::Tensor& g : grads)
      if (g.defined() && g.device() == key.first && g.scalar_type() == key.second)
        norms.push_back(at::linalg_vector_norm(g, 2.0).to(first_device));
  return at::linalg_vector_norm(at::stack(norms), 2.0);
}
}  // namespace

double grad_norm(const std::vector<at::Tensor>& grads) { return total_norm_tensor(grads).item<double>(); }

double clip_grad_norm_(const std::vector<at::Tensor>& grads, double max_norm) {
  at::Tensor total = total_norm_tensor(grads);
  if (max_norm > 0) {
    // clip_grads_with_norm_: clip_coef = max_norm / (total_norm + 1e-6), clamped to at most 1
    at::Tensor coef = (total + 1e-6).reciprocal() * max_norm;  // Python's float / tensor
    at::Tensor coef_clamped = at::clamp(coef, c10::nullopt, 1.0);
    for (const at::Tensor& g : grads) {
      if (!g.defined()) continue;
      at::Tensor gg = g;
      gg.mul_(coef_clamped.to(g.device()));
    }
  }
  return total.item<double>();
}

bool all_finite(const std::vector<at::Tensor>& tensors) {
  for (const at::Tensor& t : tensors) {
    if (!t.defined() || !t.is_floating_point()) continue;
    if (!at::isfinite(t).all().item<bool>()) return false;
  }
  return true;
}

}  // namespace qlora::optim

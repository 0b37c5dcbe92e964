#include "trainer/model/activation_checkpoint.h"

#include <torch/autograd.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>

namespace qlora::model {

namespace {

using torch::autograd::variable_list;

// The backward node of one checkpointed block. Its next edges are (x, params...).
struct CheckpointBackward : public torch::autograd::Node {
  BlockFn fn;
  at::Tensor x;                  // the block input (detached value); in host memory when offloaded
  at::Device device = at::kCPU;  // where x lives in the forward
  bool offloaded = false;
  bool x_requires_grad = false;
  std::vector<at::Tensor> params;
  std::optional<at::Generator> replay;  // generator state before the forward

  std::string name() const override { return "qlora::CheckpointBackward"; }

  variable_list apply(variable_list&& grads) override {
    TORCH_CHECK(fn, "checkpointed block: backward ran twice (the graph is not retained)");
    variable_list out(1 + params.size());
    if (!grads[0].defined()) return out;
    at::Tensor y;
    at::Tensor xd =
        (offloaded ? x.to(device, /*non_blocking=*/true, /*copy=*/true) : x.detach()).requires_grad_(x_requires_grad);
    {
      at::AutoGradMode enable(true);
      at::Generator* g = replay ? &*replay : nullptr;
      y = fn(xd, g);
    }
    std::vector<at::Tensor> inputs;
    std::vector<size_t> slot;
    if (x_requires_grad) {
      inputs.push_back(xd);
      slot.push_back(0);
    }
    for (size_t i = 0; i < params.size(); ++i) {
      if (params[i].requires_grad()) {
        inputs.push_back(params[i]);
        slot.push_back(1 + i);
      }
    }
    variable_list g = torch::autograd::grad({y}, inputs, {grads[0]}, /*retain_graph=*/false,
                                            /*create_graph=*/false, /*allow_unused=*/true);
    for (size_t k = 0; k < g.size(); ++k) out[slot[k]] = g[k];
    // Free what the recompute needed.
    fn = nullptr;
    x = at::Tensor();
    replay.reset();
    return out;
  }

  void release_variables() override {
    fn = nullptr;
    x = at::Tensor();
    replay.reset();
  }
};

}  // namespace

at::Tensor checkpointed(const BlockFn& fn, const at::Tensor& x, const std::vector<at::Tensor>& params,
                        at::Generator* gen, bool offload) {
  bool any = x.requires_grad();
  for (const auto& p : params) any = any || p.requires_grad();
  if (!at::GradMode::is_enabled() || !any) return fn(x, gen);

  auto node = std::shared_ptr<CheckpointBackward>(new CheckpointBackward(), torch::autograd::deleteNode);
  node->fn = fn;
  node->device = x.device();
  node->offloaded = offload;
  if (!offload) {
    node->x = x.detach();
  } else if (x.is_cuda()) {
    node->x = at::empty(x.sizes(), x.options().device(at::kCPU).pinned_memory(true));
    node->x.copy_(x.detach(), /*non_blocking=*/true);
  } else {
    node->x = x.detach().clone();
  }
  node->x_requires_grad = x.requires_grad();
  node->params = params;
  if (gen && gen->defined()) node->replay = gen->clone();
  at::Tensor y;
  {
    at::NoGradGuard no_grad;
    y = fn(x, gen);
  }
  torch::autograd::edge_list edges;
  edges.push_back(x.requires_grad() ? torch::autograd::impl::gradient_edge(x) : torch::autograd::Edge());
  for (const auto& p : params)
    edges.push_back(p.requires_grad() ? torch::autograd::impl::gradient_edge(p) : torch::autograd::Edge());
  node->set_next_edges(std::move(edges));
  torch::autograd::set_history(y, node);
  return y;
}

}  // namespace qlora::model

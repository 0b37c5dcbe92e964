// Gradient helpers for the training loop: global-norm clipping and non-finite detection.
#pragma once
#include <ATen/core/Tensor.h>

#include <vector>

namespace qlora::optim {

// torch.nn.utils.clip_grad_norm_(grads, max_norm) with the L2 norm, same ops in the same order:
//   total = ||(||g_1||, ..., ||g_k||)||_2     (each norm in the gradient's dtype)
//   coef  = min(max_norm / (total + 1e-6), 1) and every gradient is multiplied by it in place
// (also when coef is 1, like torch). Undefined tensors are skipped. Returns the total norm before
// clipping, as a double (NaN/Inf when some gradient element is not finite; the gradients are then
// scaled by NaN, so skip the step). max_norm <= 0 only measures the norm.
double clip_grad_norm_(const std::vector<at::Tensor>& grads, double max_norm);

// Global L2 norm of the gradients (as above, without clipping).
double grad_norm(const std::vector<at::Tensor>& grads);

// True when every element of every (defined) tensor is finite. One fused check per tensor.
bool all_finite(const std::vector<at::Tensor>& tensors);

}  // namespace qlora::optim

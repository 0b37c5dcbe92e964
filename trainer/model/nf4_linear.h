// The frozen NF4 linear as an autograd function.
//
// y = x W^T with W [out, in] held in NF4 (kernels::nf4_linear). In backward only x gets a
// gradient, dx = dy W (kernels::nf4_linear_grad_input, which dequantizes transiently); the base
// weight takes no gradient and no dequantized copy of it is kept between forward and backward.
// Nothing of x is saved either: the backward needs only dy and the packed weight.
#pragma once
#include <ATen/core/Tensor.h>

#include "kernels/ops.h"

namespace qlora::model {

// x [..., in] -> [..., out] in x's dtype. Differentiable in x when x requires grad.
at::Tensor nf4_linear_frozen(const at::Tensor& x, const kernels::NF4Tensor& w);

}  // namespace qlora::model

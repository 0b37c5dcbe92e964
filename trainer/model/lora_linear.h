// A frozen linear layer with its LoRA adapter as ONE autograd node (PEFT's LoRA Linear, fused).
//
//   y = base(x) + bias + (dropout(x) A^T) B^T * scaling
//
// base: NF4 (kernels::nf4_linear) or a 16-bit weight; bias frozen. Forward: the base product,
// then the adapter's rank-r product added into it in place (addmm). Backward, for dy:
//   g  = dy B * scaling                   [M, r]
//   dB = dy^T h * scaling,  h = dropout(x) A^T (saved, [M, r])
//   dA = g^T dropout(x)                   (dropout(x) saved: PEFT keeps the same tensor)
//   dx = base^T(dy) + dropout(g A)        (the mask recomputed from its seed: kernels/dropout.h)
// Nothing else is saved: no mask, no copy of the base weight, no separate adapter output.
// The numbers equal the unfused composition (tests/model/test_lora.cpp) to float rounding.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>

#include "kernels/ops.h"
#include "trainer/model/lora.h"

namespace qlora::model {

// x [..., in] -> [..., out] in x's dtype. `nf4` (when non-null) or `weight` [out, in] is the
// base; `bias` may be undefined. dropout_p > 0 applies LoRA dropout with the counter-based mask
// of `seed`. Differentiable in x (when it requires grad) and in lora.A / lora.B. `nf4` must
// outlive the autograd graph (it is the model's weight; the graph refers to it).
at::Tensor lora_linear(const at::Tensor& x, const kernels::NF4Tensor* nf4, const at::Tensor& weight,
                       const at::Tensor& bias, const LoraAdapter& lora, double dropout_p, uint64_t seed);

}  // namespace qlora::model

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
//
// DoRA (lora.dora(), PEFT's DoraLinearLayer): with the row norm n = ||W + s B A|| (a constant for
// the gradient, as the DoRA paper and PEFT treat it), c = m / n per output and d = dropout(x),
//   y = x W^T + bias + (c - 1) (d W^T) + c s (d A^T) B^T
// which without dropout is c (x W^T + s (x A^T) B^T) + bias. u = d W^T + s (d A^T) B^T is saved
// ([M, out]); backward, with dy' = dy c:
//   dm = sum_rows(dy u) / n,   dB = dy'^T h s,   dA = (dy' B s)^T d
//   dx = base^T(dy') + dy' B s A                      (no dropout)
//   dx = base^T(dy) + dropout(base^T(dy (c - 1)) + dy' B s A)
// n is computed from the base's squared row norms (computed once, block by block, at load) and
// one rank-r product with the base: ||W_j||^2 + 2 s (B (A W^T)^T)_j + s^2 (B A A^T B^T)_jj, so no
// dequantized copy of the layer is ever made.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>

#include "kernels/ops.h"
#include "trainer/model/lora.h"

namespace qlora::model {

// DoRA's n = ||W + scaling B A|| per output row, float32 [out], no gradient. Without grad mode
// (generate, eval) the value is kept in lora.norm_cache with copies of A and B, and reused while
// they hold the same values.
at::Tensor dora_weight_norm(const kernels::NF4Tensor* nf4, const at::Tensor& weight, const LoraAdapter& lora);

// Makes `lora` a DoRA adapter on this base (nf4, else the 16-bit weight): the base's squared row
// norms, and the magnitude initialized as PEFT does, to n with the adapter's current A and B.
void init_dora(const kernels::NF4Tensor* nf4, const at::Tensor& weight, LoraAdapter& lora);

// x [..., in] -> [..., out] in x's dtype. `nf4` (when non-null) or `weight` [out, in] is the
// base; `bias` may be undefined. dropout_p > 0 applies LoRA dropout with the counter-based mask
// of `seed`. Differentiable in x (when it requires grad) and in lora.A / lora.B (and
// lora.magnitude for DoRA). `nf4` must
// outlive the autograd graph (it is the model's weight; the graph refers to it).
at::Tensor lora_linear(const at::Tensor& x, const kernels::NF4Tensor* nf4, const at::Tensor& weight,
                       const at::Tensor& bias, const LoraAdapter& lora, double dropout_p, uint64_t seed);

}  // namespace qlora::model

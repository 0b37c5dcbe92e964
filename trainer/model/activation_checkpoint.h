// Activation checkpointing: run a block without keeping its activations, recompute it in
// backward.
#pragma once
#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <functional>
#include <vector>

namespace qlora::model {

// fn(x, gen) -> y. `gen` may be null (no randomness).
using BlockFn = std::function<at::Tensor(const at::Tensor& x, at::Generator* gen)>;

// Returns fn(x, gen), computed without autograd; backward recomputes fn with grad enabled and
// the random generator replayed from its state before the forward (so dropout masks are the
// same), then passes gradients to x and to `params` (the block's trainable tensors; their
// .grad accumulates as usual). Activations held between forward and backward: x only.
// Without grad mode, or when neither x nor any param requires grad, it is simply fn(x, gen).
at::Tensor checkpointed(const BlockFn& fn, const at::Tensor& x, const std::vector<at::Tensor>& params,
                        at::Generator* gen);

}  // namespace qlora::model

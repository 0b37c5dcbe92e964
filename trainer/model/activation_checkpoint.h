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
// offload: x is held in host memory between forward and backward (page-locked, copied without
// blocking the host on the compute stream, so the copy runs after the kernels that made x and
// before anything reuses its memory), and copied back to x's device before the recompute. On the
// CPU the held copy is a separate tensor, so the same code runs there.
at::Tensor checkpointed(const BlockFn& fn, const at::Tensor& x, const std::vector<at::Tensor>& params,
                        at::Generator* gen, bool offload = false);

}  // namespace qlora::model

// Causal self-attention over packed sequences without a mask: the rows of q, k, v are the tokens of
// several sequences laid end to end, and each token attends to the earlier tokens of its own
// sequence only. A [B, 1, T, T] mask over packed rows costs B T^2 bytes and T^2 scores per head
// and row; this costs the sum of the sequences' squared lengths, and no mask.
//
//   q [N, heads, D], k, v [N, kv_heads, D] (heads a multiple of kv_heads: grouped-query attention)
//   cu_seqlens: the sequences' starts, then N: 0 = c_0 < c_1 < ... < c_S = N
//   returns [N, heads, D]; differentiable (autograd) in q, k, v
//
// CUDA, fp16 / bf16, D a multiple of 8 up to 256: LibTorch's variable-length flash-attention
// kernel (_flash_attention_forward with cumulative sequence lengths), one launch for all
// sequences. Otherwise (the CPU twin, and other dtypes): scaled_dot_product_attention with
// is_causal per sequence, outputs concatenated.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace qlora::kernels {

at::Tensor varlen_causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const std::vector<int64_t>& cu_seqlens, double scale);

// The per-sequence path whatever the device (the reference the CUDA kernel is tested against).
at::Tensor varlen_causal_attention_loop(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                        const std::vector<int64_t>& cu_seqlens, double scale);

// Whether varlen_causal_attention takes the one-launch CUDA kernel for these inputs.
bool varlen_attention_fused(const at::Tensor& q);

}  // namespace qlora::kernels

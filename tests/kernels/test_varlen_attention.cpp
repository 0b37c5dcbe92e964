// Variable-length causal attention (kernels/varlen_attention.h), CPU: the per-sequence path
// against scaled_dot_product_attention over the whole row with a block-diagonal causal mask
// (grouped-query heads, a sequence of length 1), forward and gradients; bad arguments refused.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <vector>

#include "kernels/varlen_attention.h"

using namespace qlora;

TEST(VarlenAttention, EqualsBlockDiagonalMask) {
  at::manual_seed(9);
  const std::vector<int64_t> cu = {0, 5, 6, 19, 40};
  const int64_t N = 40, H = 4, KV = 2, D = 16;
  at::Tensor q = at::randn({N, H, D}, at::kDouble).requires_grad_(true);
  at::Tensor k = at::randn({N, KV, D}, at::kDouble).requires_grad_(true);
  at::Tensor v = at::randn({N, KV, D}, at::kDouble).requires_grad_(true);
  at::Tensor dy = at::randn({N, H, D}, at::kDouble);
  EXPECT_FALSE(kernels::varlen_attention_fused(q));
  at::Tensor y = kernels::varlen_causal_attention(q, k, v, cu, 0.25);
  (y * dy).sum().backward();
  at::Tensor gq = q.grad().clone(), gk = k.grad().clone(), gv = v.grad().clone();
  q.mutable_grad() = k.mutable_grad() = v.mutable_grad() = at::Tensor();

  at::Tensor seg = at::empty({N}, at::kLong);
  for (size_t s = 0; s + 1 < cu.size(); ++s) seg.narrow(0, cu[s], cu[s + 1] - cu[s]).fill_(static_cast<int64_t>(s));
  at::Tensor i = at::arange(N).unsqueeze(1), j = at::arange(N).unsqueeze(0);
  at::Tensor mask = (j <= i).logical_and(seg.unsqueeze(1) == seg.unsqueeze(0)).view({1, 1, N, N});
  auto bhtd = [](const at::Tensor& t) { return t.transpose(0, 1).unsqueeze(0); };
  at::Tensor ref = at::scaled_dot_product_attention(bhtd(q), bhtd(k).repeat_interleave(H / KV, 1),
                                                    bhtd(v).repeat_interleave(H / KV, 1), mask, 0.0, false, 0.25)
                       .squeeze(0)
                       .transpose(0, 1);
  (ref * dy).sum().backward();
  EXPECT_TRUE(at::allclose(y, ref, 1e-10, 1e-12));
  EXPECT_TRUE(at::allclose(gq, q.grad(), 1e-10, 1e-12));
  EXPECT_TRUE(at::allclose(gk, k.grad(), 1e-10, 1e-12));
  EXPECT_TRUE(at::allclose(gv, v.grad(), 1e-10, 1e-12));
}

TEST(VarlenAttention, RefusesBadBoundaries) {
  at::Tensor q = at::zeros({6, 2, 8}), k = at::zeros({6, 1, 8});
  EXPECT_THROW(kernels::varlen_causal_attention(q, k, k, {0, 3}, 1.0), c10::Error);        // does not reach N
  EXPECT_THROW(kernels::varlen_causal_attention(q, k, k, {0, 3, 3, 6}, 1.0), c10::Error);  // empty sequence
  EXPECT_THROW(kernels::varlen_causal_attention(q, at::zeros({6, 3, 8}), at::zeros({6, 3, 8}), {0, 6}, 1.0),
               c10::Error);  // 2 heads over 3 kv heads
}

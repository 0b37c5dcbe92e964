// Variable-length causal attention (kernels/varlen_attention.h) on CUDA against its CPU twin: the
// one-launch flash kernel in bf16 / fp16 against the per-sequence loop in fp32 on the CPU, outputs
// and the gradients of q, k and v, with grouped-query heads and sequences of uneven lengths (one
// of length 1). Skips without a CUDA device.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "kernels/varlen_attention.h"

using namespace qlora;

namespace {

double rel(const at::Tensor& a, const at::Tensor& ref) {
  at::Tensor x = a.cpu().to(at::kDouble), r = ref.cpu().to(at::kDouble);
  const double den = r.norm().item<double>();
  return (x - r).norm().item<double>() / (den > 0 ? den : 1.0);
}

}  // namespace

TEST(AttentionGpu, VarlenFlashMatchesPerSequenceCpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  const at::Device cuda(at::kCUDA, 0);
  const std::vector<int64_t> cu = {0, 37, 38, 300, 301, 811};  // lengths 37, 1, 262, 1, 510
  const int64_t N = cu.back();
  for (at::ScalarType t : {at::kBFloat16, at::kHalf}) {
    for (int64_t kv : {8, 2}) {
      for (int64_t D : {64, 128}) {
        SCOPED_TRACE(std::string(t == at::kHalf ? "fp16" : "bf16") + " kv " + std::to_string(kv) + " D " +
                     std::to_string(D));
        at::manual_seed(5);
        const int64_t H = 8;
        // Inputs rounded to the device dtype first, so both sides start from the same values.
        at::Tensor q0 = at::randn({N, H, D}).to(t).to(at::kFloat), k0 = at::randn({N, kv, D}).to(t).to(at::kFloat),
                   v0 = at::randn({N, kv, D}).to(t).to(at::kFloat), dy = at::randn({N, H, D}).to(t).to(at::kFloat);
        const double scale = 1.0 / std::sqrt(static_cast<double>(D));

        at::Tensor qc = q0.clone().requires_grad_(true), kc = k0.clone().requires_grad_(true),
                   vc = v0.clone().requires_grad_(true);
        at::Tensor yc = kernels::varlen_causal_attention(qc, kc, vc, cu, scale);  // CPU: the loop
        (yc * dy).sum().backward();

        at::Tensor qg = q0.to(cuda, t).requires_grad_(true), kg = k0.to(cuda, t).requires_grad_(true),
                   vg = v0.to(cuda, t).requires_grad_(true);
        ASSERT_TRUE(kernels::varlen_attention_fused(qg));
        at::Tensor yg = kernels::varlen_causal_attention(qg, kg, vg, cu, scale);
        (yg.to(at::kFloat) * dy.to(cuda)).sum().backward();

        ASSERT_EQ(yg.sizes(), yc.sizes());
        const double tol = t == at::kHalf ? 4e-3 : 2e-2;  // one rounding of the output: 2^-11 / 2^-8 relative
        EXPECT_LE(rel(yg, yc), tol);
        EXPECT_LE(rel(qg.grad(), qc.grad()), 2 * tol);
        EXPECT_LE(rel(kg.grad(), kc.grad()), 2 * tol);
        EXPECT_LE(rel(vg.grad(), vc.grad()), 2 * tol);
        // The per-sequence loop on the GPU too (the path fp32 takes there).
        at::Tensor yl = kernels::varlen_causal_attention_loop(q0.to(cuda), k0.to(cuda), v0.to(cuda), cu, scale);
        EXPECT_LE(rel(yl, yc.detach()), 1e-5);
      }
    }
  }
}

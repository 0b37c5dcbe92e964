#include "kernels/varlen_attention.h"

#include <ATen/ATen.h>

#include <algorithm>

namespace qlora::kernels {

namespace {

void check(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const std::vector<int64_t>& cu) {
  TORCH_CHECK(q.dim() == 3 && k.dim() == 3 && v.dim() == 3, "varlen_causal_attention: q, k, v must be [N, heads, D]");
  TORCH_CHECK(k.sizes() == v.sizes() && k.size(0) == q.size(0) && k.size(2) == q.size(2),
              "varlen_causal_attention: k and v must be [N, kv_heads, D] with q's N and D");
  TORCH_CHECK(k.size(1) > 0 && q.size(1) % k.size(1) == 0,
              "varlen_causal_attention: heads must be a multiple of kv_heads");
  TORCH_CHECK(cu.size() >= 2 && cu.front() == 0 && cu.back() == q.size(0),
              "varlen_causal_attention: cu_seqlens must run from 0 to N");
  for (size_t i = 1; i < cu.size(); ++i)
    TORCH_CHECK(cu[i] > cu[i - 1], "varlen_causal_attention: cu_seqlens must be strictly increasing");
}

}  // namespace

bool varlen_attention_fused(const at::Tensor& q) {
  const auto t = q.scalar_type();
  return q.is_cuda() && (t == at::kBFloat16 || t == at::kHalf) && q.size(-1) % 8 == 0 && q.size(-1) <= 256;
}

at::Tensor varlen_causal_attention_loop(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                        const std::vector<int64_t>& cu, double scale) {
  check(q, k, v, cu);
  const bool gqa = q.size(1) != k.size(1);
  std::vector<at::Tensor> outs;
  outs.reserve(cu.size() - 1);
  for (size_t s = 0; s + 1 < cu.size(); ++s) {
    const int64_t b = cu[s], n = cu[s + 1] - cu[s];
    // [n, heads, D] -> [1, heads, n, D]
    auto seq = [&](const at::Tensor& t) { return t.narrow(0, b, n).transpose(0, 1).unsqueeze(0); };
    at::Tensor o =
        at::scaled_dot_product_attention(seq(q), seq(k), seq(v), std::nullopt, 0.0, /*is_causal=*/true, scale, gqa);
    outs.push_back(o.squeeze(0).transpose(0, 1));
  }
  return outs.size() == 1 ? outs[0].contiguous() : at::cat(outs, 0);
}

at::Tensor varlen_causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const std::vector<int64_t>& cu, double scale) {
  if (!varlen_attention_fused(q)) return varlen_causal_attention_loop(q, k, v, cu, scale);
  check(q, k, v, cu);
  int64_t max_len = 0;
  for (size_t i = 1; i < cu.size(); ++i) max_len = std::max(max_len, cu[i] - cu[i - 1]);
  const at::Tensor cu_dev =
      at::tensor(std::vector<int32_t>(cu.begin(), cu.end()), at::TensorOptions().dtype(at::kInt)).to(q.device());
  auto r =
      at::_flash_attention_forward(q.contiguous(), k.contiguous(), v.contiguous(), cu_dev, cu_dev, max_len, max_len,
                                   /*dropout_p=*/0.0, /*is_causal=*/true, /*return_debug_mask=*/false, scale);
  return std::get<0>(r);
}

}  // namespace qlora::kernels

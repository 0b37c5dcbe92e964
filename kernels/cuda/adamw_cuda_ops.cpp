// at::Tensor glue for the CUDA AdamW kernels (compiled by the host compiler).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>

#include "kernels/adamw.h"
#include "kernels/cuda/adamw_cuda.h"

namespace qlora::kernels::cuda_ops {

namespace {
cuda::FloatType float_type(const at::Tensor& t, const char* what) {
  if (!t.defined()) return cuda::FloatType::None;
  switch (t.scalar_type()) {
    case at::kFloat: return cuda::FloatType::F32;
    case at::kBFloat16: return cuda::FloatType::BF16;
    case at::kHalf: return cuda::FloatType::F16;
    default: TORCH_CHECK(false, "adamw: ", what, " must be float32, bfloat16 or float16, got ", t.scalar_type());
  }
}

void check_device(const at::Tensor& p, const at::Tensor& t, const char* what) {
  TORCH_CHECK(!t.defined() || (t.device() == p.device() && t.is_contiguous()), "adamw: ", what,
              " must be contiguous on ", p.device());
}
}  // namespace

void adamw_step_fp32_cuda(const adamw::Hyper& h, at::Tensor& p, at::Tensor& m, at::Tensor& v, const at::Tensor& g,
                          const at::Tensor& out) {
  const int64_t n = p.numel();
  TORCH_CHECK(p.scalar_type() == at::kFloat && m.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat,
              "adamw: p, m, v must be float32");
  TORCH_CHECK(m.numel() == n && v.numel() == n && g.numel() == n && (!out.defined() || out.numel() == n),
              "adamw: p, m, v, g, out must have the same number of elements");
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&p, &m, &v, &g, &out})
    check_device(p, *t, "every tensor");
  cudaError_t err = cuda::adamw_fp32(h, p.data_ptr<float>(), m.data_ptr<float>(), v.data_ptr<float>(), g.data_ptr(),
                                     float_type(g, "grad"), out.defined() ? out.data_ptr() : nullptr,
                                     float_type(out, "out"), n, at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "adamw_fp32 (CUDA): ", cudaGetErrorString(err));
}

void adamw_step_8bit_cuda(const adamw::Hyper& h, at::Tensor& p, at::Tensor& m_codes, at::Tensor& v_codes,
                          at::Tensor& absmax_m, at::Tensor& absmax_v, const at::Tensor& g, const at::Tensor& out,
                          const at::Tensor& map_m, const at::Tensor& map_v) {
  const int64_t n = p.numel();
  const int64_t nb = (n + adamw::kBlock8bit - 1) / adamw::kBlock8bit;
  TORCH_CHECK(p.scalar_type() == at::kFloat, "adamw_8bit: p must be float32");
  TORCH_CHECK(m_codes.scalar_type() == at::kByte && v_codes.scalar_type() == at::kByte && m_codes.numel() == n &&
                  v_codes.numel() == n,
              "adamw_8bit: codes must be uint8 [", n, "]");
  TORCH_CHECK(absmax_m.scalar_type() == at::kFloat && absmax_v.scalar_type() == at::kFloat && absmax_m.numel() == nb &&
                  absmax_v.numel() == nb,
              "adamw_8bit: absmax must be float32 [", nb, "]");
  TORCH_CHECK(map_m.numel() == 256 && map_v.numel() == 256 && map_m.scalar_type() == at::kFloat &&
                  map_v.scalar_type() == at::kFloat,
              "adamw_8bit: maps must be float32 [256]");
  TORCH_CHECK(g.numel() == n && (!out.defined() || out.numel() == n), "adamw_8bit: g and out must have ", n,
              " elements");
  for (const at::Tensor* t :
       std::initializer_list<const at::Tensor*>{&p, &m_codes, &v_codes, &absmax_m, &absmax_v, &g, &out, &map_m, &map_v})
    check_device(p, *t, "every tensor");
  cudaError_t err = cuda::adamw_8bit(
      h, p.data_ptr<float>(), m_codes.data_ptr<uint8_t>(), v_codes.data_ptr<uint8_t>(), absmax_m.data_ptr<float>(),
      absmax_v.data_ptr<float>(), g.data_ptr(), float_type(g, "grad"), out.defined() ? out.data_ptr() : nullptr,
      float_type(out, "out"), map_m.data_ptr<float>(), map_v.data_ptr<float>(), n, at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "adamw_8bit (CUDA): ", cudaGetErrorString(err));
}

}  // namespace qlora::kernels::cuda_ops

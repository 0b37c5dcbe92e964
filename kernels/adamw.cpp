// Dispatch of the AdamW kernels to the CPU or CUDA path, and the per-step constants.
#include "kernels/adamw.h"

#include <ATen/ATen.h>

#include <cmath>

#include "kernels/cpu/adamw_cpu.h"

namespace qlora::kernels {

#ifdef QLORA_WITH_CUDA
namespace cuda_ops {
void adamw_step_fp32_cuda(const adamw::Hyper& h, at::Tensor& p, at::Tensor& m, at::Tensor& v, const at::Tensor& g,
                          const at::Tensor& out);
void adamw_step_8bit_cuda(const adamw::Hyper& h, at::Tensor& p, at::Tensor& m_codes, at::Tensor& v_codes,
                          at::Tensor& absmax_m, at::Tensor& absmax_v, const at::Tensor& g, const at::Tensor& out,
                          const at::Tensor& map_m, const at::Tensor& map_v);
}  // namespace cuda_ops
#endif

adamw::Hyper adamw_hyper(double lr, double beta1, double beta2, double eps, double weight_decay, int64_t step) {
  TORCH_CHECK(step >= 1, "adamw_hyper: step counts from 1, got ", step);
  // torch/optim/adamw.py (_single_tensor_adamw): every scalar is a Python float (double) until it
  // meets the float32 tensor.
  const double bias_correction1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  const double bias_correction2 = 1.0 - std::pow(beta2, static_cast<double>(step));
  const double step_size = lr / bias_correction1;
  adamw::Hyper h;
  h.decay = static_cast<float>(1.0 - lr * weight_decay);
  h.one_minus_beta1 = static_cast<float>(1.0 - beta1);
  h.beta2 = static_cast<float>(beta2);
  h.one_minus_beta2 = static_cast<float>(1.0 - beta2);
  h.bc2_sqrt = static_cast<float>(std::pow(bias_correction2, 0.5));
  h.neg_step_size = static_cast<float>(-step_size);
  h.eps = static_cast<float>(eps);
  return h;
}

void adamw_step_fp32(const adamw::Hyper& h, at::Tensor& p, at::Tensor& m, at::Tensor& v, const at::Tensor& g,
                     const at::Tensor& out) {
  if (p.is_cpu()) return cpu::adamw_step_fp32_cpu(h, p, m, v, g, out);
#ifdef QLORA_WITH_CUDA
  if (p.is_cuda()) return cuda_ops::adamw_step_fp32_cuda(h, p, m, v, g, out);
#endif
  TORCH_CHECK(false, "adamw_step_fp32: unsupported device ", p.device());
}

void adamw_step_8bit(const adamw::Hyper& h, at::Tensor& p, at::Tensor& m_codes, at::Tensor& v_codes,
                     at::Tensor& absmax_m, at::Tensor& absmax_v, const at::Tensor& g, const at::Tensor& out,
                     const at::Tensor& map_m, const at::Tensor& map_v) {
  if (p.is_cpu()) return cpu::adamw_step_8bit_cpu(h, p, m_codes, v_codes, absmax_m, absmax_v, g, out, map_m, map_v);
#ifdef QLORA_WITH_CUDA
  if (p.is_cuda())
    return cuda_ops::adamw_step_8bit_cuda(h, p, m_codes, v_codes, absmax_m, absmax_v, g, out, map_m, map_v);
#endif
  TORCH_CHECK(false, "adamw_step_8bit: unsupported device ", p.device());
}

}  // namespace qlora::kernels

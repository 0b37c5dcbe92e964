// CPU twin of the AdamW kernels (see kernels/adamw.h for shapes, kernels/adamw_math.h for math).
#pragma once
#include "kernels/adamw.h"

namespace qlora::kernels::cpu {

void adamw_step_fp32_cpu(const adamw::Hyper& h, at::Tensor& p, at::Tensor& m, at::Tensor& v, const at::Tensor& g,
                         const at::Tensor& out);

void adamw_step_8bit_cpu(const adamw::Hyper& h, at::Tensor& p, at::Tensor& m_codes, at::Tensor& v_codes,
                         at::Tensor& absmax_m, at::Tensor& absmax_v, const at::Tensor& g, const at::Tensor& out,
                         const at::Tensor& map_m, const at::Tensor& map_v);

}  // namespace qlora::kernels::cpu

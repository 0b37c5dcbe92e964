// at::Tensor entry points of the CUDA NF4 paths (host code; ops.cpp dispatches here).
#pragma once
#include "kernels/ops.h"

namespace qlora::kernels::cuda_ops {

at::Tensor nf4_dequantize_cuda(const NF4Tensor& w, at::ScalarType dtype);
void nf4_dequantize_into_cuda(const NF4Tensor& w, at::Tensor& out);
at::Tensor nf4_linear_cuda(const at::Tensor& x, const NF4Tensor& w);
at::Tensor nf4_linear_grad_input_cuda(const at::Tensor& dy, const NF4Tensor& w);

}  // namespace qlora::kernels::cuda_ops

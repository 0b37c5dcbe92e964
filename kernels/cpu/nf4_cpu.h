// CPU paths of the NF4 operations (the CPU twins that define "correct" for the CUDA kernels).
#pragma once
#include "kernels/ops.h"

namespace qlora::kernels::cpu {

NF4Tensor nf4_quantize_cpu(const at::Tensor& w, int64_t blocksize, bool double_quant);
at::Tensor nf4_absmax_cpu(const NF4Tensor& w);
at::Tensor nf4_dequantize_cpu(const NF4Tensor& w, at::ScalarType dtype);
at::Tensor nf4_row_sq_norms_cpu(const NF4Tensor& w);
void nf4_dequantize_into_cpu(const NF4Tensor& w, at::Tensor& out);
at::Tensor nf4_linear_cpu(const at::Tensor& x, const NF4Tensor& w);
at::Tensor nf4_linear_grad_input_cpu(const at::Tensor& dy, const NF4Tensor& w);
at::Tensor quantize_blockwise_8bit_cpu(const at::Tensor& x, const at::Tensor& map, int64_t blocksize,
                                       at::Tensor& absmax_out);
at::Tensor dequantize_blockwise_8bit_cpu(const at::Tensor& codes, const at::Tensor& map, const at::Tensor& absmax,
                                         int64_t blocksize);

// alpha * x @ w for float32 CPU x [rows, len] (any strides) and w [len, r] (Nf4Isa::skinny).
at::Tensor skinny_mm_cpu(const at::Tensor& x, const at::Tensor& w, double alpha);
// hashed_dropout on float32 contiguous x into dst (float32, contiguous, x's numel), or dst += it.
void hashed_dropout_cpu(const at::Tensor& x, double p, uint64_t seed, at::Tensor& dst, bool accumulate);

}  // namespace qlora::kernels::cpu

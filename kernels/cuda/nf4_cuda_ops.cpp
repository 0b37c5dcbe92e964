// at::Tensor glue for the CUDA NF4 kernels (compiled by the host compiler).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>

#include "kernels/cuda/nf4_cuda.h"
#include "kernels/ops.h"

namespace qlora::kernels::cuda_ops {

at::Tensor nf4_dequantize_cuda(const NF4Tensor& w, at::ScalarType dtype) {
  const int64_t n = w.numel();
  at::Tensor out = at::empty(w.shape, w.packed.options().dtype(dtype));
  cuda::OutType t = dtype == at::kFloat ? cuda::OutType::F32
                    : dtype == at::kBFloat16 ? cuda::OutType::BF16
                                             : cuda::OutType::F16;
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
              "nf4_dequantize: dtype must be float32, bfloat16 or float16");
  at::Tensor map8;
  const float* nested = nullptr;
  const uint8_t* qabsmax = nullptr;
  const float* absmax = nullptr;
  if (w.double_quant()) {
    map8 = dynamic_map(true).to(w.device());
    qabsmax = w.absmax.data_ptr<uint8_t>();
    nested = w.nested_absmax.data_ptr<float>();
  } else {
    absmax = w.absmax.data_ptr<float>();
  }
  cudaError_t err = cuda::nf4_dequantize(w.packed.data_ptr<uint8_t>(), absmax, qabsmax, nested,
                                         map8.defined() ? map8.data_ptr<float>() : nullptr, w.nested_offset, n,
                                         static_cast<int>(w.blocksize), out.data_ptr(), t,
                                         at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "nf4_dequantize (CUDA): ", cudaGetErrorString(err));
  return out;
}

}  // namespace qlora::kernels::cuda_ops

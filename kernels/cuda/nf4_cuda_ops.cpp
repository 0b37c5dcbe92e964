// at::Tensor glue for the CUDA NF4 kernels (compiled by the host compiler).
//
// Linear ops: M <= 16 rows of activations take the fused kernels (4-bit weights read directly);
// larger M dequantizes W once into a scratch tensor of the activation dtype (from the caching
// allocator, so the same memory is reused call after call) and multiplies with cuBLAS through
// at::matmul (CUBLAS_COMPUTE_32F: fp32 accumulation; whether cuBLAS may reduce split-K partial
// sums in bf16/fp16 follows torch's allow_{bf16,fp16}_reduced_precision_reduction setting).
#include "kernels/cuda/nf4_cuda_ops.h"

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <map>
#include <mutex>

#include "kernels/cuda/nf4_cuda.h"
#include "kernels/step_profile.h"

namespace qlora::kernels::cuda_ops {

namespace {

cuda::OutType out_type(at::ScalarType dtype, const char* op) {
  switch (dtype) {
    case at::kFloat: return cuda::OutType::F32;
    case at::kBFloat16: return cuda::OutType::BF16;
    case at::kHalf: return cuda::OutType::F16;
    default: TORCH_CHECK(false, op, ": dtype must be float32, bfloat16 or float16, got ", dtype);
  }
}

// The signed dynamic map on each device, copied once (a per-call host-to-device copy would
// synchronize the stream).
const at::Tensor& map8_on(at::Device device) {
  static std::mutex mu;
  static std::map<int, at::Tensor> maps;
  std::lock_guard<std::mutex> lock(mu);
  at::Tensor& t = maps[device.index()];
  if (!t.defined()) t = dynamic_map(true).to(device);
  return t;
}

// Raw pointers of a CUDA NF4Tensor's statistics, checked.
cuda::Nf4Stats stats_of(const NF4Tensor& w, const char* op) {
  TORCH_CHECK(w.packed.is_cuda() && w.packed.scalar_type() == at::kByte && w.packed.is_contiguous() &&
                  w.packed.numel() == (w.numel() + 1) / 2,
              op, ": packed must be contiguous uint8 on the GPU with (numel+1)/2 bytes");
  TORCH_CHECK(w.absmax.device() == w.packed.device() && w.absmax.is_contiguous() && w.absmax.numel() == w.nblocks(), op,
              ": absmax must be contiguous with one entry per block, on the weight's device");
  TORCH_CHECK(w.blocksize >= 32 && w.blocksize <= 4096 && (w.blocksize & (w.blocksize - 1)) == 0, op,
              ": blocksize must be a power of two in [32, 4096]");
  cuda::Nf4Stats st;
  if (w.double_quant()) {
    TORCH_CHECK(w.absmax.scalar_type() == at::kByte, op, ": double-quantized absmax must be uint8");
    TORCH_CHECK(w.nested_absmax.device() == w.packed.device() && w.nested_absmax.scalar_type() == at::kFloat &&
                    w.nested_absmax.is_contiguous() && w.nested_absmax.numel() == (w.nblocks() + 255) / 256,
                op, ": nested_absmax must be contiguous float32 [ceil(nblocks/256)] on the weight's device");
    st.qabsmax = w.absmax.data_ptr<uint8_t>();
    st.nested = w.nested_absmax.data_ptr<float>();
    st.map8 = map8_on(w.device()).data_ptr<float>();
    st.offset = w.nested_offset;
  } else {
    TORCH_CHECK(w.absmax.scalar_type() == at::kFloat, op, ": absmax must be float32 without double quantization");
    st.absmax = w.absmax.data_ptr<float>();
  }
  return st;
}

std::vector<int64_t> out_shape(const at::Tensor& x, int64_t last) {
  std::vector<int64_t> s = x.sizes().vec();
  s.back() = last;
  return s;
}

}  // namespace

at::Tensor nf4_dequantize_cuda(const NF4Tensor& w, at::ScalarType dtype) {
  out_type(dtype, "nf4_dequantize");
  at::Tensor out = at::empty(w.shape, w.packed.options().dtype(dtype));
  nf4_dequantize_into_cuda(w, out);
  return out;
}

void nf4_dequantize_into_cuda(const NF4Tensor& w, at::Tensor& out) {
  profile::Scope prof(profile::Part::dequantize);
  const cuda::OutType t = out_type(out.scalar_type(), "nf4_dequantize");
  TORCH_CHECK(out.is_cuda() && out.device() == w.device() && out.is_contiguous() && out.numel() == w.numel(),
              "nf4_dequantize_into: out must be contiguous on the weight's device with ", w.numel(), " elements");
  c10::cuda::CUDAGuard guard(w.device());
  const cuda::Nf4Stats st = stats_of(w, "nf4_dequantize");
  cudaError_t err = cuda::nf4_dequantize(w.packed.data_ptr<uint8_t>(), st.absmax, st.qabsmax, st.nested, st.map8,
                                         st.offset, w.numel(), static_cast<int>(w.blocksize), out.data_ptr(), t,
                                         at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "nf4_dequantize (CUDA): ", cudaGetErrorString(err));
}

at::Tensor nf4_linear_cuda(const at::Tensor& x, const NF4Tensor& w) {
  TORCH_CHECK(w.shape.size() == 2, "nf4_linear: weight must be 2-D [out, in]");
  const int64_t N = w.shape[0], K = w.shape[1];
  TORCH_CHECK(x.size(-1) == K, "nf4_linear: x has ", x.size(-1), " features, weight expects ", K);
  TORCH_CHECK(x.device() == w.device(), "nf4_linear: x on ", x.device(), ", weight on ", w.device());
  const cuda::OutType t = out_type(x.scalar_type(), "nf4_linear");
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor x2 = x.reshape({-1, K}).contiguous();
  const int64_t M = x2.size(0);
  if (M == 0 || N == 0 || K == 0) return at::zeros(out_shape(x, N), x.options());
  if (cuda::nf4_gemv_supported(M, K, w.packed.data_ptr(), x2.data_ptr())) {
    const cuda::Nf4Stats st = stats_of(w, "nf4_linear");
    at::Tensor y = at::empty({M, N}, x.options());
    cudaError_t err =
        cuda::nf4_gemv(w.packed.data_ptr<uint8_t>(), st, static_cast<int>(w.blocksize), N, K, x2.data_ptr(),
                       static_cast<int>(M), y.data_ptr(), t, at::cuda::getCurrentCUDAStream());
    TORCH_CHECK(err == cudaSuccess, "nf4_linear (CUDA gemv): ", cudaGetErrorString(err));
    return y.view(out_shape(x, N));
  }
  at::Tensor wd = nf4_dequantize_cuda(w, x.scalar_type());  // scratch, reused by the caching allocator
  return at::matmul(x2, wd.t()).view(out_shape(x, N));
}

at::Tensor nf4_linear_grad_input_cuda(const at::Tensor& dy, const NF4Tensor& w) {
  TORCH_CHECK(w.shape.size() == 2, "nf4_linear_grad_input: weight must be 2-D [out, in]");
  const int64_t N = w.shape[0], K = w.shape[1];
  TORCH_CHECK(dy.size(-1) == N, "nf4_linear_grad_input: dy has ", dy.size(-1), " features, weight has ", N, " rows");
  TORCH_CHECK(dy.device() == w.device(), "nf4_linear_grad_input: dy on ", dy.device(), ", weight on ", w.device());
  const cuda::OutType t = out_type(dy.scalar_type(), "nf4_linear_grad_input");
  c10::cuda::CUDAGuard guard(dy.device());
  at::Tensor g2 = dy.reshape({-1, N}).contiguous();
  const int64_t M = g2.size(0);
  if (M == 0 || N == 0 || K == 0) return at::zeros(out_shape(dy, K), dy.options());
  if (cuda::nf4_gemv_t_supported(M, K, w.packed.data_ptr())) {
    const cuda::Nf4Stats st = stats_of(w, "nf4_linear_grad_input");
    const int splits = cuda::nf4_gemv_t_splits(N, K);
    at::Tensor ws = at::empty({splits * M * K}, dy.options().dtype(at::kFloat));
    at::Tensor dx = at::empty({M, K}, dy.options());
    cudaError_t err = cuda::nf4_gemv_t(w.packed.data_ptr<uint8_t>(), st, static_cast<int>(w.blocksize), N, K,
                                       g2.data_ptr(), static_cast<int>(M), dx.data_ptr(), t, ws.data_ptr<float>(),
                                       splits, at::cuda::getCurrentCUDAStream());
    TORCH_CHECK(err == cudaSuccess, "nf4_linear_grad_input (CUDA gemv_t): ", cudaGetErrorString(err));
    return dx.view(out_shape(dy, K));
  }
  at::Tensor wd = nf4_dequantize_cuda(w, dy.scalar_type());
  return at::matmul(g2, wd).view(out_shape(dy, K));
}

}  // namespace qlora::kernels::cuda_ops

// Dispatch of the NF4 operations to the CPU or CUDA path, and the shared tables.
#include "kernels/ops.h"

#include <ATen/ATen.h>

#include <cmath>
#include <mutex>

#include "kernels/cpu/nf4_cpu.h"
#include "kernels/cpu/nf4_cpu_isa.h"
#include "kernels/dropout.h"
#include "kernels/nf4.h"
#include "kernels/step_profile.h"
#ifdef QLORA_WITH_CUDA
#include "kernels/cuda/nf4_cuda_ops.h"
#endif

namespace qlora::kernels {

int64_t NF4Tensor::numel() const {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

int64_t NF4Tensor::nblocks() const { return nf4::num_blocks(numel(), blocksize); }

NF4Tensor NF4Tensor::to(at::Device device) const {
  NF4Tensor o = *this;
  o.packed = packed.to(device);
  o.absmax = absmax.to(device);
  if (nested_absmax.defined()) o.nested_absmax = nested_absmax.to(device);
  return o;
}

int64_t NF4Tensor::nbytes() const {
  int64_t b = packed.nbytes() + absmax.nbytes();
  if (nested_absmax.defined()) b += nested_absmax.nbytes();
  return b;
}

NF4Tensor nf4_quantize(const at::Tensor& w, int64_t blocksize, bool double_quant) {
  if (w.is_cpu()) return cpu::nf4_quantize_cpu(w, blocksize, double_quant);
  // Quantization happens once at load time; the CPU path is the reference.
  return cpu::nf4_quantize_cpu(w.cpu(), blocksize, double_quant).to(w.device());
}

at::Tensor nf4_absmax(const NF4Tensor& w) {
  if (w.device().is_cpu()) return cpu::nf4_absmax_cpu(w);
  return cpu::nf4_absmax_cpu(w.to(at::kCPU)).to(w.device());
}

at::Tensor nf4_row_sq_norms(const NF4Tensor& w) {
  if (w.device().is_cpu()) return cpu::nf4_row_sq_norms_cpu(w);
  return cpu::nf4_row_sq_norms_cpu(w.to(at::kCPU)).to(w.device());
}

at::Tensor nf4_dequantize(const NF4Tensor& w, at::ScalarType dtype) {
  profile::Scope prof(profile::Part::dequantize);
  if (w.device().is_cpu()) return cpu::nf4_dequantize_cpu(w, dtype);
#ifdef QLORA_WITH_CUDA
  if (w.device().is_cuda()) return cuda_ops::nf4_dequantize_cuda(w, dtype);
#endif
  TORCH_CHECK(false, "nf4_dequantize: unsupported device ", w.device());
}

void nf4_dequantize_into(const NF4Tensor& w, at::Tensor& out) {
  TORCH_CHECK(out.device() == w.device(), "nf4_dequantize_into: out on ", out.device(), ", weight on ", w.device());
  if (w.device().is_cpu()) return cpu::nf4_dequantize_into_cpu(w, out);
#ifdef QLORA_WITH_CUDA
  if (w.device().is_cuda()) return cuda_ops::nf4_dequantize_into_cuda(w, out);
#endif
  TORCH_CHECK(false, "nf4_dequantize_into: unsupported device ", w.device());
}

at::Tensor nf4_linear(const at::Tensor& x, const NF4Tensor& w) {
  profile::Scope prof(profile::Part::base_gemm);
  if (x.is_cpu()) return cpu::nf4_linear_cpu(x, w);
#ifdef QLORA_WITH_CUDA
  if (x.is_cuda()) return cuda_ops::nf4_linear_cuda(x, w);
#endif
  TORCH_CHECK(false, "nf4_linear: unsupported device ", x.device());
}

at::Tensor nf4_linear_grad_input(const at::Tensor& dy, const NF4Tensor& w) {
  profile::Scope prof(profile::Part::base_gemm);
  if (dy.is_cpu()) return cpu::nf4_linear_grad_input_cpu(dy, w);
#ifdef QLORA_WITH_CUDA
  if (dy.is_cuda()) return cuda_ops::nf4_linear_grad_input_cuda(dy, w);
#endif
  TORCH_CHECK(false, "nf4_linear_grad_input: unsupported device ", dy.device());
}

namespace {

// (h * c) mod 2^32 for h in [0, 2^32) held in int64, without overflowing int64: c split into
// 16-bit halves, h * c = h * c_lo + ((h * c_hi) mod 2^16) * 2^16 (mod 2^32).
at::Tensor mul_lo32(const at::Tensor& h, uint32_t c) {
  const at::Tensor a = h * static_cast<int64_t>(c & 0xFFFFu);
  const at::Tensor b = at::bitwise_left_shift(at::bitwise_and(h * static_cast<int64_t>(c >> 16), 0xFFFF), 16);
  return at::bitwise_and(a + b, 0xFFFFFFFFLL);
}

at::Tensor fmix32_t(at::Tensor h) {
  h = at::bitwise_xor(h, at::bitwise_right_shift(h, 16));
  h = mul_lo32(h, 0x85EBCA6Bu);
  h = at::bitwise_xor(h, at::bitwise_right_shift(h, 13));
  h = mul_lo32(h, 0xC2B2AE35u);
  return at::bitwise_xor(h, at::bitwise_right_shift(h, 16));
}

float dropout_scale(double p) { return static_cast<float>(1.0 / (1.0 - p)); }

bool cpu_kernel_applies(const at::Tensor& x) { return x.is_cpu() && x.scalar_type() == at::kFloat; }

}  // namespace

at::Tensor hashed_dropout_keep_mask(at::IntArrayRef shape, double p, uint64_t seed, at::Device device) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  const at::Tensor i = at::arange(n, at::TensorOptions().dtype(at::kLong).device(device));
  const int64_t k0 = static_cast<int64_t>(seed & 0xFFFFFFFFu), k1 = static_cast<int64_t>(seed >> 32);
  at::Tensor h = fmix32_t(at::bitwise_xor(at::bitwise_and(i, 0xFFFFFFFFLL), k0));
  h = fmix32_t(at::bitwise_xor(at::bitwise_xor(h, at::bitwise_right_shift(i, 32)), k1));
  return at::ge(h, static_cast<int64_t>(dropout::threshold(p))).view(shape);
}

at::Tensor hashed_dropout(const at::Tensor& x, double p, uint64_t seed) {
  TORCH_CHECK(p >= 0.0 && p < 1.0, "hashed_dropout: p must be in [0, 1), got ", p);
  if (p == 0.0) return x;
  if (cpu_kernel_applies(x)) {
    at::Tensor xc = x.contiguous();
    at::Tensor out = at::empty_like(xc);
    cpu::hashed_dropout_cpu(xc, p, seed, out, /*accumulate=*/false);
    return out;
  }
  const at::Tensor keep = hashed_dropout_keep_mask(x.sizes(), p, seed, x.device());
  return at::where(keep, x * static_cast<double>(dropout_scale(p)), at::zeros({}, x.options()));
}

void hashed_dropout_add_(at::Tensor& acc, const at::Tensor& x, double p, uint64_t seed) {
  TORCH_CHECK(acc.is_contiguous() && acc.sizes() == x.sizes() && acc.scalar_type() == x.scalar_type() &&
                  acc.device() == x.device(),
              "hashed_dropout_add_: acc must be contiguous with x's shape, dtype and device");
  if (p == 0.0) {
    acc.add_(x);
    return;
  }
  if (cpu_kernel_applies(x)) {
    cpu::hashed_dropout_cpu(x.contiguous(), p, seed, acc, /*accumulate=*/true);
    return;
  }
  acc.add_(hashed_dropout(x, p, seed));
}

at::Tensor skinny_mm(const at::Tensor& x, const at::Tensor& w, double alpha) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(0),
              "skinny_mm: expected x [rows, len] and w [len, r], got ", x.sizes(), " and ", w.sizes());
  if (cpu_kernel_applies(x) && cpu_kernel_applies(w)) return cpu::skinny_mm_cpu(x.detach(), w.detach(), alpha);
  at::Tensor out = at::mm(x, w);
  return alpha == 1.0 ? out : out.mul_(alpha);
}

at::Tensor nf4_code_table() {
  return at::tensor(std::vector<float>(std::begin(nf4::kCodes), std::end(nf4::kCodes)), at::kFloat);
}

namespace {
// bitsandbytes' create_dynamic_map(signed, max_exponent_bits=7, total_bits=8), computed with the
// same float32 tensor operations (linspace, midpoint means, scalar multiply) so every entry is
// bit-identical.
at::Tensor make_dynamic_map(bool is_signed) {
  const int max_exp = 7, total_bits = 8, non_sign = total_bits - 1;
  const int additional = (1 << (non_sign - max_exp)) - 1;
  std::vector<double> data;
  auto add_means = [&](int64_t items, int i) {
    at::Tensor b = at::linspace(0.1, 1.0, items, at::kFloat);
    at::Tensor means = (b.slice(0, 0, items - 1) + b.slice(0, 1, items)) / 2.0;
    const int e = -(max_exp - 1) + i;
    // Python: 10 ** e is an int for e >= 0 and a float otherwise; both act as a float32 scalar.
    const double scale = e >= 0 ? std::pow(10.0, e) : std::pow(10.0, static_cast<double>(e));
    at::Tensor pos = (means * scale).contiguous();
    at::Tensor neg = (means * (-scale)).contiguous();
    for (int64_t k = 0; k < pos.numel(); ++k) data.push_back(pos.data_ptr<float>()[k]);
    if (is_signed)
      for (int64_t k = 0; k < neg.numel(); ++k) data.push_back(neg.data_ptr<float>()[k]);
  };
  int i = 0;
  for (i = 0; i < max_exp; ++i) {
    const int64_t items = is_signed ? (1 << (i + non_sign - max_exp)) + 1 : (1 << (i + non_sign - max_exp + 1)) + 1;
    add_means(items, i);
  }
  if (additional > 0) add_means(additional + 1, i - 1);
  data.push_back(0.0);
  data.push_back(1.0);
  while (data.size() < 256) data.push_back(0.0);
  std::sort(data.begin(), data.end());
  std::vector<float> f(data.begin(), data.end());
  return at::tensor(f, at::kFloat);
}
}  // namespace

at::Tensor dynamic_map(bool is_signed) {
  static std::once_flag once_s, once_u;
  static at::Tensor s, u;
  if (is_signed) {
    std::call_once(once_s, [] { s = make_dynamic_map(true); });
    return s;
  }
  std::call_once(once_u, [] { u = make_dynamic_map(false); });
  return u;
}

at::Tensor quantize_blockwise_8bit(const at::Tensor& x, const at::Tensor& map, int64_t blocksize,
                                   at::Tensor& absmax_out) {
  at::Tensor codes = cpu::quantize_blockwise_8bit_cpu(x.cpu(), map.cpu(), blocksize, absmax_out);
  if (!x.is_cpu()) {
    absmax_out = absmax_out.to(x.device());
    codes = codes.to(x.device());
  }
  return codes;
}

at::Tensor dequantize_blockwise_8bit(const at::Tensor& codes, const at::Tensor& map, const at::Tensor& absmax,
                                     int64_t blocksize) {
  at::Tensor out = cpu::dequantize_blockwise_8bit_cpu(codes.cpu(), map.cpu(), absmax.cpu(), blocksize);
  return codes.is_cpu() ? out : out.to(codes.device());
}

const char* cpu_isa_name() { return cpu::nf4_isa().name; }

}  // namespace qlora::kernels

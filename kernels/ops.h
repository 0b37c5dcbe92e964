// The NF4 operations, with an at::Tensor API. One header; each function picks the CPU or CUDA
// path from the device of its inputs. Every CUDA path has a CPU twin that defines "correct".
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace qlora::kernels {

// A frozen weight in NF4, byte-compatible with bitsandbytes' Params4bit + QuantState.
struct NF4Tensor {
  at::Tensor packed;                     // uint8 [(numel+1)/2]: element 2j in the high nibble, 2j+1 low
  at::Tensor absmax;                     // float32 [nblocks]; uint8 [nblocks] with double quantization
  at::Tensor nested_absmax;              // float32 [ceil(nblocks/256)] with double quantization, else undefined
  float nested_offset = 0.f;             // mean of the float absmax values (double quantization only)
  int64_t blocksize = 64;                // elements per absmax block (bitsandbytes accepts 32..4096)
  std::vector<int64_t> shape;            // logical shape, e.g. [out, in] for a linear weight
  at::ScalarType dtype = at::kBFloat16;  // dtype of the weight before quantization (quant_state)

  bool double_quant() const { return nested_absmax.defined(); }
  int64_t numel() const;
  int64_t nblocks() const;
  at::Device device() const { return packed.device(); }
  NF4Tensor to(at::Device device) const;
  // Bytes held by the packed codes and statistics.
  int64_t nbytes() const;
};

// Quantizes a floating tensor (any shape, contiguous order) blockwise to NF4.
// double_quant: quantize the absmax values again with the signed 8-bit dynamic map in
// blocks of 256 after subtracting their mean (QLoRA's "double quantization").
NF4Tensor nf4_quantize(const at::Tensor& w, int64_t blocksize = 64, bool double_quant = true);

// float32 [nblocks]: the per-block scales, reconstructed from the double-quantized statistics
// when present.
at::Tensor nf4_absmax(const NF4Tensor& w);

// float32 [rows]: the squared L2 norm of each row of the dequantized weight viewed as [rows, cols]
// (cols = the last dimension), summed in double, one row's dequantized values at a time (no
// dequantized copy of the weight). On CUDA the statistics and codes are read on the CPU (a
// load-time operation, like nf4_absmax).
at::Tensor nf4_row_sq_norms(const NF4Tensor& w);

// Dequantizes to `dtype` (float32, bfloat16 or float16) with the logical shape.
at::Tensor nf4_dequantize(const NF4Tensor& w, at::ScalarType dtype);

// Dequantizes into an existing contiguous tensor (float32, bfloat16 or float16; numel == w.numel(),
// any shape, on w's device): reuses a scratch buffer instead of allocating (and, on the CPU,
// page-faulting in) a new one per call.
void nf4_dequantize_into(const NF4Tensor& w, at::Tensor& out);

// y = x W^T for x [..., in] and W [out, in] in NF4; y [..., out] in x's dtype, fp32 accumulation.
at::Tensor nf4_linear(const at::Tensor& x, const NF4Tensor& w);

// dx = dy W for dy [..., out]; dx [..., in] in dy's dtype, fp32 accumulation.
at::Tensor nf4_linear_grad_input(const at::Tensor& dy, const NF4Tensor& w);

// float32 [16]: the NF4 code table (bitsandbytes' quant_map).
at::Tensor nf4_code_table();

// float32 [256]: bitsandbytes' create_dynamic_map(signed) (8-bit dynamic quantization map).
at::Tensor dynamic_map(bool is_signed = true);

// 8-bit blockwise quantization with a 256-entry map (nearest entry, ties to the lower index):
// returns codes uint8 [n] and writes float32 absmax [ceil(n/blocksize)].
at::Tensor quantize_blockwise_8bit(const at::Tensor& x, const at::Tensor& map, int64_t blocksize,
                                   at::Tensor& absmax_out);
at::Tensor dequantize_blockwise_8bit(const at::Tensor& codes, const at::Tensor& map, const at::Tensor& absmax,
                                     int64_t blocksize);

// LoRA dropout with a counter-based mask (kernels/dropout.h): x * keep / (1 - p), where keep is
// a function of (seed, element index) only. The same call on a gradient with the same seed is
// dropout's backward, so nothing needs saving. Any float dtype and device; float32 on the CPU
// runs the vector kernels, everything else the tensor-op definition (hashed_dropout_keep_mask).
at::Tensor hashed_dropout(const at::Tensor& x, double p, uint64_t seed);
// acc += hashed_dropout(x, p, seed), in place (acc contiguous, x's shape, dtype and device).
void hashed_dropout_add_(at::Tensor& acc, const at::Tensor& x, double p, uint64_t seed);
// The keep mask (bool, `shape`) computed with int64 tensor ops on `device`: the definition the
// CPU kernels are tested against, and the path on other devices.
at::Tensor hashed_dropout_keep_mask(at::IntArrayRef shape, double p, uint64_t seed, at::Device device);

// alpha * x @ w where w [len, r] has few columns: LoRA's rank-r products (dropout(x) A^T, dy B,
// and with x a transposed view dy^T h and dropout(x)^T g). float32 on the CPU runs vector
// kernels, each output one FMA chain in k order (deterministic, whatever the thread count): BLAS
// ran these shapes 2-20x below its square-matrix rate. Anything else is at::mm. For use inside
// autograd nodes: the kernel path records no autograd history.
at::Tensor skinny_mm(const at::Tensor& x, const at::Tensor& w, double alpha = 1.0);

// Name of the CPU instruction set the kernels chose at run time ("avx512", "avx2", "scalar").
const char* cpu_isa_name();

}  // namespace qlora::kernels

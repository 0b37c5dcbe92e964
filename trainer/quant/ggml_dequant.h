// ggml tensor data -> fp32, one CPU routine per block type (F32, F16, BF16, Q8_0, Q4_0, Q4_1,
// Q4_K, Q5_K, Q6_K), following ggml's reference dequantization (docs/formats.md §6.6).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace qlora::io {
class GgufFile;
}

namespace qlora::quant {

// Whether ggml_to_float handles this ggml type.
bool ggml_can_dequantize(uint32_t type);

// `n` elements of ggml type `type` stored in `bytes` (exactly the type's size for n) -> `out`.
// Logic error for a type ggml_can_dequantize refuses or a size mismatch.
void ggml_to_float(uint32_t type, std::span<const uint8_t> bytes, int64_t n, float* out);

// The named tensor of a GGUF file as a new fp32 CPU tensor in row-major (torch) shape.
// UserError "FILE: NAME: ggml type X cannot be read (...)" for an unsupported type.
at::Tensor gguf_tensor_f32(const io::GgufFile& f, const std::string& name);

}  // namespace qlora::quant

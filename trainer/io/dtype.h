// Tensor dtype names, one table for every spelling the program reads or writes:
//   safetensors        "F32", "BF16", "F16", "U8", ... (every dtype the format has)
//   torch              "float32", "bfloat16", "float16" (config.json torch_dtype, bitsandbytes'
//                      quant_state dtype, bnb_4bit_compute_dtype)
//   short              "fp32", "bf16", "fp16" (qlora's config and --dtype)
#pragma once
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace qlora::io {

// Bytes per element of a safetensors dtype; 0 if unknown.
int64_t safetensors_itemsize(std::string_view dtype);
// safetensors dtype <-> scalar type. scalar_type_from_safetensors throws UserError naming
// `context` for a dtype torch cannot hold; safetensors_dtype_name fails (internal error) for a
// type safetensors has no name for.
at::ScalarType scalar_type_from_safetensors(std::string_view dtype, const std::string& context);
std::string safetensors_dtype_name(at::ScalarType t);
// Whether a safetensors dtype is a 32- or 16-bit float (F32, BF16, F16): what weights come in.
bool is_float_weight_dtype(std::string_view safetensors_dtype);

// Which names of the float types (float32, bfloat16, float16) a caller accepts.
enum class FloatNames {
  Torch,  // "float32", "bfloat16", "float16"
  Short,  // "fp32", "bf16", "fp16"
  Any,    // both, and torch's aliases "float" and "half"
};
// The float type `name` spells; nullopt when it is not one of `accept` (callers word the error).
std::optional<at::ScalarType> parse_float_dtype(std::string_view name, FloatNames accept);
// torch's name of a float type ("float32", "bfloat16", "float16"); nullopt for other types.
std::optional<std::string_view> float_dtype_name(at::ScalarType t);

}  // namespace qlora::io

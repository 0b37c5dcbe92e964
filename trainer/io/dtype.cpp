#include "trainer/io/dtype.h"

#include <c10/util/Exception.h>

#include "trainer/common/error.h"

namespace qlora::io {

namespace {

struct DtypeRow {
  at::ScalarType type;
  const char* safetensors;
  int64_t size;
  const char* torch = nullptr;  // float types only
  const char* short_name = nullptr;
  const char* alias = nullptr;  // torch's other name
};
const DtypeRow kDtypes[] = {
    {at::kFloat, "F32", 4, "float32", "fp32", "float"},
    {at::kBFloat16, "BF16", 2, "bfloat16", "bf16"},
    {at::kHalf, "F16", 2, "float16", "fp16", "half"},
    {at::kDouble, "F64", 8},
    {at::kByte, "U8", 1},
    {at::kChar, "I8", 1},
    {at::kShort, "I16", 2},
    {at::kInt, "I32", 4},
    {at::kLong, "I64", 8},
    {at::kBool, "BOOL", 1},
    {at::kUInt16, "U16", 2},
    {at::kUInt32, "U32", 4},
    {at::kUInt64, "U64", 8},
    {at::kFloat8_e4m3fn, "F8_E4M3", 1},
    {at::kFloat8_e5m2, "F8_E5M2", 1},
};

const DtypeRow* by_safetensors(std::string_view dtype) {
  for (const auto& r : kDtypes)
    if (dtype == r.safetensors) return &r;
  return nullptr;
}

const DtypeRow* by_type(at::ScalarType t) {
  for (const auto& r : kDtypes)
    if (r.type == t) return &r;
  return nullptr;
}

}  // namespace

int64_t safetensors_itemsize(std::string_view dtype) {
  const DtypeRow* r = by_safetensors(dtype);
  return r ? r->size : 0;
}

at::ScalarType scalar_type_from_safetensors(std::string_view dtype, const std::string& context) {
  const DtypeRow* r = by_safetensors(dtype);
  if (!r) user_error(context, ": unsupported safetensors dtype \"", dtype, "\"");
  return r->type;
}

std::string safetensors_dtype_name(at::ScalarType t) {
  const DtypeRow* r = by_type(t);
  TORCH_CHECK(r, "safetensors: no dtype for ", t);
  return r->safetensors;
}

bool is_float_weight_dtype(std::string_view safetensors_dtype) {
  const DtypeRow* r = by_safetensors(safetensors_dtype);
  return r && r->torch;
}

std::optional<at::ScalarType> parse_float_dtype(std::string_view name, FloatNames accept) {
  for (const auto& r : kDtypes) {
    if (!r.torch) continue;
    if (accept != FloatNames::Short && name == r.torch) return r.type;
    if (accept != FloatNames::Torch && name == r.short_name) return r.type;
    if (accept == FloatNames::Any && r.alias && name == r.alias) return r.type;
  }
  return std::nullopt;
}

std::optional<std::string_view> float_dtype_name(at::ScalarType t) {
  const DtypeRow* r = by_type(t);
  if (!r || !r->torch) return std::nullopt;
  return r->torch;
}

}  // namespace qlora::io

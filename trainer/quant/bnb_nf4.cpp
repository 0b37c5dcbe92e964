#include "trainer/quant/bnb_nf4.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "kernels/nf4.h"
#include "trainer/common/error.h"
#include "trainer/common/numbers.h"
#include "trainer/io/dtype.h"

namespace qlora::quant {

namespace {

// Bit-exact equality of a float32 tensor with a table.
bool same_table(const at::Tensor& t, const at::Tensor& table) {
  if (t.scalar_type() != at::kFloat || t.numel() != table.numel()) return false;
  at::Tensor a = t.contiguous().view(-1), b = table.contiguous().view(-1);
  return std::memcmp(a.data_ptr(), b.data_ptr(), a.nbytes()) == 0;
}

}  // namespace

std::string python_float_repr(double v) {
  // json.dumps spells the non-finite values as JavaScript does.
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
  return qlora::python_float_repr(v);
}

std::string bnb_quant_state_json(const kernels::NF4Tensor& w) {
  // Written as Python's json.dumps writes bitsandbytes' dict (", " and ": " separators, this key
  // order), so the bytes equal those transformers saves for the same weight.
  const std::optional<std::string_view> dtype = io::float_dtype_name(w.dtype);  // bitsandbytes' names
  if (!dtype)
    user_error("NF4 weights must come from bfloat16, float16 or float32 tensors, got ", c10::toString(w.dtype));
  std::string shape;
  for (size_t i = 0; i < w.shape.size(); ++i) shape += (i ? ", " : "") + std::to_string(w.shape[i]);
  std::string j = "{\"quant_type\": \"nf4\", \"blocksize\": " + std::to_string(w.blocksize) + ", \"dtype\": \"" +
                  std::string(*dtype) + "\", \"shape\": [" + shape + "]";
  if (w.double_quant()) {
    // bitsandbytes writes offset.item(): the float32 value as a Python float.
    j += ", \"nested_blocksize\": " + std::to_string(nf4::kNestedBlocksize) +
         ", \"nested_dtype\": \"float32\", \"nested_offset\": " +
         python_float_repr(static_cast<double>(w.nested_offset));
  }
  return j + "}";
}

void add_bnb_nf4(io::SafetensorsWriter& out, const std::string& prefix, const kernels::NF4Tensor& w) {
  const std::string p = prefix + ".weight";
  out.add(p, w.packed.cpu().reshape({-1, 1}));
  out.add(p + ".absmax", w.absmax.cpu());
  out.add(p + ".quant_map", kernels::nf4_code_table());
  if (w.double_quant()) {
    out.add(p + ".nested_absmax", w.nested_absmax.cpu().to(at::kFloat));
    out.add(p + ".nested_quant_map", kernels::dynamic_map(true).clone());
  }
  const std::string js = bnb_quant_state_json(w);
  at::Tensor bytes = at::empty({static_cast<int64_t>(js.size())}, at::kByte);
  std::memcpy(bytes.data_ptr(), js.data(), js.size());
  out.add(p + kBnbNf4StateSuffix, bytes);
}

std::vector<std::string> bnb_nf4_modules(const io::HfCheckpoint& ckpt) {
  const std::string suffix = std::string(".weight") + kBnbNf4StateSuffix;
  std::vector<std::string> mods;
  for (const std::string& n : ckpt.names())
    if (n.ends_with(suffix)) mods.push_back(n.substr(0, n.size() - suffix.size()));
  return mods;
}

bool is_bnb_4bit(const io::HfCheckpoint& ckpt, const std::string& prefix) {
  return ckpt.contains(prefix + ".weight.quant_state.bitsandbytes__nf4") ||
         ckpt.contains(prefix + ".weight.quant_state.bitsandbytes__fp4");
}

kernels::NF4Tensor read_bnb_nf4(const io::HfCheckpoint& ckpt, const std::string& prefix) {
  const std::string p = prefix + ".weight";
  const std::string state_key = p + kBnbNf4StateSuffix;
  auto where = [&](const std::string& key) {
    return (ckpt.contains(key) ? ckpt.file_of(key).path() : ckpt.dir()).string() + ": " + key;
  };
  if (ckpt.contains(p + ".quant_state.bitsandbytes__fp4"))
    user_error(where(p + ".quant_state.bitsandbytes__fp4"), ": fp4 weights are not supported (only nf4)");
  auto need = [&](const std::string& key) -> at::Tensor {
    if (!ckpt.contains(key)) user_error(where(key), ": missing (needed for the 4-bit weight ", p, ")");
    return ckpt.tensor(key);
  };

  // quant_state JSON
  at::Tensor sb = need(state_key);
  if (sb.scalar_type() != at::kByte || sb.dim() != 1)
    user_error(where(state_key), ": expected uint8 [n] bytes of JSON");
  const std::string text(static_cast<const char*>(sb.contiguous().data_ptr()), static_cast<size_t>(sb.numel()));
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    user_error(where(state_key), ": not valid JSON: ", json_error_text(e));
  }
  if (!j.is_object()) user_error(where(state_key), ": expected a JSON object");
  auto field = [&](const char* k) -> const nlohmann::json& {
    if (!j.contains(k)) user_error(where(state_key), ": missing field \"", k, "\"");
    return j[k];
  };
  if (!field("quant_type").is_string() || j["quant_type"] != "nf4")
    user_error(where(state_key), ": quant_type: only \"nf4\" is supported, got ", shorten(j["quant_type"].dump()));
  if (!field("blocksize").is_number_integer()) user_error(where(state_key), ": blocksize: expected an integer");
  kernels::NF4Tensor w;
  w.blocksize = j["blocksize"].get<int64_t>();
  if (w.blocksize < 32 || w.blocksize > 4096 || (w.blocksize & (w.blocksize - 1)) != 0)
    user_error(where(state_key), ": blocksize: expected a power of two in 32..4096, got ", w.blocksize);
  if (!field("dtype").is_string()) user_error(where(state_key), ": dtype: expected a string");
  const std::string dtype = j["dtype"].get<std::string>();
  const std::optional<at::ScalarType> st = io::parse_float_dtype(dtype, io::FloatNames::Torch);
  if (!st)
    user_error(where(state_key), ": dtype: expected \"bfloat16\", \"float16\" or \"float32\", got \"", dtype, "\"");
  w.dtype = *st;
  const nlohmann::json& shape = field("shape");
  if (!shape.is_array() || shape.empty()) user_error(where(state_key), ": shape: expected a list of sizes");
  for (const auto& s : shape) {
    if (!s.is_number_integer() || s.get<int64_t>() < 0)
      user_error(where(state_key), ": shape: expected non-negative integers");
    w.shape.push_back(s.get<int64_t>());
  }
  const int64_t n = w.numel(), nb = w.nblocks();

  // packed codes: uint8 [(n+1)/2, 1] (other quant_storage dtypes hold the same bytes)
  at::Tensor packed = need(p);
  if (packed.nbytes() != static_cast<size_t>((n + 1) / 2))
    user_error(where(p), ": expected ", (n + 1) / 2, " bytes of packed codes for shape ", shorten(shape.dump()),
               ", got ", packed.nbytes());
  w.packed = packed.contiguous().view(-1).view(at::kByte).clone();

  at::Tensor qmap = need(p + ".quant_map");
  if (!same_table(qmap, kernels::nf4_code_table()))
    user_error(where(p + ".quant_map"), ": not the NF4 code table (only standard NF4 is supported)");

  at::Tensor absmax = need(p + ".absmax");
  if (absmax.numel() != nb)
    user_error(where(p + ".absmax"), ": expected ", nb, " entries (one per block of ", w.blocksize, "), got ",
               absmax.numel());
  const bool dq = ckpt.contains(p + ".nested_absmax") || j.contains("nested_offset");
  if (dq) {
    if (absmax.scalar_type() != at::kByte)
      user_error(where(p + ".absmax"), ": expected uint8 codes (double quantization)");
    if (!field("nested_blocksize").is_number_integer() || j["nested_blocksize"].get<int64_t>() != nf4::kNestedBlocksize)
      user_error(where(state_key), ": nested_blocksize: only 256 is supported");
    if (j.contains("nested_dtype") && j["nested_dtype"] != "float32")
      user_error(where(state_key), ": nested_dtype: only \"float32\" is supported, got ",
                 shorten(j["nested_dtype"].dump()));
    if (!field("nested_offset").is_number()) user_error(where(state_key), ": nested_offset: expected a number");
    // Some published checkpoints hold a bf16-rounded offset; it is read as the float32 it is.
    w.nested_offset = static_cast<float>(j["nested_offset"].get<double>());
    at::Tensor nested = need(p + ".nested_absmax");
    if (nested.numel() != nf4::num_blocks(nb, nf4::kNestedBlocksize) || !nested.is_floating_point())
      user_error(where(p + ".nested_absmax"), ": expected float32 [", nf4::num_blocks(nb, nf4::kNestedBlocksize), "]");
    at::Tensor nmap = need(p + ".nested_quant_map");
    if (!same_table(nmap, kernels::dynamic_map(true)))
      user_error(where(p + ".nested_quant_map"), ": not bitsandbytes' signed dynamic map");
    w.absmax = absmax.contiguous().view(-1).clone();
    w.nested_absmax = nested.contiguous().view(-1).to(at::kFloat).clone();
  } else {
    if (!absmax.is_floating_point()) user_error(where(p + ".absmax"), ": expected float32 scales");
    w.absmax = absmax.contiguous().view(-1).to(at::kFloat).clone();
  }
  return w;
}

}  // namespace qlora::quant

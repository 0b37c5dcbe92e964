#include "trainer/quant/bnb_format.h"

#include <nlohmann/json.hpp>

#include <cstring>

#include "kernels/nf4.h"
#include "trainer/common/error.h"

namespace qlora::quant {

namespace {

using json = nlohmann::json;

// "FILE: KEY" for messages.
std::string where(const io::HfCheckpoint& ckpt, const std::string& key) {
  if (!ckpt.contains(key)) return (ckpt.dir() / "").string() + " " + key;
  return ckpt.file_of(key).path().string() + ": " + key;
}

const io::TensorInfo& require(const io::HfCheckpoint& ckpt, const std::string& key, const std::string& prefix) {
  if (!ckpt.contains(key))
    user_error(ckpt.dir().string(), ": ", key, ": missing (a bitsandbytes 4-bit weight ", prefix, " needs it)");
  return ckpt.info(key);
}

// An owned float32 copy of a floating tensor in the checkpoint, checked to hold `numel` values.
at::Tensor read_float(const io::HfCheckpoint& ckpt, const std::string& key, const std::string& prefix, int64_t numel) {
  const io::TensorInfo& info = require(ckpt, key, prefix);
  if (info.dtype != "F32" && info.dtype != "BF16" && info.dtype != "F16")
    user_error(where(ckpt, key), ": expected a float tensor, got ", info.dtype);
  if (info.numel() != numel) user_error(where(ckpt, key), ": expected ", numel, " values, got ", info.numel());
  return ckpt.tensor(key).reshape({numel}).to(at::kFloat, /*non_blocking=*/false, /*copy=*/true);
}

// The raw bytes of a tensor (any dtype: quant_storage may be other than uint8), owned.
at::Tensor read_bytes(const io::HfCheckpoint& ckpt, const std::string& key, const std::string& prefix, int64_t nbytes) {
  require(ckpt, key, prefix);
  auto span = ckpt.file_of(key).bytes(key);
  if (static_cast<int64_t>(span.size()) != nbytes)
    user_error(where(ckpt, key), ": expected ", nbytes, " bytes, got ", span.size());
  at::Tensor out = at::empty({nbytes}, at::kByte);
  if (nbytes) std::memcpy(out.data_ptr(), span.data(), nbytes);
  return out;
}

}  // namespace

bool is_bnb_4bit(const io::HfCheckpoint& ckpt, const std::string& prefix) {
  return ckpt.contains(prefix + ".weight.quant_state.bitsandbytes__nf4") ||
         ckpt.contains(prefix + ".weight.quant_state.bitsandbytes__fp4");
}

kernels::NF4Tensor read_bnb_nf4(const io::HfCheckpoint& ckpt, const std::string& prefix) {
  const std::string w = prefix + ".weight";
  if (ckpt.contains(w + ".quant_state.bitsandbytes__fp4"))
    user_error(where(ckpt, w + ".quant_state.bitsandbytes__fp4"), ": fp4 weights are not supported (only nf4)");
  const std::string qs_key = prefix + kBnbNF4StateSuffix;
  require(ckpt, qs_key, prefix);
  const std::string qs_where = where(ckpt, qs_key);

  // Quant state: JSON stored as uint8 bytes.
  auto qs_bytes = ckpt.file_of(qs_key).bytes(qs_key);
  json qs;
  try {
    qs = json::parse(std::string(reinterpret_cast<const char*>(qs_bytes.data()), qs_bytes.size()));
  } catch (const json::exception& e) {
    user_error(qs_where, ": not valid JSON: ", e.what());
  }
  if (!qs.is_object()) user_error(qs_where, ": expected a JSON object");
  auto field = [&](const char* k) -> const json& {
    if (!qs.contains(k) || qs.at(k).is_null()) user_error(qs_where, ": field \"", k, "\" missing");
    return qs.at(k);
  };
  if (!field("quant_type").is_string() || field("quant_type").get<std::string>() != "nf4")
    user_error(qs_where, ": quant_type: expected \"nf4\", got ", field("quant_type").dump());

  kernels::NF4Tensor t;
  if (!field("blocksize").is_number_integer()) user_error(qs_where, ": blocksize: expected an integer");
  t.blocksize = field("blocksize").get<int64_t>();
  if (t.blocksize < 32 || t.blocksize > 4096 || (t.blocksize & (t.blocksize - 1)) != 0)
    user_error(qs_where, ": blocksize: expected a power of two in [32, 4096], got ", t.blocksize);
  const json& shape = field("shape");
  if (!shape.is_array() || shape.size() != 2)
    user_error(qs_where, ": shape: expected [out, in], got ", shape.dump());
  for (const auto& s : shape) {
    if (!s.is_number_integer() || s.get<int64_t>() <= 0) user_error(qs_where, ": shape: expected positive integers");
    t.shape.push_back(s.get<int64_t>());
  }
  const std::string dtype = field("dtype").is_string() ? field("dtype").get<std::string>() : "";
  if (dtype == "bfloat16" || dtype == "torch.bfloat16")
    t.dtype = at::kBFloat16;
  else if (dtype == "float16" || dtype == "torch.float16")
    t.dtype = at::kHalf;
  else if (dtype == "float32" || dtype == "torch.float32")
    t.dtype = at::kFloat;
  else
    user_error(qs_where, ": dtype: expected bfloat16, float16 or float32, got ", field("dtype").dump());

  const int64_t n = t.numel();
  const int64_t nb = t.nblocks();
  t.packed = read_bytes(ckpt, w, prefix, (n + 1) / 2);

  // The code table must be bitsandbytes' NF4 table (anything else is not NF4).
  at::Tensor qmap = read_float(ckpt, w + ".quant_map", prefix, 16);
  if (!at::equal(qmap, kernels::nf4_code_table()))
    user_error(where(ckpt, w + ".quant_map"), ": not the NF4 code table");

  const bool dq = ckpt.contains(w + ".nested_absmax");
  if (dq) {
    if (!qs.contains("nested_blocksize") || !qs.at("nested_blocksize").is_number_integer() ||
        qs.at("nested_blocksize").get<int64_t>() != nf4::kNestedBlocksize)
      user_error(qs_where, ": nested_blocksize: expected ", nf4::kNestedBlocksize);
    if (!field("nested_offset").is_number()) user_error(qs_where, ": nested_offset: expected a number");
    // Some checkpoints store a bf16-rounded offset; it is used as float32 either way.
    t.nested_offset = static_cast<float>(field("nested_offset").get<double>());
    const io::TensorInfo& am = require(ckpt, w + ".absmax", prefix);
    if (am.dtype != "U8" || am.numel() != nb)
      user_error(where(ckpt, w + ".absmax"), ": expected uint8 [", nb, "] (double-quantized absmax), got ", am.dtype,
                 " with ", am.numel(), " values");
    t.absmax = ckpt.tensor(w + ".absmax").reshape({nb}).clone();
    t.nested_absmax = read_float(ckpt, w + ".nested_absmax", prefix, nf4::num_blocks(nb, nf4::kNestedBlocksize));
    at::Tensor nmap = read_float(ckpt, w + ".nested_quant_map", prefix, 256);
    if (!at::equal(nmap, kernels::dynamic_map(true)))
      user_error(where(ckpt, w + ".nested_quant_map"), ": not bitsandbytes' signed 8-bit dynamic map");
  } else {
    t.absmax = read_float(ckpt, w + ".absmax", prefix, nb);
  }
  return t;
}

}  // namespace qlora::quant

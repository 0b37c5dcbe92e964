// bitsandbytes 4-bit state-dict entries <-> kernels::NF4Tensor (docs/formats.md §2).
//
// For a module prefix P (e.g. "model.layers.0.self_attn.q_proj") a bnb Linear4bit saves:
//   P.weight                                  uint8 [(out*in+1)/2, 1]   packed codes
//   P.weight.absmax                           uint8 [nblocks] with double quantization, else f32
//   P.weight.quant_map                        f32 [16]                  the NF4 code table
//   P.weight.nested_absmax                    f32 [ceil(nblocks/256)]   (double quantization)
//   P.weight.nested_quant_map                 f32 [256]                 (double quantization)
//   P.weight.quant_state.bitsandbytes__nf4    uint8 bytes of the JSON
//     {"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [out, in],
//      "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": <float>}
// This is what transformers' save_pretrained writes for a "bnb-4bit" model.
#pragma once
#include <string>
#include <vector>

#include "kernels/ops.h"
#include "trainer/io/hf_checkpoint.h"
#include "trainer/io/safetensors.h"

namespace qlora::quant {

// The key suffix that marks a bnb NF4 module: P + ".weight" + kBnbNf4StateSuffix.
inline constexpr const char* kBnbNf4StateSuffix = ".quant_state.bitsandbytes__nf4";

// The quant_state JSON of an NF4 weight, in bitsandbytes' key order.
std::string bnb_quant_state_json(const kernels::NF4Tensor& w);

// Adds P.weight and its statistics to `out` (CPU copies; the tensor may live on any device).
void add_bnb_nf4(io::SafetensorsWriter& out, const std::string& prefix, const kernels::NF4Tensor& w);

// True when the checkpoint stores module `prefix` as a bitsandbytes 4-bit weight (nf4 or fp4;
// read_bnb_nf4 refuses fp4 with a clear error).
bool is_bnb_4bit(const io::HfCheckpoint& ckpt, const std::string& prefix);

// Module prefixes P that hold a bnb NF4 weight (P.weight.quant_state.bitsandbytes__nf4), sorted.
std::vector<std::string> bnb_nf4_modules(const io::HfCheckpoint& ckpt);

// Reads module P's NF4 weight (CPU tensors owning their memory). UserError naming the file and
// key when an entry is missing, malformed, not NF4 (e.g. fp4), or uses a code table other than
// the NF4 table / the signed dynamic map (our kernels assume those).
kernels::NF4Tensor read_bnb_nf4(const io::HfCheckpoint& ckpt, const std::string& prefix);

// Python's repr of a float, as json.dumps writes it (the nested_offset text).
std::string python_float_repr(double v);

}  // namespace qlora::quant

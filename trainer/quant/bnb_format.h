// bitsandbytes 4-bit state-dict keys (what HF "bnb-4bit" checkpoints hold; REFERENCE.md §1).
//
// For a linear module prefix P (e.g. "model.layers.0.self_attn.q_proj"):
//   P.weight                                   uint8 [(out*in+1)/2, 1] packed NF4 codes
//   P.weight.absmax                            uint8 [nblocks] (double quant) | float32 [nblocks]
//   P.weight.quant_map                         float32 [16] the NF4 code table
//   P.weight.nested_absmax                     float32 [ceil(nblocks/256)] (double quant only)
//   P.weight.nested_quant_map                  float32 [256] signed dynamic map (double quant only)
//   P.weight.quant_state.bitsandbytes__nf4     uint8 bytes of JSON {quant_type, blocksize, dtype,
//                                              shape, nested_blocksize, nested_dtype, nested_offset}
// Reading lives here (read_bnb_nf4); the writer for `qlora quantize` joins it in this file.
#pragma once
#include <string>

#include "kernels/ops.h"
#include "trainer/io/hf_checkpoint.h"

namespace qlora::quant {

// Suffix of the quant-state key for NF4 (an FP4 checkpoint has "...bitsandbytes__fp4").
inline constexpr const char* kBnbNF4StateSuffix = ".weight.quant_state.bitsandbytes__nf4";

// True when the checkpoint stores module `prefix` as a bitsandbytes 4-bit weight (nf4 or fp4).
bool is_bnb_4bit(const io::HfCheckpoint& ckpt, const std::string& prefix);

// Reads module `prefix` as an NF4Tensor without re-quantizing: the packed codes and statistics
// are copied out of the mapping as they are (CPU tensors the caller owns). UserError naming the
// file and key when a key is missing, the quant type is not nf4, the code table or nested map is
// not bitsandbytes' own, or sizes disagree with the shape.
kernels::NF4Tensor read_bnb_nf4(const io::HfCheckpoint& ckpt, const std::string& prefix);

}  // namespace qlora::quant

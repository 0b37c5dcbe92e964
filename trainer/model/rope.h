// Rotary position embeddings, HF "rotate_half" convention (docs/formats.md §4.3).
#pragma once
#include <ATen/core/Tensor.h>

#include <utility>

#include "trainer/model/model_config.h"

namespace qlora::model {

// float32 [head_dim / 2]: 1 / theta^(arange(0, d, 2) / d), then scaled per rope.type
// (linear: / factor; llama3: frequency-dependent), computed with the same float32 tensor
// operations as transformers' rope init functions.
at::Tensor rope_inv_freq(const ModelConfig& c);
// The same for one RoPE parameter set (e.g. Gemma 3's rope_local) over head_dim.
at::Tensor rope_inv_freq(const RopeConfig& rope, int64_t head_dim);

// cos, sin [B, T, head_dim] in `dtype` for position_ids [B, T]: emb = cat(freqs, freqs) with
// freqs = position * inv_freq in float32, then cos/sin in float32 and one cast.
std::pair<at::Tensor, at::Tensor> rope_cos_sin(const at::Tensor& inv_freq, const at::Tensor& position_ids,
                                               at::ScalarType dtype);

// x [B, heads, T, head_dim]; cos, sin [B, T, head_dim]: x cos + rotate_half(x) sin, where
// rotate_half(x) = cat(-x[..., d/2:], x[..., :d/2]).
at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

}  // namespace qlora::model

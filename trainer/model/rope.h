// Rotary position embeddings, HF "rotate_half" convention (docs/formats.md §4.3).
#pragma once
#include <ATen/core/Tensor.h>

#include <utility>

#include "trainer/model/model_config.h"

namespace qlora::model {

// float32 [d / 2] for d = rope.rotary_dim: 1 / theta^(arange(0, d, 2) / d), then scaled per
// rope.type (linear: / factor; llama3: frequency-dependent; longrope: / short_factor, or
// / long_factor when `long_factors`), computed with the same float32 tensor operations as
// transformers' rope init functions.
at::Tensor rope_inv_freq(const ModelConfig& c, bool long_factors = false);
// The same for one RoPE parameter set (e.g. Gemma 3's rope_local) over head_dim.
at::Tensor rope_inv_freq(const RopeConfig& rope, int64_t head_dim);

// cos, sin [B, T, d] in `dtype` for position_ids [B, T]: emb = cat(freqs, freqs) with
// freqs = position * inv_freq in float32, then cos/sin in float32, times `scale` when it is not 1
// (longrope's attention factor), and one cast.
std::pair<at::Tensor, at::Tensor> rope_cos_sin(const at::Tensor& inv_freq, const at::Tensor& position_ids,
                                               at::ScalarType dtype, double scale = 1.0);

// x [B, heads, T, head_dim]; cos, sin [B, T, d] with d <= head_dim: the first d dims of each head
// become x cos + rotate_half(x) sin, where rotate_half(x) = cat(-x[..., d/2:], x[..., :d/2]); the
// rest pass unchanged (partial rotary).
at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

}  // namespace qlora::model

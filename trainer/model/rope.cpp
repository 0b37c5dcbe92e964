#include "trainer/model/rope.h"

#include <cmath>

namespace qlora::model {

at::Tensor rope_inv_freq(const RopeConfig& rope, int64_t head_dim) {
  ModelConfig c;
  c.rope = rope;
  c.head_dim = head_dim;
  return rope_inv_freq(c);
}

at::Tensor rope_inv_freq(const ModelConfig& c, bool long_factors) {
  const int64_t d = c.rope.rotary_dim > 0 ? c.rope.rotary_dim : c.head_dim;
  at::Tensor exponent = at::arange(0, d, 2, at::kLong).to(at::kFloat) / static_cast<double>(d);
  if (c.rope.type == "longrope") {
    const std::vector<double>& f = long_factors ? c.rope.long_factor : c.rope.short_factor;
    at::Tensor ext = at::tensor(f, at::kDouble).to(at::kFloat);
    return 1.0 / (ext * at::pow(c.rope.theta, exponent));
  }
  at::Tensor inv = 1.0 / at::pow(c.rope.theta, exponent);
  if (c.rope.type == "linear") return inv / c.rope.factor;
  if (c.rope.type == "llama3") {
    const double factor = c.rope.factor, low = c.rope.low_freq_factor, high = c.rope.high_freq_factor;
    const double old_len = static_cast<double>(c.rope.original_max_position_embeddings);
    const double low_wavelen = old_len / low, high_wavelen = old_len / high;
    at::Tensor wavelen = (2 * M_PI) / inv;
    // wavelen > low_wavelen: inv / factor; wavelen < high_wavelen: inv; between: interpolate.
    at::Tensor llama = at::where(wavelen > low_wavelen, inv / factor, inv);
    at::Tensor smooth = (old_len / wavelen - low) / (high - low);
    at::Tensor smoothed = (1 - smooth) * llama / factor + smooth * llama;
    at::Tensor medium = at::logical_not(wavelen < high_wavelen).logical_and(at::logical_not(wavelen > low_wavelen));
    return at::where(medium, smoothed, llama);
  }
  return inv;
}

std::pair<at::Tensor, at::Tensor> rope_cos_sin(const at::Tensor& inv_freq, const at::Tensor& position_ids,
                                               at::ScalarType dtype, double scale) {
  at::Tensor inv = inv_freq.to(position_ids.device(), at::kFloat);
  at::Tensor freqs = position_ids.to(at::kFloat).unsqueeze(-1) * inv.view({1, 1, -1});  // [B, T, d/2]
  at::Tensor emb = at::cat({freqs, freqs}, -1);
  if (scale != 1.0) return {(emb.cos() * scale).to(dtype), (emb.sin() * scale).to(dtype)};
  return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t d = cos.size(-1);
  if (d < x.size(-1)) return at::cat({apply_rope(x.slice(-1, 0, d), cos, sin), x.slice(-1, d)}, -1);
  const int64_t half = d / 2;
  at::Tensor rot = at::cat({-x.slice(-1, half), x.slice(-1, 0, half)}, -1);
  return x * cos.unsqueeze(1) + rot * sin.unsqueeze(1);
}

}  // namespace qlora::model

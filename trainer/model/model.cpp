// The decoder's forward pass, loss and parameter access (loading is in loader.cpp).
#include "trainer/model/model.h"

#include <c10/core/GradMode.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

#include "kernels/step_profile.h"
#include "kernels/varlen_attention.h"
#include "trainer/common/error.h"
#include "trainer/io/peft.h"
#include "trainer/model/activation_checkpoint.h"
#include "trainer/model/lora_linear.h"
#include "trainer/model/nf4_linear.h"
#include "trainer/model/rope.h"

namespace qlora::model {

namespace {

using kernels::profile::Part;
using kernels::profile::Scope;

// transformers' RMSNorm: fp32 x * rsqrt(mean(x²) + eps), cast back, times weight. Gemma's:
// fp32 x * rsqrt(mean(x²) + eps) * (1 + weight in fp32), then cast.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& w, const ModelConfig& c) {
  Scope prof(Part::norm_rope_act);
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor var = xf.pow(2).mean(-1, /*keepdim=*/true);
  if (c.gemma) return ((xf * at::rsqrt(var + c.rms_norm_eps)) * (1.0 + w.to(at::kFloat))).to(x.scalar_type());
  return w * (xf * at::rsqrt(var + c.rms_norm_eps)).to(x.scalar_type());
}

// Token embeddings; Gemma multiplies them by sqrt(hidden_size) cast to the compute dtype first.
at::Tensor embed(const Model& m, const at::Tensor& ids) {
  at::Tensor x = at::embedding(m.embed_tokens, ids);
  if (!m.config.gemma) return x;
  const double scale = std::sqrt(static_cast<double>(m.config.hidden_size));
  return x * at::scalar_tensor(scale, at::TensorOptions().dtype(at::kFloat)).to(x.scalar_type()).to(x.device());
}

// Attention written out (Gemma 2's soft-capped scores, which SDPA cannot do): q [B, heads, Tq, D],
// k, v [B, kv_heads, Tk, D]; scores = q k^T * scale, capped to cap * tanh(scores / cap), masked
// (mask undefined: causal with Tq == Tk), softmax in fp32 and cast back, times v.
at::Tensor softcapped_attention(const at::Tensor& q, at::Tensor k, at::Tensor v, at::Tensor mask, double scale,
                                double cap) {
  const int64_t groups = q.size(1) / k.size(1);
  if (groups > 1) {
    k = k.repeat_interleave(groups, 1);
    v = v.repeat_interleave(groups, 1);
  }
  at::Tensor s = at::matmul(q, k.transpose(2, 3)) * scale;
  s = at::tanh(s / cap) * cap;
  if (!mask.defined())
    mask = at::ones({q.size(2), k.size(2)}, at::TensorOptions().dtype(at::kBool).device(q.device())).tril();
  s = s.masked_fill(mask.logical_not(), -std::numeric_limits<double>::infinity());
  return at::matmul(at::softmax(s, -1, at::kFloat).to(q.scalar_type()), v);
}

// Boolean attention mask [B or 1, 1, T, T] (true = attend), or undefined when plain causal
// attention is exact (no segments, no window that bites).
at::Tensor attention_mask(const at::Tensor& segment_ids, int64_t T, std::optional<int64_t> window, at::Device dev) {
  const bool window_bites = window && *window < T;
  if (!segment_ids.defined() && !window_bites) return {};
  at::Tensor i = at::arange(T, at::TensorOptions().dtype(at::kLong).device(dev)).unsqueeze(1);
  at::Tensor j = i.view({1, T});
  at::Tensor m = j <= i;                                   // causal
  if (window_bites) m = m.logical_and((i - j) < *window);  // kv > q - window
  m = m.view({1, 1, T, T});
  if (segment_ids.defined()) {
    at::Tensor s = segment_ids.to(dev);
    m = m.logical_and((s.unsqueeze(2) == s.unsqueeze(1)).unsqueeze(1));  // [B, 1, T, T]
  }
  return m;
}

// Boolean mask [1, 1, T, past + T] for T new tokens after `past` cached ones (query i sits at
// position past + i).
at::Tensor cached_attention_mask(int64_t past, int64_t T, std::optional<int64_t> window, at::Device dev) {
  auto opt = at::TensorOptions().dtype(at::kLong).device(dev);
  at::Tensor i = at::arange(past, past + T, opt).unsqueeze(1);
  at::Tensor j = at::arange(past + T, opt).view({1, past + T});
  at::Tensor m = j <= i;
  if (window) m = m.logical_and((i - j) < *window);
  return m.view({1, 1, T, past + T});
}

struct BlockInputs {
  at::Tensor cos, sin;                // [B, T, head_dim]
  at::Tensor cos_local, sin_local;    // the same from Model::inv_freq_local (gemma3_text), else undefined
  at::Tensor mask_full, mask_window;  // see attention_mask
  KVCache* cache = nullptr;           // forward_cached: append to / attend over this cache
  // Packed rows (forward_loss): the hidden state is [N, H] with row i at flat position rows[i]
  // of the [B, T] batch (padding left out); attention scatters q, k, v back to [B, T] (zeros
  // elsewhere) and gathers its output at out_flat. Undefined: the hidden state is [B, T, H].
  at::Tensor rows;  // int64 [N]
  int64_t B = 0, T = 0;
  // After this block's attention keep only these rows (indices into rows; their flat positions
  // in out_flat), else all of rows. Set for the last block: only the rows the loss reads.
  at::Tensor out_rows, out_flat;
  // Variable-length attention over the rows (Model::varlen_attention): the sequences' starts in
  // rows, then N; cos/sin are then [1, N, head_dim] for the rows, and no mask is built.
  std::vector<int64_t> cu_seqlens;
};

// Writes k, v [B, kv_heads, T, D] at positions cache.length.. of layer `layer` (growing the
// buffers when needed) and returns the valid prefix [B, kv_heads, length + T, D] of each.
std::pair<at::Tensor, at::Tensor> cache_append(KVCache& cache, int64_t layer, const at::Tensor& k,
                                               const at::Tensor& v) {
  const int64_t past = cache.length, T = k.size(2), need = past + T;
  at::Tensor& ck = cache.k[layer];
  at::Tensor& cv = cache.v[layer];
  if (!ck.defined() || ck.size(2) < need) {
    const int64_t cap = std::max({need, cache.reserve, ck.defined() ? 2 * ck.size(2) : int64_t{0}});
    at::Tensor nk = at::empty({k.size(0), k.size(1), cap, k.size(3)}, k.options());
    at::Tensor nv = at::empty({v.size(0), v.size(1), cap, v.size(3)}, v.options());
    if (past > 0) {
      nk.narrow(2, 0, past).copy_(ck.narrow(2, 0, past));
      nv.narrow(2, 0, past).copy_(cv.narrow(2, 0, past));
    }
    ck = nk;
    cv = nv;
  }
  ck.narrow(2, past, T).copy_(k);
  cv.narrow(2, past, T).copy_(v);
  return {ck.narrow(2, 0, need), cv.narrow(2, 0, need)};
}

// q, k, v [..., q_out], [..., kv_out], [..., kv_out] of h [..., hidden]: three projections, or
// phi3's one qkv_proj split along its rows.
std::tuple<at::Tensor, at::Tensor, at::Tensor> project_qkv(const ModelConfig& c, const DecoderLayer& L,
                                                           const at::Tensor& h, bool training, at::Generator* gen) {
  if (c.fused_qkv) {
    at::Tensor qkv = L.qkv_proj.forward(h, training, gen);
    return {qkv.narrow(-1, 0, c.q_out()), qkv.narrow(-1, c.q_out(), c.kv_out()),
            qkv.narrow(-1, c.q_out() + c.kv_out(), c.kv_out())};
  }
  return {L.q_proj.forward(h, training, gen), L.k_proj.forward(h, training, gen), L.v_proj.forward(h, training, gen)};
}

at::Tensor self_attention(const Model& m, const DecoderLayer& L, int64_t layer, const at::Tensor& h,
                          const BlockInputs& in, bool training, at::Generator* gen) {
  const ModelConfig& c = m.config;
  const double scale = c.attention_scale();
  const bool local = c.uses_local_rope(layer);
  const at::Tensor& cos = local ? in.cos_local : in.cos;
  const at::Tensor& sin = local ? in.sin_local : in.sin;
  if (!in.cu_seqlens.empty()) {  // the rows as sequences laid end to end: [N, heads, D]
    const int64_t N = h.size(0), D = c.head_dim;
    auto [q, k, v] = project_qkv(c, L, h, training, gen);
    q = q.reshape({N, c.num_attention_heads, D});
    k = k.reshape({N, c.num_key_value_heads, D});
    v = v.reshape({N, c.num_key_value_heads, D});
    if (c.qk_norm) {
      q = rms_norm(q, L.q_norm, c);
      k = rms_norm(k, L.k_norm, c);
    }
    {
      Scope prof(Part::norm_rope_act);  // apply_rope takes [1, heads, N, D] with cos/sin [1, N, D]
      q = apply_rope(q.transpose(0, 1).unsqueeze(0), cos, sin).squeeze(0).transpose(0, 1);
      k = apply_rope(k.transpose(0, 1).unsqueeze(0), cos, sin).squeeze(0).transpose(0, 1);
    }
    at::Tensor o;
    {
      Scope prof(Part::attention);
      o = kernels::varlen_causal_attention(q, k, v, in.cu_seqlens, scale);
    }
    o = o.reshape({N, c.q_out()});
    if (in.out_rows.defined()) o = o.index_select(0, in.out_rows);
    return L.o_proj.forward(o, training, gen);
  }
  const bool packed = in.rows.defined();
  const int64_t B = packed ? in.B : h.size(0), T = packed ? in.T : h.size(1), D = c.head_dim;
  auto unpack = [&](const at::Tensor& t) {
    return packed ? at::zeros({B * T, t.size(1)}, t.options()).index_copy(0, in.rows, t) : t;
  };
  auto [q, k, v] = project_qkv(c, L, h, training, gen);
  q = unpack(q).reshape({B, T, c.num_attention_heads, D});
  k = unpack(k).reshape({B, T, c.num_key_value_heads, D});
  v = unpack(v).reshape({B, T, c.num_key_value_heads, D});
  if (c.qk_norm) {
    q = rms_norm(q, L.q_norm, c);
    k = rms_norm(k, L.k_norm, c);
  }
  {
    Scope prof(Part::norm_rope_act);
    q = apply_rope(q.transpose(1, 2), cos, sin);  // [B, heads, T, D]
    k = apply_rope(k.transpose(1, 2), cos, sin);
  }
  v = v.transpose(1, 2);
  if (in.cache) std::tie(k, v) = cache_append(*in.cache, layer, k, v);
  const at::Tensor& mask = c.window_of(layer) ? in.mask_window : in.mask_full;
  if (c.attn_logit_softcapping) {
    at::Tensor o;
    {
      Scope prof(Part::attention);
      o = softcapped_attention(q, k, v, mask, scale, *c.attn_logit_softcapping);
    }
    o = o.transpose(1, 2).reshape({B, T, c.q_out()});
    if (packed) o = o.view({B * T, c.q_out()}).index_select(0, in.out_flat.defined() ? in.out_flat : in.rows);
    return L.o_proj.forward(o, training, gen);
  }
  bool gqa = c.num_key_value_heads != c.num_attention_heads;
  if (gqa && q.is_cuda() && (mask.defined() || q.scalar_type() == at::kFloat)) {
    // Only CUDA's flash kernel (fp16/bf16, no mask) broadcasts kv heads; with a mask or in fp32
    // the memory-efficient kernel is chosen, and it rejects enable_gqa, so SDPA would silently
    // fall back to the T x T math path. Repeat the kv heads instead (transformers' repeat_kv;
    // the same numbers).
    const int64_t groups = c.num_attention_heads / c.num_key_value_heads;
    k = k.repeat_interleave(groups, 1);
    v = v.repeat_interleave(groups, 1);
    gqa = false;
  }
  at::Tensor o;
  {
    Scope prof(Part::attention);
    o = mask.defined() ? at::scaled_dot_product_attention(q, k, v, mask, 0.0, false, scale, gqa)
                       : at::scaled_dot_product_attention(q, k, v, std::nullopt, 0.0, /*is_causal=*/true, scale, gqa);
  }
  o = o.transpose(1, 2).reshape({B, T, c.q_out()});
  if (packed) o = o.view({B * T, c.q_out()}).index_select(0, in.out_flat.defined() ? in.out_flat : in.rows);
  return L.o_proj.forward(o, training, gen);
}

// SwiGLU: down(silu(gate(x)) * up(x)).
at::Tensor swiglu(const Linear& gate_proj, const Linear& up_proj, const Linear& down_proj, const at::Tensor& x,
                  bool training, at::Generator* gen) {
  at::Tensor gate = gate_proj.forward(x, training, gen);  // gate before up, as transformers calls them
  at::Tensor up = up_proj.forward(x, training, gen);
  at::Tensor act;
  {
    Scope prof(Part::norm_rope_act);
    act = at::silu(gate) * up;
  }
  return down_proj.forward(act, training, gen);
}

// Expert e's LoRA delta on x [n, in] (lora_target_parameters): scaling * x A_e^T B_e^T with
// PEFT's layout of the stacked adapter (model.h).
at::Tensor expert_lora_delta(const LoraAdapter& a, int64_t e, int64_t experts, const at::Tensor& x) {
  const int64_t r = a.A.size(0) / experts;
  const at::Tensor A = a.A.narrow(0, e * r, r);                           // [r, in]
  const at::Tensor B = a.B.view({a.B.size(0), r, experts}).select(2, e);  // [out, r]
  return at::matmul(at::matmul(x, A.t()), B.t()) * a.scaling;
}

// An expert's SwiGLU with the experts' stacked adapters (PEFT's ParamWrapper on gate_up_proj and
// down_proj), or plain swiglu without them.
at::Tensor expert_mlp(const ModelConfig& c, const DecoderLayer& L, int64_t e, const at::Tensor& x, bool training,
                      at::Generator* gen) {
  const Expert& E = L.experts[e];
  if (!L.experts_gate_up_lora && !L.experts_down_lora)
    return swiglu(E.gate_proj, E.up_proj, E.down_proj, x, training, gen);
  at::Tensor gate = E.gate_proj.forward(x, training, gen);
  at::Tensor up = E.up_proj.forward(x, training, gen);
  if (L.experts_gate_up_lora) {
    const at::Tensor d = expert_lora_delta(*L.experts_gate_up_lora, e, c.num_experts, x);
    const int64_t I = gate.size(-1);
    gate = gate + d.narrow(-1, 0, I);
    up = up + d.narrow(-1, I, I);
  }
  at::Tensor act;
  {
    Scope prof(Part::norm_rope_act);
    act = at::silu(gate) * up;
  }
  at::Tensor y = E.down_proj.forward(act, training, gen);
  if (L.experts_down_lora) y = y + expert_lora_delta(*L.experts_down_lora, e, c.num_experts, act);
  return y;
}

// A mixture-of-experts MLP over n [..., hidden], as transformers' sparse MoE blocks compute it:
// router logits in the compute dtype, softmax in fp32, the top k experts per token (weights
// renormalized when norm_topk_prob; cast to the compute dtype for the qwen families, kept fp32
// for mixtral), each expert run on its tokens only and added back weighted; qwen2_moe adds
// sigmoid(shared_expert_gate x) * shared_expert(x). router_logits: receives the router's logits
// [tokens, experts] when not null.
at::Tensor moe_mlp(const ModelConfig& c, const DecoderLayer& L, const at::Tensor& n, bool training, at::Generator* gen,
                   at::Tensor* router_logits) {
  const int64_t H = c.hidden_size;
  const at::Tensor x = n.reshape({-1, H});
  at::Tensor logits = at::linear(x, L.router);
  if (router_logits) *router_logits = logits;
  at::Tensor probs = at::softmax(logits, -1, at::kFloat);
  auto [top_w, top_i] = probs.topk(c.num_experts_per_tok, -1);
  if (c.norm_topk_prob) top_w = top_w / top_w.sum(-1, /*keepdim=*/true);
  if (c.model_type != "mixtral") top_w = top_w.to(logits.scalar_type());
  at::Tensor out = at::zeros_like(x);
  const at::Tensor idx = top_i.to(at::kCPU).contiguous();  // [tokens, k]: which expert, per slot
  const int64_t* ip = idx.data_ptr<int64_t>();
  const int64_t tokens = idx.size(0), k = idx.size(1);
  std::vector<std::vector<int64_t>> tok(c.num_experts), slot(c.num_experts);
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t j = 0; j < k; ++j) {
      tok[ip[t * k + j]].push_back(t);
      slot[ip[t * k + j]].push_back(t * k + j);
    }
  const at::Tensor w_flat = top_w.reshape({-1});
  for (int64_t e = 0; e < c.num_experts; ++e) {
    if (tok[e].empty()) continue;
    const at::Tensor t = at::tensor(tok[e], at::kLong).to(x.device());
    const at::Tensor w = w_flat.index_select(0, at::tensor(slot[e], at::kLong).to(x.device())).unsqueeze(1);
    at::Tensor y = expert_mlp(c, L, e, x.index_select(0, t), training, gen) * w;
    out = out.index_add(0, t, y.to(out.scalar_type()));
  }
  if (L.shared_expert_gate.defined()) {
    const Expert& S = L.shared_expert;
    at::Tensor shared = swiglu(S.gate_proj, S.up_proj, S.down_proj, x, training, gen);
    out = out + at::sigmoid(at::linear(x, L.shared_expert_gate)) * shared;
  }
  return out.view(n.sizes());
}

at::Tensor decoder_layer(const Model& m, int64_t layer, const at::Tensor& x, const BlockInputs& in, bool training,
                         at::Generator* gen, at::Tensor* router_logits = nullptr) {
  const DecoderLayer& L = m.layers[layer];
  const ModelConfig& c = m.config;
  at::Tensor a = self_attention(m, L, layer, rms_norm(x, L.input_layernorm, c), in, training, gen);
  if (c.gemma) a = rms_norm(a, L.post_attention_layernorm, c);
  at::Tensor h = (in.out_rows.defined() ? x.index_select(0, in.out_rows) : x) + a;
  at::Tensor n = rms_norm(h, c.gemma ? L.pre_feedforward_layernorm : L.post_attention_layernorm, c);
  if (c.is_moe()) return h + moe_mlp(c, L, n, training, gen, router_logits);
  at::Tensor gate, up;
  if (c.fused_gate_up) {  // phi3: gate rows, then up rows
    at::Tensor gu = L.gate_up_proj.forward(n, training, gen);
    const int64_t I = c.intermediate_size;
    gate = gu.narrow(-1, 0, I);
    up = gu.narrow(-1, I, I);
  } else {
    gate = L.gate_proj.forward(n, training, gen);  // gate before up, as transformers calls them
    up = L.up_proj.forward(n, training, gen);
  }
  at::Tensor act;
  {
    Scope prof(Part::norm_rope_act);
    act = (c.gemma ? at::gelu(gate, "tanh") : at::silu(gate)) * up;
  }
  at::Tensor mlp = L.down_proj.forward(act, training, gen);
  if (c.gemma) mlp = rms_norm(mlp, L.post_feedforward_layernorm, c);
  return h + mlp;
}

// cos, sin for positions pos [B, T] (any shape [.., T]). longrope takes its long factors when
// the largest position reaches past the pretraining length, for the whole batch (transformers
// decides per forward call from max(position_ids) + 1), and scales cos and sin.
std::pair<at::Tensor, at::Tensor> rope_tables(const Model& m, const at::Tensor& pos) {
  const RopeConfig& r = m.config.rope;
  if (r.type != "longrope") return rope_cos_sin(m.inv_freq, pos, m.compute_dtype);
  const bool long_seq = pos.numel() > 0 && pos.max().item<int64_t>() + 1 > r.original_max_position_embeddings &&
                        m.long_inv_freq.defined();
  return rope_cos_sin(long_seq ? m.long_inv_freq : m.inv_freq, pos, m.compute_dtype, r.attention_factor);
}

// The RoPE tables of positions pos into in: the model's, and Gemma 3's local one for sliding layers.
void set_rope(BlockInputs& in, const Model& m, const at::Tensor& pos) {
  std::tie(in.cos, in.sin) = rope_tables(m, pos);
  if (m.inv_freq_local.defined())
    std::tie(in.cos_local, in.sin_local) = rope_cos_sin(m.inv_freq_local, pos, m.compute_dtype);
}

// RoPE tables for positions pos [B, T] and the attention masks for segments seg (undefined:
// plain causal).
BlockInputs block_inputs(const Model& m, const at::Tensor& pos, const at::Tensor& seg) {
  const int64_t T = pos.size(1);
  BlockInputs in;
  set_rope(in, m, pos);
  in.mask_full = attention_mask(seg, T, std::nullopt, m.device);
  if (m.config.sliding_window) in.mask_window = attention_mask(seg, T, m.config.sliding_window, m.device);
  return in;
}

// The sequences of packed rows for variable-length attention: runs of real tokens (rows, flat
// positions in [B, T]) of one row and one segment id, as starts into rows then N; empty when
// the model's setting, the device or the shapes say the block-diagonal mask instead.
std::vector<int64_t> sequences_in_rows(const Model& m, const at::Tensor& rows, const at::Tensor& seg, int64_t B,
                                       int64_t T) {
  if (m.varlen_attention == 0 || m.config.attn_logit_softcapping) return {};  // soft-capping: the mask path
  const at::Tensor r = rows.to(at::kCPU, at::kLong).contiguous();
  const at::Tensor s =
      seg.defined() ? seg.reshape({-1}).index_select(0, rows).to(at::kCPU, at::kLong).contiguous() : at::Tensor();
  const int64_t* rp = r.data_ptr<int64_t>();
  const int64_t* sp = s.defined() ? s.data_ptr<int64_t>() : nullptr;
  const int64_t N = r.numel();
  std::vector<int64_t> cu{0};
  int64_t max_len = 0;
  double squares = 0;
  for (int64_t i = 1; i <= N; ++i) {
    if (i == N || rp[i] / T != rp[i - 1] / T || (sp && sp[i] != sp[i - 1])) {
      const int64_t len = i - cu.back();
      max_len = std::max(max_len, len);
      squares += static_cast<double>(len) * static_cast<double>(len);
      cu.push_back(i);
    }
  }
  // A sliding window shorter than a sequence needs the mask.
  if (m.config.sliding_window && *m.config.sliding_window < max_len) return {};
  if (m.varlen_attention == 1) return cu;
  if (m.device.is_cuda()) return cu;  // fp32 on CUDA takes the per-sequence loop; still no mask
  const bool pays =
      T >= 128 && squares <= 0.5 * static_cast<double>(B) * static_cast<double>(T) * static_cast<double>(T);
  return pays ? cu : std::vector<int64_t>();
}

// The decoder blocks over x (checkpointed when the model says so); the last block gets last_in.
// router_logits (a mixture of experts): receives each layer's router logits [tokens, experts].
// They leave a block as part of its output (the hidden state and the logits side by side), so a
// checkpointed block's backward recomputes them with the rest of the block.
at::Tensor run_layers(Model& m, at::Tensor x, const BlockInputs& in, const BlockInputs& last_in,
                      at::Generator* dropout_gen = nullptr, std::vector<at::Tensor>* router_logits = nullptr) {
  at::Generator* gen = m.training ? (dropout_gen ? dropout_gen : &m.dropout_generator) : nullptr;
  const int64_t n = static_cast<int64_t>(m.layers.size());
  const bool collect = router_logits && m.config.is_moe();
  const int64_t H = m.config.hidden_size;
  for (int64_t i = 0; i < n; ++i) {
    BlockFn fn = [&m, i, in = i + 1 == n ? last_in : in, tr = m.training, collect](const at::Tensor& xin,
                                                                                   at::Generator* g) {
      if (!collect) return decoder_layer(m, i, xin, in, tr, g);
      at::Tensor logits;
      at::Tensor y = decoder_layer(m, i, xin, in, tr, g, &logits);
      return at::cat({y, logits.to(y.scalar_type())}, -1);
    };
    if (m.gradient_checkpointing && c10::GradMode::is_enabled()) {
      std::vector<at::Tensor> params;
      for (const Linear* l : m.layers[i].linears())
        if (l->lora) {
          params.push_back(l->lora->A);
          params.push_back(l->lora->B);
          if (l->lora->dora()) params.push_back(l->lora->magnitude);
        }
      for (const auto* a : {&m.layers[i].experts_gate_up_lora, &m.layers[i].experts_down_lora})
        if (*a) {
          params.push_back((*a)->A);
          params.push_back((*a)->B);
        }
      x = checkpointed(fn, x, params, gen, m.checkpoint_offload);
    } else {
      x = fn(x, gen);
    }
    if (collect) {
      router_logits->push_back(x.narrow(-1, H, x.size(-1) - H));
      x = x.narrow(-1, 0, H);
    }
  }
  return x;
}

// transformers' load_balancing_loss_func over the router logits of every layer ([tokens,
// experts] each, real tokens only): with R the rows of all layers, f_e the number of top-k
// choices of expert e over R and P_e the mean routing probability of e (softmax in the logits'
// dtype, summed in fp32), experts * sum_e f_e P_e. Gradients reach the logits through
// P only (the choices are counts).
at::Tensor load_balancing_loss(const ModelConfig& c, const std::vector<at::Tensor>& router_logits) {
  at::Tensor logits = at::cat(router_logits, 0);
  const double rows = static_cast<double>(logits.size(0));
  at::Tensor probs = at::softmax(logits, -1);
  at::Tensor chosen = std::get<1>(probs.topk(c.num_experts_per_tok, -1)).reshape({-1});
  at::Tensor counts = at::zeros({c.num_experts}, probs.options().dtype(at::kFloat))
                          .index_add_(0, chosen, at::ones({chosen.numel()}, probs.options().dtype(at::kFloat)));
  at::Tensor prob_sum = probs.to(at::kFloat).sum(0);
  return ((counts / rows) * (prob_sum / rows)).sum() * static_cast<double>(c.num_experts);
}

// Summed cross-entropy of hidden [N, H] (rows with a target) against targets [N].
LossSum cross_entropy(const Model& m, const at::Tensor& hidden, const at::Tensor& targets) {
  Scope prof(Part::loss);
  TORCH_CHECK(targets.min().item<int64_t>() >= 0 && targets.max().item<int64_t>() < m.lm_head.size(0),
              "Model::loss: a label is outside [0, vocab_size) and is not -100");
  LossSum out;
  out.count = at::scalar_tensor(targets.numel(), at::TensorOptions().dtype(at::kLong));
  const double softcap = m.config.final_logit_softcapping.value_or(0.0);
  if (m.ce_chunk_tokens < 0) {
    out.sum = full_cross_entropy_sum(hidden, m.lm_head, targets, softcap);
  } else {
    const int64_t chunk = m.ce_chunk_tokens > 0 ? m.ce_chunk_tokens : default_ce_chunk_tokens(m.lm_head.size(0));
    out.sum = chunked_cross_entropy_sum(hidden, m.lm_head, targets, chunk, softcap);
  }
  return out;
}

}  // namespace

at::Tensor Linear::forward(const at::Tensor& x, bool training, at::Generator* gen) const {
  if (lora) {
    const double p = training ? lora->dropout : 0.0;
    return lora_linear(x, nf4 ? &*nf4 : nullptr, weight, bias, *lora, p, p > 0.0 ? dropout_seed(gen) : 0);
  }
  at::Tensor y = nf4 ? nf4_linear_frozen(x, *nf4) : at::linear(x, weight);
  if (bias.defined()) y = y + bias;
  return y;
}

at::Tensor Linear::base_weight(at::ScalarType dtype) const {
  if (nf4) return kernels::nf4_dequantize(*nf4, dtype);
  return weight.to(dtype);
}

std::vector<Linear*> DecoderLayer::linears() {
  std::vector<Linear*> out;
  for (Linear* l : {&q_proj, &k_proj, &v_proj, &qkv_proj, &o_proj, &gate_proj, &up_proj, &gate_up_proj, &down_proj})
    if (!l->name.empty()) out.push_back(l);
  for (Expert& e : experts)
    for (Linear* l : {&e.gate_proj, &e.up_proj, &e.down_proj})
      if (!l->name.empty()) out.push_back(l);
  for (Linear* l : {&shared_expert.gate_proj, &shared_expert.up_proj, &shared_expert.down_proj})
    if (!l->name.empty()) out.push_back(l);
  return out;
}
std::vector<const Linear*> DecoderLayer::linears() const {
  std::vector<const Linear*> out;
  for (Linear* l : const_cast<DecoderLayer*>(this)->linears()) out.push_back(l);
  return out;
}
Linear* DecoderLayer::linear_at(const std::string& path) {
  static const std::map<std::string, Linear DecoderLayer::*> fixed = {
      {"self_attn.q_proj", &DecoderLayer::q_proj}, {"self_attn.k_proj", &DecoderLayer::k_proj},
      {"self_attn.v_proj", &DecoderLayer::v_proj}, {"self_attn.qkv_proj", &DecoderLayer::qkv_proj},
      {"self_attn.o_proj", &DecoderLayer::o_proj}, {"mlp.gate_proj", &DecoderLayer::gate_proj},
      {"mlp.up_proj", &DecoderLayer::up_proj},     {"mlp.gate_up_proj", &DecoderLayer::gate_up_proj},
      {"mlp.down_proj", &DecoderLayer::down_proj}};
  if (auto it = fixed.find(path); it != fixed.end()) return &(this->*(it->second));
  auto part = [](Expert& e, const std::string& n) -> Linear* {
    if (n == "gate_proj" || n == "w1") return &e.gate_proj;
    if (n == "up_proj" || n == "w3") return &e.up_proj;
    if (n == "down_proj" || n == "w2") return &e.down_proj;
    return nullptr;
  };
  if (path.starts_with("mlp.shared_expert.")) return part(shared_expert, path.substr(18));
  for (const char* prefix : {"mlp.experts.", "block_sparse_moe.experts."}) {
    if (!path.starts_with(prefix)) continue;
    const std::string rest = path.substr(std::string(prefix).size());
    const size_t dot = rest.find('.');
    if (dot == std::string::npos) return nullptr;
    const int64_t e = std::stoll(rest.substr(0, dot));
    if (e < 0 || e >= static_cast<int64_t>(experts.size())) return nullptr;
    return part(experts[e], rest.substr(dot + 1));
  }
  return nullptr;
}

at::Tensor Model::forward(const at::Tensor& input_ids, const at::Tensor& position_ids, const at::Tensor& segment_ids) {
  TORCH_CHECK(input_ids.dim() == 2, "Model::forward: input_ids must be [B, T]");
  const int64_t B = input_ids.size(0), T = input_ids.size(1);
  at::Tensor ids = input_ids.to(device, at::kLong);
  at::Tensor pos = position_ids.defined()
                       ? position_ids.to(device, at::kLong)
                       : at::arange(T, at::TensorOptions().dtype(at::kLong).device(device)).unsqueeze(0).expand({B, T});
  TORCH_CHECK(pos.sizes() == ids.sizes(), "Model::forward: position_ids must have the shape of input_ids");
  TORCH_CHECK(!segment_ids.defined() || segment_ids.sizes() == ids.sizes(),
              "Model::forward: segment_ids must have the shape of input_ids");

  const BlockInputs in = block_inputs(*this, pos, segment_ids.defined() ? segment_ids.to(device) : at::Tensor());
  return rms_norm(run_layers(*this, embed(*this, ids), in, in), norm, config);
}

LossSum Model::forward_loss(const at::Tensor& input_ids, const at::Tensor& labels, const at::Tensor& position_ids,
                            const at::Tensor& segment_ids, const at::Tensor& attention_mask,
                            at::Generator* dropout_gen) {
  TORCH_CHECK(input_ids.dim() == 2 && labels.sizes() == input_ids.sizes(),
              "Model::forward_loss: expected input_ids and labels [B, T]");
  TORCH_CHECK(!segment_ids.defined() || segment_ids.sizes() == input_ids.sizes(),
              "Model::forward_loss: segment_ids must have the shape of input_ids");
  TORCH_CHECK(!attention_mask.defined() || attention_mask.sizes() == input_ids.sizes(),
              "Model::forward_loss: attention_mask must have the shape of input_ids");
  const int64_t B = input_ids.size(0), T = input_ids.size(1);
  auto lopt = at::TensorOptions().dtype(at::kLong).device(device);
  at::Tensor ids = input_ids.to(device, at::kLong);
  at::Tensor pos =
      position_ids.defined() ? position_ids.to(device, at::kLong) : at::arange(T, lopt).unsqueeze(0).expand({B, T});
  TORCH_CHECK(pos.sizes() == ids.sizes(), "Model::forward_loss: position_ids must have the shape of input_ids");
  at::Tensor seg = segment_ids.defined() ? segment_ids.to(device, at::kLong) : at::Tensor();
  at::Tensor real = attention_mask.defined() ? attention_mask.to(device) != 0 : at::Tensor();
  at::Tensor lab = labels.to(device, at::kLong);
  if (real.defined()) lab = lab.masked_fill(real.logical_not(), -100);  // padding never counts
  // The label each position predicts (position t: labels[t + 1]), flat over [B, T]; then the
  // real tokens (rows) and, among them, those with a label (keep).
  at::Tensor next = at::cat({lab.slice(1, 1), at::full({B, 1}, -100, lopt)}, 1).reshape({-1});
  at::Tensor rows = real.defined() ? real.reshape({-1}).nonzero().squeeze(1) : at::arange(B * T, lopt);
  at::Tensor targets = next.index_select(0, rows);
  at::Tensor keep = (targets != -100).nonzero().squeeze(1);
  if (keep.numel() == 0 || layers.empty()) {  // no target: the plain path (keeps a graph)
    const BlockInputs in = block_inputs(*this, pos, seg);
    at::Tensor x = embed(*this, ids);
    return loss(rms_norm(run_layers(*this, x, in, in, dropout_gen), norm, config), lab);
  }
  targets = targets.index_select(0, keep);

  // Each row one sample, then padding: plain causal attention is exact (no mask to build).
  bool causal = !real.defined() || !real.slice(1, 1).logical_and(real.slice(1, 0, -1).logical_not()).any().item<bool>();
  if (causal && seg.defined()) {
    at::Tensor other = seg != seg.slice(1, 0, 1);
    causal = !(real.defined() ? other.logical_and(real) : other).any().item<bool>();
  }
  std::vector<int64_t> cu = causal ? std::vector<int64_t>() : sequences_in_rows(*this, rows, seg, B, T);
  BlockInputs in;
  if (!cu.empty()) {
    set_rope(in, *this, pos.reshape({1, -1}).index_select(1, rows));
    in.cu_seqlens = std::move(cu);
  } else {
    in = block_inputs(*this, pos, causal ? at::Tensor() : seg);
  }
  in.rows = rows;
  in.B = B;
  in.T = T;
  BlockInputs last = in;
  const bool aux = router_aux_loss && config.is_moe();
  if (!aux) {  // with the aux loss every real token goes through the last router
    last.out_rows = keep;
    last.out_flat = rows.index_select(0, keep);
  }

  at::Tensor x = embed(*this, ids.reshape({-1}).index_select(0, rows));
  std::vector<at::Tensor> router_logits;
  at::Tensor h = run_layers(*this, x, in, last, dropout_gen, aux ? &router_logits : nullptr);
  if (aux) h = h.index_select(0, keep);
  h = rms_norm(h, norm, config);  // [targets, H]
  LossSum out = cross_entropy(*this, h, targets);
  if (aux) out.aux = load_balancing_loss(config, router_logits);
  return out;
}

at::Tensor Model::forward_cached(const at::Tensor& input_ids, KVCache& cache) {
  TORCH_CHECK(input_ids.dim() == 2, "Model::forward_cached: input_ids must be [B, T]");
  const int64_t B = input_ids.size(0), T = input_ids.size(1), past = cache.length;
  const int64_t n = static_cast<int64_t>(layers.size());
  if (cache.k.empty()) {
    cache.k.resize(n);
    cache.v.resize(n);
  }
  TORCH_CHECK(static_cast<int64_t>(cache.k.size()) == n, "Model::forward_cached: cache of another model");
  TORCH_CHECK(past == 0 || cache.k[0].size(0) == B, "Model::forward_cached: batch size differs from the cache's");
  at::Tensor ids = input_ids.to(device, at::kLong);
  if (config.rope.type == "longrope") {
    const int64_t orig = config.rope.original_max_position_embeddings;
    if (past > 0 && past <= orig && past + T > orig) {
      at::Tensor all = at::cat({cache.ids, ids}, 1);
      const int64_t reserve = cache.reserve;
      cache.clear();
      cache.reserve = reserve;
      return forward_cached(all, cache).narrow(1, past, T);
    }
    cache.ids = past == 0 ? ids : at::cat({cache.ids, ids}, 1);
  }
  auto lopt = at::TensorOptions().dtype(at::kLong).device(device);
  at::Tensor pos = at::arange(past, past + T, lopt).unsqueeze(0).expand({B, T});

  BlockInputs in;
  in.cache = &cache;
  set_rope(in, *this, pos);
  if (past == 0) {  // plain causal attention over the new tokens, as forward()
    in.mask_full = attention_mask({}, T, std::nullopt, device);
    if (config.sliding_window) in.mask_window = attention_mask({}, T, config.sliding_window, device);
  } else {
    in.mask_full = cached_attention_mask(past, T, std::nullopt, device);
    if (config.sliding_window) in.mask_window = cached_attention_mask(past, T, config.sliding_window, device);
  }
  at::Tensor x = embed(*this, ids);
  for (int64_t i = 0; i < n; ++i) x = decoder_layer(*this, i, x, in, /*training=*/false, nullptr);
  cache.length = past + T;
  return rms_norm(x, norm, config);
}

at::Tensor segments_from_positions(const at::Tensor& position_ids) {
  TORCH_CHECK(position_ids.dim() == 2, "segments_from_positions: expected [B, T]");
  at::Tensor pos = position_ids.to(at::kLong);
  at::Tensor first = pos.slice(1, 0, 1) - 1;
  at::Tensor diff = pos - at::cat({first, pos.slice(1, 0, -1)}, 1);
  return (diff != 1).to(at::kLong).cumsum(1);
}

at::Tensor Model::logits(const at::Tensor& hidden) const {
  at::Tensor l = at::matmul(hidden, lm_head.t());
  if (config.final_logit_softcapping) {  // in the compute dtype, as transformers
    const double c = *config.final_logit_softcapping;
    l = at::tanh(l / c) * c;
  }
  return l;
}

LossSum Model::loss(const at::Tensor& hidden, const at::Tensor& labels) const {
  TORCH_CHECK(
      hidden.dim() == 3 && labels.dim() == 2 && hidden.size(0) == labels.size(0) && hidden.size(1) == labels.size(1),
      "Model::loss: expected hidden [B, T, H] and labels [B, T]");
  const int64_t H = hidden.size(2);
  at::Tensor h = hidden.slice(1, 0, -1).reshape({-1, H});
  at::Tensor y = labels.to(hidden.device(), at::kLong).slice(1, 1).reshape({-1});
  at::Tensor idx = (y != -100).nonzero().squeeze(1);
  LossSum out;
  out.count = at::scalar_tensor(idx.numel(), at::TensorOptions().dtype(at::kLong));
  if (idx.numel() == 0) {
    out.sum = (hidden.sum() * 0).to(at::kFloat);  // keeps the graph: zero gradients
    return out;
  }
  return cross_entropy(*this, h.index_select(0, idx), y.index_select(0, idx));
}

std::vector<const Linear*> Model::linears() const {
  std::vector<const Linear*> out;
  for (const auto& L : layers)
    for (const Linear* l : L.linears()) out.push_back(l);
  return out;
}

std::vector<NamedParameter> Model::lora_parameters() const {
  std::vector<NamedParameter> out;
  for (const DecoderLayer& L : layers) {
    for (const Linear* l : L.linears()) {
      if (!l->lora) continue;
      out.push_back({io::peft_lora_key(l->name, 'A'), l->lora->A});
      out.push_back({io::peft_lora_key(l->name, 'B'), l->lora->B});
      if (l->lora->dora()) out.push_back({io::peft_lora_key(l->name, 'M'), l->lora->magnitude});
    }
    if (L.experts_gate_up_lora) {
      out.push_back({io::peft_lora_key(L.experts_gate_up_module, 'A'), L.experts_gate_up_lora->A});
      out.push_back({io::peft_lora_key(L.experts_gate_up_module, 'B'), L.experts_gate_up_lora->B});
    }
    if (L.experts_down_lora) {
      out.push_back({io::peft_lora_key(L.experts_down_module, 'A'), L.experts_down_lora->A});
      out.push_back({io::peft_lora_key(L.experts_down_module, 'B'), L.experts_down_lora->B});
    }
  }
  return out;
}

void Model::load_lora_weights(const std::map<std::string, at::Tensor>& values, const std::string& source, bool strict) {
  std::map<std::string, at::Tensor> mine;
  for (auto& p : lora_parameters()) mine[p.name] = p.param;
  for (const auto& [k, v] : values) {
    auto it = mine.find(k);
    if (it == mine.end())
      user_error(source, ": ", k, ": not a LoRA tensor of this model (wrong target modules or rank?)");
    if (v.sizes() != it->second.sizes())
      user_error(source, ": ", k, ": shape ", v.sizes(), " does not match the model's ", it->second.sizes());
  }
  if (strict)
    for (const auto& [k, p] : mine)
      if (!values.count(k)) user_error(source, ": ", k, ": missing");
  c10::NoGradGuard no_grad;
  for (const auto& [k, v] : values) mine[k].copy_(v);
}

std::vector<std::string> Model::lora_target_modules() const {
  std::vector<std::string> out;
  for (const LinearSpec& s : layer_linears(config)) {
    if (std::find(out.begin(), out.end(), s.name) != out.end()) continue;
    for (const auto& L : layers) {
      bool hit = false;
      for (const Linear* l : L.linears())
        if (l->lora && l->name.size() > s.name.size() && l->name.ends_with("." + s.name)) hit = true;
      if (hit) {
        out.push_back(s.name);
        break;
      }
    }
  }
  return out;
}

std::map<std::string, at::Tensor> Model::dequantized_state_dict(at::ScalarType dtype) const {
  std::map<std::string, at::Tensor> sd;
  sd["model.embed_tokens.weight"] = embed_tokens.to(dtype);
  sd["model.norm.weight"] = norm.to(dtype);
  if (!config.tie_word_embeddings) sd["lm_head.weight"] = lm_head.to(dtype);
  for (size_t i = 0; i < layers.size(); ++i) {
    const DecoderLayer& L = layers[i];
    const std::string p = "model.layers." + std::to_string(i) + ".";
    sd[p + "input_layernorm.weight"] = L.input_layernorm.to(dtype);
    sd[p + "post_attention_layernorm.weight"] = L.post_attention_layernorm.to(dtype);
    if (L.q_norm.defined()) sd[p + "self_attn.q_norm.weight"] = L.q_norm.to(dtype);
    if (L.k_norm.defined()) sd[p + "self_attn.k_norm.weight"] = L.k_norm.to(dtype);
    if (L.router.defined()) sd[p + router_path(config) + ".weight"] = L.router.to(dtype);
    if (L.shared_expert_gate.defined()) sd[p + "mlp.shared_expert_gate.weight"] = L.shared_expert_gate.to(dtype);
    if (L.pre_feedforward_layernorm.defined()) {
      sd[p + "pre_feedforward_layernorm.weight"] = L.pre_feedforward_layernorm.to(dtype);
      sd[p + "post_feedforward_layernorm.weight"] = L.post_feedforward_layernorm.to(dtype);
    }
    for (const Linear* l : L.linears()) {
      sd[l->name + ".weight"] = l->base_weight(dtype);
      if (l->bias.defined()) sd[l->name + ".bias"] = l->bias.to(dtype);
    }
  }
  return sd;
}

int64_t Model::base_nbytes() const {
  int64_t b = embed_tokens.nbytes() + norm.nbytes();
  if (!config.tie_word_embeddings) b += lm_head.nbytes();
  for (const auto& L : layers) {
    b += L.input_layernorm.nbytes() + L.post_attention_layernorm.nbytes();
    if (L.q_norm.defined()) b += L.q_norm.nbytes() + L.k_norm.nbytes();
    if (L.router.defined()) b += L.router.nbytes();
    if (L.shared_expert_gate.defined()) b += L.shared_expert_gate.nbytes();
    if (L.pre_feedforward_layernorm.defined())
      b += L.pre_feedforward_layernorm.nbytes() + L.post_feedforward_layernorm.nbytes();
    for (const Linear* l : L.linears()) {
      b += l->nf4 ? l->nf4->nbytes() : l->weight.nbytes();
      if (l->bias.defined()) b += l->bias.nbytes();
    }
  }
  return b;
}

}  // namespace qlora::model

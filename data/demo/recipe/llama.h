// The demo base model's decoder: a Llama forward pass written with plain ATen ops, exactly as
// transformers' modeling_llama.py computes it (docs/formats.md §4), so the weights it trains load
// into LlamaForCausalLM unchanged. Used by the pretraining program (pretrain.cpp, with autograd)
// and by tests/demo (loss equality with transformers on the committed model).
//
// Deliberately independent of trainer/model: the demo model must be checkable on its own.
// Header-only so the test can compile it without a library target.
#pragma once
#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

namespace demo {

// The config.json fields of a Llama model (the subset this decoder implements: no rope scaling,
// no biases, silu MLP).
struct LlamaConfig {
  int64_t vocab_size = 1024;
  int64_t hidden_size = 256;
  int64_t intermediate_size = 704;
  int64_t num_hidden_layers = 4;
  int64_t num_attention_heads = 4;
  int64_t num_key_value_heads = 2;
  int64_t head_dim = 64;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  int64_t max_position_embeddings = 256;
  bool tie_word_embeddings = false;
  int64_t bos_token_id = 1, eos_token_id = 2, pad_token_id = 3;

  // config.json as transformers writes it for LlamaForCausalLM (weights stored in bf16).
  nlohmann::json to_hf_json() const {
    return {{"architectures", {"LlamaForCausalLM"}},
            {"model_type", "llama"},
            {"vocab_size", vocab_size},
            {"hidden_size", hidden_size},
            {"intermediate_size", intermediate_size},
            {"num_hidden_layers", num_hidden_layers},
            {"num_attention_heads", num_attention_heads},
            {"num_key_value_heads", num_key_value_heads},
            {"head_dim", head_dim},
            {"hidden_act", "silu"},
            {"rms_norm_eps", rms_norm_eps},
            {"rope_theta", rope_theta},
            {"rope_scaling", nullptr},
            {"max_position_embeddings", max_position_embeddings},
            {"tie_word_embeddings", tie_word_embeddings},
            {"attention_bias", false},
            {"attention_dropout", 0.0},
            {"mlp_bias", false},
            {"initializer_range", 0.02},
            {"use_cache", true},
            {"bos_token_id", bos_token_id},
            {"eos_token_id", eos_token_id},
            {"pad_token_id", pad_token_id},
            {"torch_dtype", "bfloat16"}};
  }

  // Reads the fields above (model-architecture keys only; unknown keys ignored). Missing
  // optional keys take HF's defaults (num_key_value_heads = heads, head_dim = hidden / heads).
  static LlamaConfig from_hf_json(const nlohmann::json& j) {
    LlamaConfig c;
    c.vocab_size = j.at("vocab_size");
    c.hidden_size = j.at("hidden_size");
    c.intermediate_size = j.at("intermediate_size");
    c.num_hidden_layers = j.at("num_hidden_layers");
    c.num_attention_heads = j.at("num_attention_heads");
    c.num_key_value_heads = j.value("num_key_value_heads", c.num_attention_heads);
    c.head_dim = j.value("head_dim", c.hidden_size / c.num_attention_heads);
    c.rms_norm_eps = j.value("rms_norm_eps", 1e-6);
    c.rope_theta = j.value("rope_theta", 10000.0);
    c.max_position_embeddings = j.value("max_position_embeddings", int64_t{2048});
    c.tie_word_embeddings = j.value("tie_word_embeddings", false);
    auto id = [&](const char* k, int64_t d) { return j.contains(k) && !j[k].is_null() ? j[k].get<int64_t>() : d; };
    c.bos_token_id = id("bos_token_id", 1);
    c.eos_token_id = id("eos_token_id", 2);
    c.pad_token_id = id("pad_token_id", -1);
    return c;
  }
};

// Weights by their HF names (model.layers.N.self_attn.q_proj.weight, ...). Linear weights are
// [out, in].
using Weights = std::map<std::string, at::Tensor>;

inline std::string layer_prefix(int64_t i) { return "model.layers." + std::to_string(i) + "."; }

// Every tensor the model has, with its shape.
inline std::map<std::string, std::vector<int64_t>> llama_shapes(const LlamaConfig& c) {
  std::map<std::string, std::vector<int64_t>> s;
  const int64_t h = c.hidden_size, q = c.num_attention_heads * c.head_dim, kv = c.num_key_value_heads * c.head_dim,
                m = c.intermediate_size;
  s["model.embed_tokens.weight"] = {c.vocab_size, h};
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = layer_prefix(i);
    s[p + "input_layernorm.weight"] = {h};
    s[p + "self_attn.q_proj.weight"] = {q, h};
    s[p + "self_attn.k_proj.weight"] = {kv, h};
    s[p + "self_attn.v_proj.weight"] = {kv, h};
    s[p + "self_attn.o_proj.weight"] = {h, q};
    s[p + "post_attention_layernorm.weight"] = {h};
    s[p + "mlp.gate_proj.weight"] = {m, h};
    s[p + "mlp.up_proj.weight"] = {m, h};
    s[p + "mlp.down_proj.weight"] = {h, m};
  }
  s["model.norm.weight"] = {h};
  if (!c.tie_word_embeddings) s["lm_head.weight"] = {c.vocab_size, h};
  return s;
}

// HF's _init_weights for Llama: linear and embedding weights ~ N(0, initializer_range = 0.02),
// RMSNorm weights = 1. fp32. Uses the global ATen generator (seed it first).
inline Weights llama_init(const LlamaConfig& c) {
  Weights w;
  for (const auto& [name, shape] : llama_shapes(c)) {
    const bool norm = name.find("norm") != std::string::npos;
    w[name] = norm ? at::ones(shape, at::kFloat) : at::randn(shape, at::kFloat) * 0.02;
  }
  return w;
}

// LlamaRMSNorm: normalize in float32, cast back to the input dtype, then scale.
inline at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  auto xf = x.to(at::kFloat);
  auto var = xf.pow(2).mean(-1, /*keepdim=*/true);
  return weight * (xf * at::rsqrt(var + eps)).to(x.scalar_type());
}

// HF rotate_half: [x1, x2] -> [-x2, x1] over the last dim split in halves.
inline at::Tensor rotate_half(const at::Tensor& x) {
  const int64_t d = x.size(-1);
  return at::cat({-x.slice(-1, d / 2, d), x.slice(-1, 0, d / 2)}, -1);
}

// cos and sin for positions 0..n-1, [n, head_dim], computed in float32 as LlamaRotaryEmbedding
// does (inv_freq = 1/theta^(arange(0,d,2)/d); emb = cat(freqs, freqs)).
inline std::pair<at::Tensor, at::Tensor> rope_cos_sin(const LlamaConfig& c, int64_t n) {
  const int64_t d = c.head_dim;
  auto inv_freq = 1.0 / at::pow(c.rope_theta, at::arange(0, d, 2, at::kLong).to(at::kFloat) / double(d));
  auto pos = at::arange(n, at::kLong).to(at::kFloat);
  auto freqs = at::outer(pos, inv_freq);   // [n, d/2]
  auto emb = at::cat({freqs, freqs}, -1);  // [n, d]
  return {emb.cos(), emb.sin()};
}

// Logits [B, T, vocab] in the weights' dtype for input_ids [B, T].
// Default: positions 0..T-1 and causal attention over the whole row (right padding needs no
// mask). Packed rows pass position_ids [B, T] (restarting per document) and allowed [B, T, T]
// (bool, query i may attend key j: causal and same document).
inline at::Tensor llama_logits(const Weights& w, const LlamaConfig& c, const at::Tensor& input_ids,
                               const at::Tensor& position_ids = {}, const at::Tensor& allowed = {}) {
  const int64_t B = input_ids.size(0), T = input_ids.size(1);
  const int64_t H = c.num_attention_heads, KV = c.num_key_value_heads, D = c.head_dim;
  auto W = [&](const std::string& n) -> const at::Tensor& { return w.at(n); };
  auto x = at::embedding(W("model.embed_tokens.weight"), input_ids);  // [B, T, hidden]
  auto [cos, sin] = rope_cos_sin(c, T);                               // [T, D]
  if (position_ids.defined()) {                                       // [B, 1, T, D]: broadcast over heads
    cos = cos.index_select(0, position_ids.reshape({-1})).view({B, 1, T, D});
    sin = sin.index_select(0, position_ids.reshape({-1})).view({B, 1, T, D});
  }
  cos = cos.to(x.scalar_type());
  sin = sin.to(x.scalar_type());
  // Keys a query may not see: [T, T] (causal) or [B, 1, T, T].
  auto blocked = allowed.defined() ? allowed.logical_not().unsqueeze(1) : at::ones({T, T}, at::kBool).triu(1);
  const double scale = 1.0 / std::sqrt(double(D));
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = layer_prefix(i);
    // attention block: h = x + o(attn(norm1(x)))
    auto h = rms_norm(x, W(p + "input_layernorm.weight"), c.rms_norm_eps);
    auto q = at::linear(h, W(p + "self_attn.q_proj.weight")).view({B, T, H, D}).transpose(1, 2);
    auto k = at::linear(h, W(p + "self_attn.k_proj.weight")).view({B, T, KV, D}).transpose(1, 2);
    auto v = at::linear(h, W(p + "self_attn.v_proj.weight")).view({B, T, KV, D}).transpose(1, 2);
    q = q * cos + rotate_half(q) * sin;  // [B, H, T, D]
    k = k * cos + rotate_half(k) * sin;
    if (KV != H) {  // GQA: each kv head serves H/KV consecutive query heads (HF repeat_kv)
      k = k.repeat_interleave(H / KV, 1);
      v = v.repeat_interleave(H / KV, 1);
    }
    auto scores = at::matmul(q, k.transpose(-1, -2)) * scale;  // [B, H, T, T]
    scores = scores.masked_fill(blocked, -std::numeric_limits<float>::infinity());
    auto probs = at::softmax(scores, -1, at::kFloat).to(q.scalar_type());
    auto attn = at::matmul(probs, v).transpose(1, 2).reshape({B, T, H * D});
    x = x + at::linear(attn, W(p + "self_attn.o_proj.weight"));
    // MLP block: y = x + down(silu(gate(norm2(x))) * up(norm2(x)))
    auto h2 = rms_norm(x, W(p + "post_attention_layernorm.weight"), c.rms_norm_eps);
    auto gate = at::silu(at::linear(h2, W(p + "mlp.gate_proj.weight")));
    auto up = at::linear(h2, W(p + "mlp.up_proj.weight"));
    x = x + at::linear(gate * up, W(p + "mlp.down_proj.weight"));
  }
  x = rms_norm(x, W("model.norm.weight"), c.rms_norm_eps);
  const auto& head = c.tie_word_embeddings ? W("model.embed_tokens.weight") : W("lm_head.weight");
  return at::linear(x, head);
}

// Causal-LM loss as transformers computes it: logits in float32, labels shifted left by one,
// mean cross-entropy over the positions whose label is not -100.
inline at::Tensor causal_lm_loss(const at::Tensor& logits, const at::Tensor& labels) {
  const int64_t V = logits.size(-1);
  auto lg = logits.slice(1, 0, logits.size(1) - 1).to(at::kFloat).reshape({-1, V});
  auto tg = labels.slice(1, 1, labels.size(1)).reshape({-1});
  return at::cross_entropy_loss(lg, tg, /*weight=*/{}, at::Reduction::Mean, /*ignore_index=*/-100);
}

}  // namespace demo

// The architecture of a Hugging Face Llama-family checkpoint, read from its config.json.
//
// Supported model_type / architectures: llama (LlamaForCausalLM), mistral (MistralForCausalLM),
// qwen2 (Qwen2ForCausalLM), qwen3 (Qwen3ForCausalLM), phi3 (Phi3ForCausalLM: Phi-3, Phi-3.5,
// Phi-4), gemma2 (Gemma2ForCausalLM), gemma3_text (Gemma3ForCausalLM), and the mixtures of
// experts mixtral (MixtralForCausalLM), qwen2_moe (Qwen2MoeForCausalLM), qwen3_moe
// (Qwen3MoeForCausalLM). Anything else is a UserError naming it.
// Field names and defaults are transformers' (docs/formats.md §4.1); both the older layout
// (top-level rope_theta + rope_scaling {"type"|"rope_type": ...}, torch_dtype) and the newer one
// (rope_parameters {"rope_theta", "rope_type", ...}, dtype) are read.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace qlora::model {

// Rotary position embedding parameters. type: "default", "linear" (inv_freq / factor), "llama3"
// (frequency-dependent interpolation) or "longrope" (Phi-3's per-frequency short/long factors,
// also written "su"; docs/formats.md §4.3).
struct RopeConfig {
  std::string type = "default";
  double theta = 10000.0;
  double factor = 1.0;                            // linear, llama3
  double low_freq_factor = 1.0;                   // llama3
  double high_freq_factor = 4.0;                  // llama3
  int64_t original_max_position_embeddings = 0;   // llama3, longrope (defaults to max_position_embeddings)
  std::vector<double> short_factor, long_factor;  // longrope: one per rotary frequency
  double attention_factor = 1.0;                  // longrope: cos and sin are scaled by it
  int64_t rotary_dim = 0;  // leading dims of each head that rotate: head_dim * partial_rotary_factor
};

// config.json "quantization_config" of a bitsandbytes 4-bit checkpoint (docs/formats.md §2.3).
struct BnbQuantConfig {
  std::string quant_type = "nf4";         // bnb_4bit_quant_type (only nf4 is loaded)
  bool double_quant = false;              // bnb_4bit_use_double_quant
  std::string compute_dtype = "float32";  // bnb_4bit_compute_dtype
  std::string quant_storage = "uint8";    // bnb_4bit_quant_storage
  std::vector<std::string> skip_modules;  // llm_int8_skip_modules (kept 16-bit)
};

struct ModelConfig {
  std::filesystem::path path;  // the config.json this came from (for messages)
  std::string model_type;      // llama | mistral | qwen2 | qwen3 | phi3 | gemma2 | gemma3_text
  std::string architecture;    // e.g. LlamaForCausalLM ("" if the file names none)

  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;  // default num_attention_heads (no GQA)
  int64_t head_dim = 0;             // default hidden_size / num_attention_heads
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  RopeConfig rope;
  std::string hidden_act = "silu";
  bool tie_word_embeddings = false;  // lm_head shares model.embed_tokens.weight

  // Which projections carry a bias. llama: attention_bias (q,k,v,o) and mlp_bias;
  // qwen2: q,k,v always; qwen3: attention_bias (q,k,v,o); mistral: none.
  bool qkv_bias = false;
  bool o_bias = false;
  bool mlp_bias = false;
  bool qk_norm = false;  // qwen3, gemma3_text: RMSNorm over head_dim on q and k before RoPE
  // phi3: q, k, v as one qkv_proj [q_out + 2 kv_out, hidden] and gate, up as one gate_up_proj
  // [2 intermediate, hidden] (gate rows first).
  bool fused_qkv = false;
  bool fused_gate_up = false;

  // Mixture of experts (mixtral, qwen2_moe, qwen3_moe; 0 experts: a dense MLP). Every layer's MLP
  // is a router [experts, hidden] choosing num_experts_per_tok experts per token (softmax in
  // fp32, top k, renormalized when norm_topk_prob), each expert a SwiGLU MLP of
  // moe_intermediate_size; qwen2_moe adds a shared expert (shared_expert_intermediate_size)
  // scaled by sigmoid(shared_expert_gate x).
  int64_t num_experts = 0;
  int64_t num_experts_per_tok = 0;
  int64_t moe_intermediate_size = 0;
  int64_t shared_expert_intermediate_size = 0;  // 0: none
  bool norm_topk_prob = true;
  bool is_moe() const { return num_experts > 0; }
  // The router's load-balancing loss (transformers' load_balancing_loss_func): added to the
  // training loss times router_aux_loss_coef when output_router_logits (config.json, or the run
  // config's overrides_of_model_config).
  bool output_router_logits = false;
  double router_aux_loss_coef = 0.001;
  // Gemma 2 / Gemma 3: RMSNorm computed in fp32 times (1 + weight), then cast; embeddings times
  // sqrt(hidden_size) (cast to the compute dtype first); GeGLU MLP with tanh GELU; four norms per
  // layer (input, post-attention, pre-feedforward, post-feedforward).
  bool gemma = false;
  double query_pre_attn_scalar = 0;               // attention scale 1/sqrt(this); 0: head_dim
  std::optional<double> attn_logit_softcapping;   // gemma2: scores = c tanh(scores / c) before the mask
  std::optional<double> final_logit_softcapping;  // logits = c tanh(logits / c), also in the loss
  std::optional<RopeConfig> rope_local;           // gemma3_text: RoPE of the sliding layers

  // Sliding-window attention: the window, and which layers use it (HF layer_types /
  // use_sliding_window + max_window_layers for qwen; every layer for mistral; layer_types or the
  // alternating pattern for gemma).
  std::optional<int64_t> sliding_window;
  std::vector<bool> layer_sliding;  // [num_hidden_layers]

  std::string torch_dtype = "float32";  // dtype of the saved weights ("bfloat16", ...)
  std::optional<int64_t> bos_token_id;
  std::vector<int64_t> eos_token_ids;  // eos_token_id may be one id or a list
  std::optional<int64_t> pad_token_id;

  std::optional<BnbQuantConfig> quantization;  // a bitsandbytes 4-bit checkpoint

  int64_t q_out() const { return num_attention_heads * head_dim; }
  int64_t kv_out() const { return num_key_value_heads * head_dim; }
  // Window used by layer i (nullopt: full causal attention).
  std::optional<int64_t> window_of(int64_t layer) const;
  // The softmax scale of attention scores: 1/sqrt(query_pre_attn_scalar or head_dim).
  double attention_scale() const;
  // Whether layer i rotates q and k with rope_local (a sliding layer of a gemma3_text model).
  bool uses_local_rope(int64_t layer) const {
    return rope_local && layer >= 0 && layer < static_cast<int64_t>(layer_sliding.size()) && layer_sliding[layer];
  }
};

// Reads DIR/config.json (or the file itself; a .gguf file: gguf_base.h). UserError "PATH: key: what was expected" for a
// missing/ill-typed key, an unsupported architecture, activation or rope type.
ModelConfig read_model_config(const std::filesystem::path& dir_or_file);

// Parses config.json text; `path` names it in messages.
ModelConfig parse_model_config(const std::string& json_text, const std::filesystem::path& path);

// "bfloat16" / "float16" / "float32" (and "bf16", "fp16", "fp32", "half", "float") -> scalar type.
// UserError naming `context` otherwise.
at::ScalarType parse_dtype_name(const std::string& name, const std::string& context);

// A linear projection of every decoder layer.
struct LinearSpec {
  std::string name;  // the module's own name, which PEFT's target_modules match: q_proj, qkv_proj, ...
  std::string path;  // under "model.layers.N.": "self_attn.q_proj", "mlp.gate_up_proj"
  int64_t out = 0, in = 0;
  bool bias = false;
};

// The linear projections of a decoder layer of this architecture, in module order: llama and
// the like q, k, v, o, gate, up, down; phi3 qkv, o, gate_up, down; a mixture of experts q, k, v,
// o, then every expert's gate, up, down (mixtral: block_sparse_moe.experts.E.w1, w3, w2; qwen:
// mlp.experts.E.gate_proj, up_proj, down_proj) and qwen2_moe's mlp.shared_expert.gate_proj,
// up_proj, down_proj. The routers (mixtral block_sparse_moe.gate, qwen mlp.gate [experts,
// hidden]) and qwen2_moe's mlp.shared_expert_gate [1, hidden] are kept 16-bit, not listed here.
std::vector<LinearSpec> layer_linears(const ModelConfig& c);

// The router's tensor name under "model.layers.N." ("" for a dense model).
std::string router_path(const ModelConfig& c);

// "model.layers.N."
std::string layer_prefix(int64_t layer);

// The spec of module `name` (q_proj, ...), or nullptr when the architecture has none.
const LinearSpec* find_linear(const std::vector<LinearSpec>& specs, const std::string& name);

}  // namespace qlora::model

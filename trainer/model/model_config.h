// The architecture of a Hugging Face Llama-family checkpoint, read from its config.json.
//
// Supported model_type / architectures: llama (LlamaForCausalLM), mistral (MistralForCausalLM),
// qwen2 (Qwen2ForCausalLM), qwen3 (Qwen3ForCausalLM). Anything else is a UserError naming it.
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

// Rotary position embedding parameters. type: "default", "linear" (inv_freq / factor) or
// "llama3" (frequency-dependent interpolation, docs/formats.md §4.3).
struct RopeConfig {
  std::string type = "default";
  double theta = 10000.0;
  double factor = 1.0;                           // linear, llama3
  double low_freq_factor = 1.0;                  // llama3
  double high_freq_factor = 4.0;                 // llama3
  int64_t original_max_position_embeddings = 0;  // llama3 (defaults to max_position_embeddings)
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
  std::string model_type;      // llama | mistral | qwen2 | qwen3
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
  bool qk_norm = false;  // qwen3: RMSNorm over head_dim on q and k before RoPE

  // Sliding-window attention: the window, and which layers use it (HF layer_types /
  // use_sliding_window + max_window_layers for qwen; every layer for mistral).
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
};

// Reads DIR/config.json (or the file itself; a .gguf file: gguf_base.h). UserError "PATH: key: what was expected" for a
// missing/ill-typed key, an unsupported architecture, activation or rope type.
ModelConfig read_model_config(const std::filesystem::path& dir_or_file);

// Parses config.json text; `path` names it in messages.
ModelConfig parse_model_config(const std::string& json_text, const std::filesystem::path& path);

// "bfloat16" / "float16" / "float32" (and "bf16", "fp16", "fp32", "half", "float") -> scalar type.
// UserError naming `context` otherwise.
at::ScalarType parse_dtype_name(const std::string& name, const std::string& context);

// The seven linear projections of a decoder layer, in PEFT/HF order of appearance.
inline const std::vector<std::string>& linear_module_names() {
  static const std::vector<std::string> names = {"q_proj",    "k_proj",  "v_proj",   "o_proj",
                                                 "gate_proj", "up_proj", "down_proj"};
  return names;
}

// "model.layers.N.self_attn.q_proj" / "model.layers.N.mlp.gate_proj" for module q_proj / gate_proj.
std::string linear_module_path(int64_t layer, const std::string& module);

// [out, in] of a projection of this architecture.
std::vector<int64_t> linear_shape(const ModelConfig& c, const std::string& module);

}  // namespace qlora::model

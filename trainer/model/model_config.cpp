#include "trainer/model/model_config.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <set>

#include "trainer/common/error.h"
#include "trainer/common/fs.h"
#include "trainer/io/dtype.h"
#include "trainer/io/gguf_reader.h"
#include "trainer/io/hf_checkpoint.h"
#include "trainer/model/gguf_base.h"

namespace qlora::model {

namespace {

using json = nlohmann::json;

// A value for a message: its JSON text, cut short so a huge value is not echoed whole.
std::string shown(const json& v) {
  std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() > 64) s = s.substr(0, 60) + " ...";
  return s;
}

struct Reader {
  const json& j;
  std::string where;  // "PATH: " or "PATH: rope_parameters."

  bool has(const char* key) const { return j.contains(key) && !j.at(key).is_null(); }

  int64_t get_int(const char* key) const {
    if (!has(key)) user_error(where, key, ": missing (expected an integer)");
    return as_int(j.at(key), key);
  }
  int64_t get_int(const char* key, int64_t def) const { return has(key) ? as_int(j.at(key), key) : def; }
  int64_t as_int(const json& v, const char* key) const {
    if (v.is_number_integer()) return v.get<int64_t>();
    if (v.is_number_float() && v.get<double>() == static_cast<double>(static_cast<int64_t>(v.get<double>())))
      return static_cast<int64_t>(v.get<double>());
    user_error(where, key, ": expected an integer, got ", shown(v));
  }
  double get_double(const char* key, double def) const {
    if (!has(key)) return def;
    const json& v = j.at(key);
    if (!v.is_number()) user_error(where, key, ": expected a number, got ", shown(v));
    return v.get<double>();
  }
  bool get_bool(const char* key, bool def) const {
    if (!has(key)) return def;
    const json& v = j.at(key);
    if (!v.is_boolean()) user_error(where, key, ": expected true or false, got ", shown(v));
    return v.get<bool>();
  }
  std::string get_string(const char* key, const std::string& def) const {
    if (!has(key)) return def;
    const json& v = j.at(key);
    if (!v.is_string()) user_error(where, key, ": expected a string, got ", shown(v));
    return v.get<std::string>();
  }
  std::optional<int64_t> get_opt_int(const char* key) const {
    if (!has(key)) return std::nullopt;
    return as_int(j.at(key), key);
  }
};

const char* kSupported = "llama, mistral, qwen2, qwen3, phi3, gemma2, gemma3_text, mixtral, qwen2_moe, qwen3_moe";

std::string model_type_of_architecture(const std::string& a) {
  if (a == "LlamaForCausalLM") return "llama";
  if (a == "MistralForCausalLM") return "mistral";
  if (a == "Qwen2ForCausalLM") return "qwen2";
  if (a == "Qwen3ForCausalLM") return "qwen3";
  if (a == "Phi3ForCausalLM") return "phi3";
  if (a == "MixtralForCausalLM") return "mixtral";
  if (a == "Qwen2MoeForCausalLM") return "qwen2_moe";
  if (a == "Qwen3MoeForCausalLM") return "qwen3_moe";
  if (a == "Gemma2ForCausalLM") return "gemma2";
  if (a == "Gemma3ForCausalLM") return "gemma3_text";
  return "";
}

// One RoPE parameter object (rope_parameters, rope_scaling, or one layer type's entry of Gemma 3's
// rope_parameters) into rope; c gives the family, head_dim and max_position_embeddings.
void read_rope_object(const Reader& top, const json& params, const std::string& pname, const ModelConfig& c,
                      RopeConfig& rope) {
  if (!params.is_object()) user_error(top.where, pname, ": expected an object, got ", shown(params));
  Reader r{params, top.where + pname + "."};
  rope.theta = r.get_double("rope_theta", rope.theta);
  std::string type = r.get_string("rope_type", r.get_string("type", "default"));
  // Phi3Config reads the older "su" and "yarn" spellings as longrope.
  if (c.model_type == "phi3" && (type == "su" || type == "yarn")) type = "longrope";
  if (type != "default" && type != "linear" && type != "llama3" && !(type == "longrope" && c.model_type == "phi3"))
    user_error(top.where, pname, ".rope_type: \"", type, "\" is not supported (expected default, linear or llama3",
               c.model_type == "phi3" ? ", or longrope for phi3)" : ")");
  rope.type = type;
  const double prf = r.get_double("partial_rotary_factor", top.get_double("partial_rotary_factor", 1.0));
  // transformers: dim = int(head_dim * partial_rotary_factor).
  const auto rot = static_cast<int64_t>(static_cast<double>(c.head_dim) * prf);
  if (!(prf > 0 && prf <= 1) || rot < 2 || rot % 2 != 0)
    user_error(top.where, pname, ".partial_rotary_factor: expected a factor in (0, 1] giving an even number of ",
               "rotary dimensions of head_dim ", c.head_dim, ", got ", prf);
  rope.rotary_dim = rot;
  if (type == "linear" || type == "llama3") {
    if (!r.has("factor")) user_error(r.where, "factor: missing (required for rope_type ", type, ")");
    rope.factor = r.get_double("factor", 1.0);
    if (!(rope.factor > 0)) user_error(r.where, "factor: expected a positive number");
  }
  if (type == "llama3") {
    rope.low_freq_factor = r.get_double("low_freq_factor", 1.0);
    rope.high_freq_factor = r.get_double("high_freq_factor", 4.0);
    if (!(rope.high_freq_factor > rope.low_freq_factor))
      user_error(r.where, "high_freq_factor: must be greater than low_freq_factor");
    rope.original_max_position_embeddings = r.get_int(
        "original_max_position_embeddings", top.get_int("original_max_position_embeddings", c.max_position_embeddings));
  }
  if (type == "longrope") {
    // Phi3Config's default for the pretraining length is 4096.
    const int64_t orig =
        r.get_int("original_max_position_embeddings", top.get_int("original_max_position_embeddings", 4096));
    if (orig <= 1) user_error(r.where, "original_max_position_embeddings: expected an integer above 1, got ", orig);
    rope.original_max_position_embeddings = orig;
    for (const char* key : {"short_factor", "long_factor"}) {
      if (!r.has(key)) user_error(r.where, key, ": missing (required for rope_type longrope)");
      const json& f = params.at(key);
      std::vector<double>& out = std::string(key) == "short_factor" ? rope.short_factor : rope.long_factor;
      if (f.is_array())
        for (const auto& x : f)
          if (x.is_number()) out.push_back(x.get<double>());
      if (!f.is_array() || out.size() != f.size() || static_cast<int64_t>(out.size()) != rot / 2)
        user_error(r.where, key, ": expected a list of ", rot / 2, " numbers (one per rotary frequency)");
    }
    // transformers: factor defaults to max_position_embeddings / original_max_position_embeddings,
    // and the cos/sin scale to sqrt(1 + ln(factor) / ln(original)) when factor > 1.
    const double factor =
        r.get_double("factor", static_cast<double>(c.max_position_embeddings) / static_cast<double>(orig));
    rope.factor = factor;
    rope.attention_factor =
        r.has("attention_factor")
            ? r.get_double("attention_factor", 1.0)
            : (factor <= 1.0 ? 1.0 : std::sqrt(1.0 + std::log(factor) / std::log(static_cast<double>(orig))));
  }
}

void read_rope(const Reader& top, ModelConfig& c) {
  // Newer layout: rope_parameters {"rope_type", "rope_theta", ...}; older: rope_theta at the top
  // and rope_scaling {"type" or "rope_type", "factor", ...} (null for plain RoPE).
  const json* params = nullptr;
  std::string pname;
  if (top.has("rope_parameters")) {
    params = &top.j.at("rope_parameters");
    pname = "rope_parameters";
  } else if (top.has("rope_scaling")) {
    params = &top.j.at("rope_scaling");
    pname = "rope_scaling";
  }
  c.rope.theta = top.get_double("rope_theta", 10000.0);
  c.rope.rotary_dim = c.head_dim;
  if (!params) {
    const double prf = top.get_double("partial_rotary_factor", 1.0);
    const auto rot = static_cast<int64_t>(static_cast<double>(c.head_dim) * prf);
    if (!(prf > 0 && prf <= 1) || rot < 2 || rot % 2 != 0)
      user_error(top.where, "partial_rotary_factor: expected a factor in (0, 1] giving an even number of rotary ",
                 "dimensions of head_dim ", c.head_dim, ", got ", prf);
    c.rope.rotary_dim = rot;
    return;
  }
  if (params->is_object())
    for (auto it = params->begin(); it != params->end(); ++it)
      if (it.value().is_object())
        user_error(top.where, pname, ".", it.key(), ": per-layer-type RoPE parameters are not supported");
  read_rope_object(top, *params, pname, c, c.rope);
}

// Gemma 3: global (full_attention) layers use rope_theta (default 1e6) with the scaling;
// sliding layers plain RoPE with rope_local_base_freq (default 1e4). Newer files hold both as
// rope_parameters {"full_attention": {...}, "sliding_attention": {...}}; older ones rope_theta,
// rope_local_base_freq and rope_scaling (which applies to the global layers only).
void read_gemma3_rope(const Reader& top, ModelConfig& c) {
  RopeConfig global, local;
  global.theta = top.get_double("rope_theta", 1000000.0);
  local.theta = top.get_double("rope_local_base_freq", 10000.0);
  global.rotary_dim = local.rotary_dim = c.head_dim;
  if (top.has("rope_parameters")) {
    const json& p = top.j.at("rope_parameters");
    if (!p.is_object() || !(p.contains("full_attention") || p.contains("sliding_attention")))
      user_error(top.where,
                 "rope_parameters: expected an object keyed by layer type (\"full_attention\", "
                 "\"sliding_attention\"), got ",
                 shown(p));
    for (auto it = p.begin(); it != p.end(); ++it)
      if (it.key() != "full_attention" && it.key() != "sliding_attention")
        user_error(top.where, "rope_parameters.", it.key(),
                   ": unknown layer type (expected full_attention or sliding_attention)");
    if (p.contains("full_attention") && !p.at("full_attention").is_null())
      read_rope_object(top, p.at("full_attention"), "rope_parameters.full_attention", c, global);
    if (p.contains("sliding_attention") && !p.at("sliding_attention").is_null())
      read_rope_object(top, p.at("sliding_attention"), "rope_parameters.sliding_attention", c, local);
  } else if (top.has("rope_scaling")) {
    read_rope_object(top, top.j.at("rope_scaling"), "rope_scaling", c, global);
  }
  c.rope = global;
  c.rope_local = local;
}

// A softcap value: absent -> the family's default; null -> none; else a positive number.
std::optional<double> read_softcap(const Reader& r, const char* key, std::optional<double> def) {
  if (!r.j.contains(key)) return def;
  const json& v = r.j.at(key);
  if (v.is_null()) return std::nullopt;
  if (!v.is_number() || !(v.get<double>() > 0))
    user_error(r.where, key, ": expected a positive number or null, got ", shown(v));
  return v.get<double>();
}

void read_moe(const Reader& r, ModelConfig& c) {
  const bool mixtral = c.model_type == "mixtral";
  // Written num_local_experts by Mixtral and by transformers 5, num_experts by the Qwen releases.
  const char* experts_key = r.has("num_local_experts") || !r.has("num_experts") ? "num_local_experts" : "num_experts";
  c.num_experts = r.get_int(experts_key);
  c.num_experts_per_tok = r.get_int("num_experts_per_tok");
  if (c.num_experts <= 0) user_error(r.where, experts_key, ": expected a positive integer, got ", c.num_experts);
  if (c.num_experts_per_tok <= 0 || c.num_experts_per_tok > c.num_experts)
    user_error(r.where, "num_experts_per_tok: expected 1 to ", c.num_experts, ", got ", c.num_experts_per_tok);
  c.output_router_logits = r.get_bool("output_router_logits", false);
  c.router_aux_loss_coef = r.get_double("router_aux_loss_coef", 0.001);
  if (!std::isfinite(c.router_aux_loss_coef) || c.router_aux_loss_coef < 0)
    user_error(r.where, "router_aux_loss_coef: expected a non-negative number, got ", c.router_aux_loss_coef);
  if (mixtral) {
    c.moe_intermediate_size = c.intermediate_size;
    c.norm_topk_prob = true;  // MixtralTopKRouter always renormalizes
    if (r.get_double("router_jitter_noise", 0.0) != 0.0)
      user_error(r.where, "router_jitter_noise: only 0 is supported (no noise on the router's input)");
  } else {
    c.moe_intermediate_size = r.get_int("moe_intermediate_size");
    if (c.moe_intermediate_size <= 0)
      user_error(r.where, "moe_intermediate_size: expected a positive integer, got ", c.moe_intermediate_size);
    c.norm_topk_prob = r.get_bool("norm_topk_prob", c.model_type == "qwen3_moe");
    if (c.model_type == "qwen2_moe") {
      c.shared_expert_intermediate_size = r.get_int("shared_expert_intermediate_size");
      if (c.shared_expert_intermediate_size <= 0)
        user_error(r.where, "shared_expert_intermediate_size: expected a positive integer, got ",
                   c.shared_expert_intermediate_size);
    }
    // transformers makes layer i sparse unless it is in mlp_only_layers or (i + 1) is not a
    // multiple of decoder_sparse_step; only models whose every layer is sparse are supported.
    if (r.get_int("decoder_sparse_step", 1) != 1)
      user_error(r.where, "decoder_sparse_step: only 1 is supported (every layer a mixture of experts)");
    if (r.has("mlp_only_layers") && !(r.j.at("mlp_only_layers").is_array() && r.j.at("mlp_only_layers").empty()))
      user_error(r.where, "mlp_only_layers: only an empty list is supported (every layer a mixture of experts)");
  }
}

void read_quantization(const Reader& top, ModelConfig& c) {
  if (!top.has("quantization_config")) return;
  const json& q = top.j.at("quantization_config");
  if (!q.is_object()) user_error(top.where, "quantization_config: expected an object");
  Reader r{q, top.where + "quantization_config."};
  const std::string method = r.get_string("quant_method", "bitsandbytes");
  if (method != "bitsandbytes")
    user_error(r.where, "quant_method: \"", method,
               "\" checkpoints are not supported (only bitsandbytes 4-bit nf4); "
               "load the original 16-bit model instead");
  if (r.get_bool("load_in_8bit", false))
    user_error(r.where, "load_in_8bit: 8-bit bitsandbytes checkpoints are not supported (only 4-bit nf4)");
  if (!r.get_bool("load_in_4bit", false))
    user_error(r.where, "load_in_4bit: expected true for a bitsandbytes checkpoint");
  BnbQuantConfig b;
  b.quant_type = r.get_string("bnb_4bit_quant_type", "fp4");  // bitsandbytes' default is fp4
  if (b.quant_type != "nf4")
    user_error(r.where, "bnb_4bit_quant_type: \"", b.quant_type, "\" is not supported (only nf4)");
  b.double_quant = r.get_bool("bnb_4bit_use_double_quant", false);
  b.compute_dtype = r.get_string("bnb_4bit_compute_dtype", "float32");
  b.quant_storage = r.get_string("bnb_4bit_quant_storage", "uint8");
  if (r.has("llm_int8_skip_modules")) {
    const json& s = q.at("llm_int8_skip_modules");
    if (!s.is_array()) user_error(r.where, "llm_int8_skip_modules: expected a list of module names");
    for (const auto& e : s) {
      if (!e.is_string()) user_error(r.where, "llm_int8_skip_modules: expected a list of module names");
      b.skip_modules.push_back(e.get<std::string>());
    }
  }
  c.quantization = b;
}

}  // namespace

at::ScalarType parse_dtype_name(const std::string& name, const std::string& context) {
  if (const auto t = io::parse_float_dtype(name, io::FloatNames::Any)) return *t;
  user_error(context, ": expected bfloat16, float16 or float32, got \"", name, "\"");
}

std::optional<int64_t> ModelConfig::window_of(int64_t layer) const {
  if (!sliding_window || layer < 0 || layer >= static_cast<int64_t>(layer_sliding.size()) || !layer_sliding[layer])
    return std::nullopt;
  return sliding_window;
}

double ModelConfig::attention_scale() const {
  return 1.0 / std::sqrt(query_pre_attn_scalar > 0 ? query_pre_attn_scalar : static_cast<double>(head_dim));
}

std::string layer_prefix(int64_t layer) { return "model.layers." + std::to_string(layer) + "."; }

std::string router_path(const ModelConfig& c) {
  if (!c.is_moe()) return "";
  return c.model_type == "mixtral" ? "block_sparse_moe.gate" : "mlp.gate";
}

std::vector<LinearSpec> layer_linears(const ModelConfig& c) {
  const int64_t H = c.hidden_size, I = c.intermediate_size;
  std::vector<LinearSpec> v;
  if (c.is_moe()) {
    v.push_back({"q_proj", "self_attn.q_proj", c.q_out(), H, c.qkv_bias});
    v.push_back({"k_proj", "self_attn.k_proj", c.kv_out(), H, c.qkv_bias});
    v.push_back({"v_proj", "self_attn.v_proj", c.kv_out(), H, c.qkv_bias});
    v.push_back({"o_proj", "self_attn.o_proj", H, c.q_out(), c.o_bias});
    const int64_t M = c.moe_intermediate_size;
    const bool mixtral = c.model_type == "mixtral";
    for (int64_t e = 0; e < c.num_experts; ++e) {
      const std::string p = (mixtral ? "block_sparse_moe.experts." : "mlp.experts.") + std::to_string(e) + ".";
      v.push_back({mixtral ? "w1" : "gate_proj", p + (mixtral ? "w1" : "gate_proj"), M, H, false});
      v.push_back({mixtral ? "w3" : "up_proj", p + (mixtral ? "w3" : "up_proj"), M, H, false});
      v.push_back({mixtral ? "w2" : "down_proj", p + (mixtral ? "w2" : "down_proj"), H, M, false});
    }
    if (c.shared_expert_intermediate_size > 0) {
      const int64_t S = c.shared_expert_intermediate_size;
      v.push_back({"gate_proj", "mlp.shared_expert.gate_proj", S, H, false});
      v.push_back({"up_proj", "mlp.shared_expert.up_proj", S, H, false});
      v.push_back({"down_proj", "mlp.shared_expert.down_proj", H, S, false});
    }
    return v;
  }
  if (c.fused_qkv) {
    v.push_back({"qkv_proj", "self_attn.qkv_proj", c.q_out() + 2 * c.kv_out(), H, c.qkv_bias});
  } else {
    v.push_back({"q_proj", "self_attn.q_proj", c.q_out(), H, c.qkv_bias});
    v.push_back({"k_proj", "self_attn.k_proj", c.kv_out(), H, c.qkv_bias});
    v.push_back({"v_proj", "self_attn.v_proj", c.kv_out(), H, c.qkv_bias});
  }
  v.push_back({"o_proj", "self_attn.o_proj", H, c.q_out(), c.o_bias});
  if (c.fused_gate_up) {
    v.push_back({"gate_up_proj", "mlp.gate_up_proj", 2 * I, H, c.mlp_bias});
  } else {
    v.push_back({"gate_proj", "mlp.gate_proj", I, H, c.mlp_bias});
    v.push_back({"up_proj", "mlp.up_proj", I, H, c.mlp_bias});
  }
  v.push_back({"down_proj", "mlp.down_proj", H, I, c.mlp_bias});
  return v;
}

const LinearSpec* find_linear(const std::vector<LinearSpec>& specs, const std::string& name) {
  for (const auto& s : specs)
    if (s.name == name) return &s;
  return nullptr;
}

ModelConfig parse_model_config(const std::string& text, const std::filesystem::path& path) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) { user_error(path.string(), ": not valid JSON: ", json_error_text(e)); }
  if (!j.is_object()) user_error(path.string(), ": expected a JSON object");
  Reader r{j, path.string() + ": "};
  ModelConfig c;
  c.path = path;

  // Architecture: model_type and architectures[0] must both name a supported family.
  std::string arch;
  if (r.has("architectures")) {
    const json& a = j.at("architectures");
    if (!a.is_array() || a.empty() || !a[0].is_string())
      user_error(r.where, "architectures: expected a list with one class name, got ", shown(a));
    arch = a[0].get<std::string>();
  }
  c.model_type = r.get_string("model_type", "");
  c.architecture = arch;
  const std::string from_arch = model_type_of_architecture(arch);
  if (c.model_type.empty()) c.model_type = from_arch;
  if (c.model_type == "gemma3" || arch == "Gemma3ForConditionalGeneration")
    user_error(r.where, "model_type: \"gemma3\" (Gemma3ForConditionalGeneration, the multimodal Gemma 3) is not ",
               "supported; use a text-only Gemma 3 checkpoint (model_type gemma3_text, Gemma3ForCausalLM, e.g. ",
               "gemma-3-1b) or another supported family (", kSupported, ")");
  const bool gemma = c.model_type == "gemma2" || c.model_type == "gemma3_text";
  static const std::set<std::string> supported = {"llama",  "mistral",     "qwen2",   "qwen3",     "phi3",
                                                  "gemma2", "gemma3_text", "mixtral", "qwen2_moe", "qwen3_moe"};
  if (!supported.count(c.model_type)) {
    if (c.model_type.empty())
      user_error(r.where, "model_type: missing and architectures names none of the supported families (", kSupported,
                 ")");
    user_error(r.where, "model_type: \"", c.model_type, "\"", arch.empty() ? "" : " (" + arch + ")",
               " is not supported; supported architectures: ", kSupported);
  }
  if (!arch.empty() && from_arch != c.model_type)
    user_error(r.where, "architectures: \"", arch, "\" is not supported for model_type \"", c.model_type,
               "\" (expected a ", c.model_type,
               " causal LM: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, ",
               "Phi3ForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM, MixtralForCausalLM, Qwen2MoeForCausalLM or ",
               "Qwen3MoeForCausalLM)");

  c.vocab_size = r.get_int("vocab_size");
  c.hidden_size = r.get_int("hidden_size");
  c.intermediate_size = r.get_int("intermediate_size");
  c.num_hidden_layers = r.get_int("num_hidden_layers");
  c.num_attention_heads = r.get_int("num_attention_heads");
  c.num_key_value_heads = r.get_int("num_key_value_heads", c.num_attention_heads);
  for (auto [k, v] : {std::pair{"vocab_size", c.vocab_size},
                      {"hidden_size", c.hidden_size},
                      {"intermediate_size", c.intermediate_size},
                      {"num_hidden_layers", c.num_hidden_layers},
                      {"num_attention_heads", c.num_attention_heads},
                      {"num_key_value_heads", c.num_key_value_heads}})
    if (v <= 0) user_error(r.where, k, ": expected a positive integer, got ", v);
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    user_error(r.where, "num_key_value_heads: ", c.num_key_value_heads, " does not divide num_attention_heads ",
               c.num_attention_heads);
  if (r.has("head_dim") || gemma) {
    c.head_dim = r.get_int("head_dim", 256);  // Gemma's configuration default
  } else {
    if (c.hidden_size % c.num_attention_heads != 0)
      user_error(r.where, "head_dim: missing, and hidden_size ", c.hidden_size,
                 " is not a multiple of num_attention_heads ", c.num_attention_heads);
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  if (c.head_dim <= 0 || c.head_dim % 2 != 0)
    user_error(r.where, "head_dim: expected a positive even integer, got ", c.head_dim);
  c.max_position_embeddings = r.get_int("max_position_embeddings", c.model_type == "gemma2" ? 8192
                                                                   : gemma                  ? 131072
                                                                                            : 2048);
  c.rms_norm_eps = r.get_double("rms_norm_eps", 1e-6);
  if (gemma) {
    // transformers' Gemma configurations read hidden_activation (hidden_act is ignored).
    c.hidden_act = r.get_string("hidden_activation", "gelu_pytorch_tanh");
    if (c.hidden_act != "gelu_pytorch_tanh")
      user_error(r.where, "hidden_activation: \"", c.hidden_act, "\" is not supported (expected gelu_pytorch_tanh)");
  } else {
    c.hidden_act = r.get_string("hidden_act", "silu");
    if (c.hidden_act != "silu" && c.hidden_act != "swish")
      user_error(r.where, "hidden_act: \"", c.hidden_act, "\" is not supported (expected silu)");
  }
  c.tie_word_embeddings = r.get_bool("tie_word_embeddings", gemma);
  if (c.model_type == "gemma3_text")
    read_gemma3_rope(r, c);
  else
    read_rope(r, c);

  const bool attention_bias = r.get_bool("attention_bias", false);
  if (c.model_type == "llama") {
    c.qkv_bias = c.o_bias = attention_bias;
    c.mlp_bias = r.get_bool("mlp_bias", false);
  } else if (c.model_type == "qwen2") {
    c.qkv_bias = true;  // Qwen2Attention: q,k,v with bias, o without, regardless of attention_bias
  } else if (c.model_type == "qwen2_moe") {
    c.qkv_bias = r.get_bool("qkv_bias", true);  // Qwen2MoeAttention: q,k,v biases by default
  } else if (c.model_type == "qwen3" || c.model_type == "qwen3_moe") {
    c.qkv_bias = c.o_bias = attention_bias;
    c.qk_norm = true;
  } else if (c.model_type == "phi3") {
    c.fused_qkv = c.fused_gate_up = true;  // Phi3Attention / Phi3MLP: no biases
  } else if (gemma) {
    c.gemma = true;
    c.qkv_bias = c.o_bias = attention_bias;
    c.qk_norm = c.model_type == "gemma3_text";
    c.query_pre_attn_scalar = r.get_double("query_pre_attn_scalar", 256.0);
    if (!(c.query_pre_attn_scalar > 0))
      user_error(r.where, "query_pre_attn_scalar: expected a positive number, got ", c.query_pre_attn_scalar);
    const bool g2 = c.model_type == "gemma2";
    c.final_logit_softcapping =
        read_softcap(r, "final_logit_softcapping", g2 ? std::optional<double>(30.0) : std::nullopt);
    // Gemma3Attention does not pass attn_logit_softcapping to attention: only Gemma 2 caps scores.
    if (g2) c.attn_logit_softcapping = read_softcap(r, "attn_logit_softcapping", 50.0);
    if (r.get_bool("use_bidirectional_attention", false))
      user_error(r.where, "use_bidirectional_attention: bidirectional (embedding) Gemma models are not supported");
  }

  // Sliding window, per layer.
  c.layer_sliding.assign(c.num_hidden_layers, false);
  if (c.model_type != "llama") {
    c.sliding_window = r.get_opt_int("sliding_window");
    if (c.model_type.starts_with("qwen") && !r.get_bool("use_sliding_window", false)) c.sliding_window.reset();
    if (c.sliding_window && *c.sliding_window <= 0)
      user_error(r.where, "sliding_window: expected a positive integer, got ", *c.sliding_window);
    if (gemma && !r.j.contains("sliding_window")) c.sliding_window = 4096;  // Gemma's configuration default
    if (gemma) {
      // Gemma 2 alternates sliding and global layers; Gemma 3 files without layer_types give the
      // older sliding_window_pattern (every N-th layer global, default 6).
      const int64_t pattern = c.model_type == "gemma2" ? 2 : r.get_int("sliding_window_pattern", 6);
      if (pattern <= 0) user_error(r.where, "sliding_window_pattern: expected a positive integer, got ", pattern);
      for (int64_t i = 0; i < c.num_hidden_layers; ++i) c.layer_sliding[i] = (i + 1) % pattern != 0;
    }
    if (c.sliding_window || gemma) {
      if (c.model_type == "mistral" || c.model_type == "phi3" || c.model_type == "mixtral") {
        c.layer_sliding.assign(c.num_hidden_layers, true);
      } else if (r.has("layer_types")) {
        const json& lt = j.at("layer_types");
        if (!lt.is_array() || static_cast<int64_t>(lt.size()) != c.num_hidden_layers)
          user_error(r.where, "layer_types: expected a list of ", c.num_hidden_layers, " layer types");
        for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
          const std::string t = lt[i].is_string() ? lt[i].get<std::string>() : "";
          if (t != "full_attention" && t != "sliding_attention")
            user_error(r.where, "layer_types[", i, "]: expected \"full_attention\" or \"sliding_attention\"");
          c.layer_sliding[i] = t == "sliding_attention";
        }
      } else if (!gemma) {
        const int64_t mwl = r.get_int("max_window_layers", c.num_hidden_layers);
        for (int64_t i = 0; i < c.num_hidden_layers; ++i) c.layer_sliding[i] = i >= mwl;
      }
    }
  }

  if (c.model_type == "mixtral" || c.model_type == "qwen2_moe" || c.model_type == "qwen3_moe") read_moe(r, c);

  c.torch_dtype = r.get_string("dtype", r.get_string("torch_dtype", "float32"));
  parse_dtype_name(c.torch_dtype, r.where + (r.has("dtype") ? "dtype" : "torch_dtype"));
  c.bos_token_id = r.get_opt_int("bos_token_id");
  c.pad_token_id = r.get_opt_int("pad_token_id");
  if (r.has("eos_token_id")) {
    const json& e = j.at("eos_token_id");
    if (e.is_array()) {
      for (const auto& x : e) c.eos_token_ids.push_back(r.as_int(x, "eos_token_id"));
    } else {
      c.eos_token_ids.push_back(r.get_int("eos_token_id"));
    }
  }
  read_quantization(r, c);
  return c;
}

ModelConfig read_model_config(const std::filesystem::path& dir_or_file) {
  std::filesystem::path p = dir_or_file;
  if (!std::filesystem::exists(p)) user_error(p.string(), ": not a model directory (does not exist)");
  if (io::is_gguf_file(p)) return gguf_model_config(io::GgufFile(p));
  if (std::filesystem::is_directory(p)) p /= "config.json";
  if (!std::filesystem::exists(p))
    user_error(p.string(), ": missing (a Hugging Face model directory has a config.json)");
  return parse_model_config(fs::read_file(p), p);
}

}  // namespace qlora::model

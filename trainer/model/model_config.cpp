#include "trainer/model/model_config.h"

#include <nlohmann/json.hpp>

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

const char* kSupported = "llama, mistral, qwen2, qwen3";

std::string model_type_of_architecture(const std::string& a) {
  if (a == "LlamaForCausalLM") return "llama";
  if (a == "MistralForCausalLM") return "mistral";
  if (a == "Qwen2ForCausalLM") return "qwen2";
  if (a == "Qwen3ForCausalLM") return "qwen3";
  return "";
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
  if (!params) return;
  if (!params->is_object()) user_error(top.where, pname, ": expected an object, got ", shown(*params));
  for (auto it = params->begin(); it != params->end(); ++it)
    if (it.value().is_object())
      user_error(top.where, pname, ".", it.key(), ": per-layer-type RoPE parameters are not supported");
  Reader r{*params, top.where + pname + "."};
  c.rope.theta = r.get_double("rope_theta", c.rope.theta);
  std::string type = r.get_string("rope_type", r.get_string("type", "default"));
  if (type != "default" && type != "linear" && type != "llama3")
    user_error(top.where, pname, ".rope_type: \"", type, "\" is not supported (expected default, linear or llama3)");
  c.rope.type = type;
  const double prf = r.get_double("partial_rotary_factor", top.get_double("partial_rotary_factor", 1.0));
  if (prf != 1.0) user_error(top.where, pname, ".partial_rotary_factor: only 1.0 is supported, got ", prf);
  if (type == "linear" || type == "llama3") {
    if (!r.has("factor")) user_error(r.where, "factor: missing (required for rope_type ", type, ")");
    c.rope.factor = r.get_double("factor", 1.0);
    if (!(c.rope.factor > 0)) user_error(r.where, "factor: expected a positive number");
  }
  if (type == "llama3") {
    c.rope.low_freq_factor = r.get_double("low_freq_factor", 1.0);
    c.rope.high_freq_factor = r.get_double("high_freq_factor", 4.0);
    if (!(c.rope.high_freq_factor > c.rope.low_freq_factor))
      user_error(r.where, "high_freq_factor: must be greater than low_freq_factor");
    c.rope.original_max_position_embeddings = r.get_int(
        "original_max_position_embeddings", top.get_int("original_max_position_embeddings", c.max_position_embeddings));
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

std::string linear_module_path(int64_t layer, const std::string& module) {
  const bool attn = module == "q_proj" || module == "k_proj" || module == "v_proj" || module == "o_proj";
  return "model.layers." + std::to_string(layer) + (attn ? ".self_attn." : ".mlp.") + module;
}

std::vector<int64_t> linear_shape(const ModelConfig& c, const std::string& m) {
  if (m == "q_proj") return {c.q_out(), c.hidden_size};
  if (m == "k_proj" || m == "v_proj") return {c.kv_out(), c.hidden_size};
  if (m == "o_proj") return {c.hidden_size, c.q_out()};
  if (m == "gate_proj" || m == "up_proj") return {c.intermediate_size, c.hidden_size};
  if (m == "down_proj") return {c.hidden_size, c.intermediate_size};
  TORCH_CHECK(false, "linear_shape: unknown module ", m);
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
  if (c.model_type != "llama" && c.model_type != "mistral" && c.model_type != "qwen2" && c.model_type != "qwen3") {
    if (c.model_type.empty())
      user_error(r.where, "model_type: missing and architectures names none of the supported families (", kSupported,
                 ")");
    user_error(r.where, "model_type: \"", c.model_type, "\"", arch.empty() ? "" : " (" + arch + ")",
               " is not supported; supported architectures: ", kSupported);
  }
  if (!arch.empty() && from_arch != c.model_type)
    user_error(r.where, "architectures: \"", arch, "\" is not supported for model_type \"", c.model_type,
               "\" (expected a ", c.model_type,
               " causal LM: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM or Qwen3ForCausalLM)");

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
  if (r.has("head_dim")) {
    c.head_dim = r.get_int("head_dim");
  } else {
    if (c.hidden_size % c.num_attention_heads != 0)
      user_error(r.where, "head_dim: missing, and hidden_size ", c.hidden_size,
                 " is not a multiple of num_attention_heads ", c.num_attention_heads);
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  if (c.head_dim <= 0 || c.head_dim % 2 != 0)
    user_error(r.where, "head_dim: expected a positive even integer, got ", c.head_dim);
  c.max_position_embeddings = r.get_int("max_position_embeddings", 2048);
  c.rms_norm_eps = r.get_double("rms_norm_eps", 1e-6);
  c.hidden_act = r.get_string("hidden_act", "silu");
  if (c.hidden_act != "silu" && c.hidden_act != "swish")
    user_error(r.where, "hidden_act: \"", c.hidden_act, "\" is not supported (expected silu)");
  c.tie_word_embeddings = r.get_bool("tie_word_embeddings", false);
  read_rope(r, c);

  const bool attention_bias = r.get_bool("attention_bias", false);
  if (c.model_type == "llama") {
    c.qkv_bias = c.o_bias = attention_bias;
    c.mlp_bias = r.get_bool("mlp_bias", false);
  } else if (c.model_type == "qwen2") {
    c.qkv_bias = true;  // Qwen2Attention: q,k,v with bias, o without, regardless of attention_bias
  } else if (c.model_type == "qwen3") {
    c.qkv_bias = c.o_bias = attention_bias;
    c.qk_norm = true;
  }

  // Sliding window, per layer.
  c.layer_sliding.assign(c.num_hidden_layers, false);
  if (c.model_type != "llama") {
    c.sliding_window = r.get_opt_int("sliding_window");
    if ((c.model_type == "qwen2" || c.model_type == "qwen3") && !r.get_bool("use_sliding_window", false))
      c.sliding_window.reset();
    if (c.sliding_window && *c.sliding_window <= 0)
      user_error(r.where, "sliding_window: expected a positive integer, got ", *c.sliding_window);
    if (c.sliding_window) {
      if (c.model_type == "mistral") {
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
      } else {
        const int64_t mwl = r.get_int("max_window_layers", c.num_hidden_layers);
        for (int64_t i = 0; i < c.num_hidden_layers; ++i) c.layer_sliding[i] = i >= mwl;
      }
    }
  }

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

// PEFT LoRA adapters (docs/formats.md §5): adapter_config.json + adapter_model.safetensors
// with keys base_model.model.<module>.lora_A.weight [r, in] / .lora_B.weight [out, r].
#pragma once
#include <ATen/core/Tensor.h>

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace qlora::io {

// The two files of a PEFT adapter directory.
inline constexpr const char* kPeftConfigFile = "adapter_config.json";
inline constexpr const char* kPeftWeightsFile = "adapter_model.safetensors";

// PEFT's state-dict key of a LoRA tensor: "base_model.model.<module_path>.lora_A.weight"
// (which = 'A'), ".lora_B.weight" ('B') or DoRA's ".lora_magnitude_vector" ('M').
std::string peft_lora_key(std::string_view module_path, char which);

struct PeftLoraKey {
  std::string module;  // the linear's module path, e.g. "model.layers.0.self_attn.q_proj"
  char which;          // 'A', 'B' or 'M'
};
// Whether the key is a DoRA magnitude ("...lora_magnitude_vector").
bool is_dora_magnitude_key(std::string_view key);
// The module path and matrix a PEFT LoRA key names; nullopt for any other key.
std::optional<PeftLoraKey> parse_peft_lora_key(std::string_view key);

struct PeftAdapterConfig {
  std::string base_model_name_or_path;
  int64_t r = 8;
  double lora_alpha = 16;
  double lora_dropout = 0;
  std::vector<std::string> target_modules;  // short names: q_proj, v_proj, ...
  bool use_rslora = false;
  bool use_dora = false;  // DoRA: a lora_magnitude_vector [out] per adapted module
  // PEFT's init_lora_weights: "true", "false" or a method ("pissa", "olora", "loftq", ...). A
  // method that changes the base (PiSSA, OLoRA, LoftQ) is rerun on the base when PEFT loads the
  // adapter, as it is here (trainer/model/lora_init.h).
  std::string init_lora_weights = "true";
  int64_t loftq_iter = 1;  // loftq_config.loftq_iter
  // Expert tensors of a mixture of experts (experts.gate_up_proj, experts.down_proj); null in the
  // file when empty.
  std::vector<std::string> target_parameters;
};

// adapter_config.json text as PEFT writes it (peft_type LORA, task_type CAUSAL_LM, bias none,
// fan_in_fan_out false, modules_to_save null, inference_mode true, ...).
std::string peft_adapter_config_json(const PeftAdapterConfig& c);

// Reads DIR/adapter_config.json; UserError naming the file and key for anything we cannot use
// (peft_type other than LORA, modules_to_save, rank_pattern/alpha_pattern entries).
PeftAdapterConfig read_peft_adapter_config(const std::filesystem::path& dir);

// Writes adapter_config.json and adapter_model.safetensors (tensors cast to `dtype`, DoRA
// magnitudes kept float32) into `dir`
// (which must exist; files are written atomically).
void write_peft_adapter(const std::filesystem::path& dir, const PeftAdapterConfig& c,
                        const std::map<std::string, at::Tensor>& tensors, at::ScalarType dtype);

// Reads DIR/adapter_model.safetensors (owned copies, any float dtype kept).
std::map<std::string, at::Tensor> read_peft_adapter_tensors(const std::filesystem::path& dir);

}  // namespace qlora::io

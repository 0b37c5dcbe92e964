#include "trainer/io/peft.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>

#include "trainer/common/error.h"
#include "trainer/common/fs.h"
#include "trainer/io/safetensors.h"

namespace qlora::io {

namespace {
constexpr std::string_view kPrefix = "base_model.model.";
constexpr std::string_view kSuffixA = ".lora_A.weight", kSuffixB = ".lora_B.weight";
// DoRA's magnitude: PEFT saves the DoraLinearLayer's weight under this key (no ".weight").
constexpr std::string_view kSuffixM = ".lora_magnitude_vector";

std::string_view suffix_of(char which) { return which == 'A' ? kSuffixA : which == 'B' ? kSuffixB : kSuffixM; }
}  // namespace

std::string peft_lora_key(std::string_view module_path, char which) {
  std::string key(kPrefix);
  key += module_path;
  key += suffix_of(which);
  return key;
}

std::optional<PeftLoraKey> parse_peft_lora_key(std::string_view key) {
  if (!key.starts_with(kPrefix)) return std::nullopt;
  for (const char which : {'A', 'B', 'M'}) {
    const std::string_view suffix = suffix_of(which);
    if (key.ends_with(suffix) && key.size() > kPrefix.size() + suffix.size())
      return PeftLoraKey{std::string(key.substr(kPrefix.size(), key.size() - kPrefix.size() - suffix.size())), which};
  }
  return std::nullopt;
}

bool is_dora_magnitude_key(std::string_view key) { return key.ends_with(kSuffixM); }

std::string peft_adapter_config_json(const PeftAdapterConfig& c) {
  nlohmann::ordered_json j;
  j["alpha_pattern"] = nlohmann::json::object();
  j["auto_mapping"] = nullptr;
  j["base_model_name_or_path"] = c.base_model_name_or_path;
  j["bias"] = "none";
  j["fan_in_fan_out"] = false;
  j["inference_mode"] = true;
  if (c.init_lora_weights == "true" || c.init_lora_weights == "false")
    j["init_lora_weights"] = c.init_lora_weights == "true";
  else
    j["init_lora_weights"] = c.init_lora_weights;
  if (c.init_lora_weights == "loftq") j["loftq_config"] = {{"loftq_bits", 4}, {"loftq_iter", c.loftq_iter}};
  j["layers_pattern"] = nullptr;
  j["layers_to_transform"] = nullptr;
  j["lora_alpha"] = c.lora_alpha;
  j["lora_dropout"] = c.lora_dropout;
  j["modules_to_save"] = nullptr;
  j["peft_type"] = "LORA";
  j["r"] = c.r;
  j["rank_pattern"] = nlohmann::json::object();
  j["revision"] = nullptr;
  j["target_modules"] = c.target_modules;
  j["target_parameters"] = c.target_parameters.empty() ? nlohmann::json(nullptr) : nlohmann::json(c.target_parameters);
  j["task_type"] = "CAUSAL_LM";
  j["use_dora"] = c.use_dora;
  j["use_rslora"] = c.use_rslora;
  return j.dump(2) + "\n";
}

PeftAdapterConfig read_peft_adapter_config(const std::filesystem::path& dir) {
  const auto path = dir / kPeftConfigFile;
  const std::string p = path.string();
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(fs::read_file(path));
  } catch (const nlohmann::json::exception& e) { user_error(p, ": not valid JSON: ", json_error_text(e)); }
  if (!j.is_object()) user_error(p, ": expected a JSON object");
  auto str = [&](const char* k, const std::string& def) -> std::string {
    if (!j.contains(k) || j[k].is_null()) return def;
    if (!j[k].is_string()) user_error(p, ": ", k, ": expected a string");
    return j[k].get<std::string>();
  };
  auto num = [&](const char* k, double def) -> double {
    if (!j.contains(k) || j[k].is_null()) return def;
    if (!j[k].is_number() || !std::isfinite(j[k].get<double>())) user_error(p, ": ", k, ": expected a number");
    return j[k].get<double>();
  };
  auto flag = [&](const char* k) -> bool {
    if (!j.contains(k) || j[k].is_null()) return false;
    if (!j[k].is_boolean()) user_error(p, ": ", k, ": expected true or false");
    return j[k].get<bool>();
  };
  if (str("peft_type", "LORA") != "LORA")
    user_error(p, ": peft_type: only LORA adapters are supported, got ", shorten(str("peft_type", "")));
  if (j.contains("modules_to_save") && !j["modules_to_save"].is_null() && !j["modules_to_save"].empty())
    user_error(p, ": modules_to_save: adapters that also train full modules are not supported");
  for (const char* k : {"rank_pattern", "alpha_pattern"})
    if (j.contains(k) && j[k].is_object() && !j[k].empty())
      user_error(p, ": ", k, ": per-module ranks are not supported");
  if (flag("fan_in_fan_out")) user_error(p, ": fan_in_fan_out: only false is supported");
  PeftAdapterConfig c;
  c.base_model_name_or_path = str("base_model_name_or_path", "");
  const double r = num("r", 8);
  if (!(r > 0 && r <= (1 << 20)) || r != static_cast<int64_t>(r))
    user_error(p, ": r: expected a positive integer (at most 1048576)");
  c.r = static_cast<int64_t>(r);
  c.lora_alpha = num("lora_alpha", 8);
  c.lora_dropout = num("lora_dropout", 0);
  c.use_rslora = flag("use_rslora");
  c.use_dora = flag("use_dora");
  if (j.contains("init_lora_weights") && !j["init_lora_weights"].is_null()) {
    const auto& v = j["init_lora_weights"];
    if (v.is_boolean()) {
      c.init_lora_weights = v.get<bool>() ? "true" : "false";
    } else if (v.is_string()) {
      c.init_lora_weights = v.get<std::string>();
      const std::string& s = c.init_lora_weights;
      const bool niter =
          s.starts_with("pissa_niter_") && s.size() > 12 && s.find_first_not_of("0123456789", 12) == std::string::npos;
      if (s != "gaussian" && s != "pissa" && s != "olora" && s != "loftq" && !niter)
        user_error(p, ": init_lora_weights: \"", shorten(s),
                   "\" is not supported (expected true, false, gaussian, pissa, pissa_niter_K, olora or loftq)");
    } else {
      user_error(p, ": init_lora_weights: expected true, false or a method name");
    }
  }
  if (c.init_lora_weights == "loftq" && j.contains("loftq_config") && j["loftq_config"].is_object()) {
    const auto& lq = j["loftq_config"];
    if (lq.contains("loftq_bits") && lq["loftq_bits"] != 4)
      user_error(p, ": loftq_config.loftq_bits: only 4 is supported (the base is NF4)");
    if (lq.contains("loftq_iter")) {
      if (!lq["loftq_iter"].is_number_integer() || lq["loftq_iter"].get<int64_t>() < 1)
        user_error(p, ": loftq_config.loftq_iter: expected a positive integer");
      c.loftq_iter = lq["loftq_iter"].get<int64_t>();
    }
  }
  if (!j.contains("target_modules")) user_error(p, ": target_modules: missing");
  const auto& t = j["target_modules"];
  if (t.is_string()) {
    if (t.get<std::string>() == "all-linear")
      c.target_modules = {"all-linear"};
    else
      user_error(p, ": target_modules: a regular expression is not supported; list the module names");
  } else if (t.is_array()) {
    for (const auto& e : t) {
      if (!e.is_string()) user_error(p, ": target_modules: expected a list of module names");
      c.target_modules.push_back(e.get<std::string>());
    }
  } else {
    user_error(p, ": target_modules: expected a list of module names");
  }
  if (j.contains("target_parameters") && !j["target_parameters"].is_null()) {
    const auto& tp = j["target_parameters"];
    if (!tp.is_array()) user_error(p, ": target_parameters: expected a list of parameter names");
    for (const auto& e : tp) {
      if (!e.is_string()) user_error(p, ": target_parameters: expected a list of parameter names");
      c.target_parameters.push_back(e.get<std::string>());
    }
  }
  return c;
}

void write_peft_adapter(const std::filesystem::path& dir, const PeftAdapterConfig& c,
                        const std::map<std::string, at::Tensor>& tensors, at::ScalarType dtype) {
  SafetensorsWriter w;
  // DoRA's magnitude stays float32, as PEFT holds it: m / ||W + s B A|| is 1 at the start, which
  // a 16-bit magnitude would move by up to its rounding.
  for (const auto& [k, v] : tensors)
    w.add(k, v.detach().to(at::kCPU).to(is_dora_magnitude_key(k) ? at::kFloat : dtype));
  w.write(dir / kPeftWeightsFile);
  fs::write_file_atomic(dir / kPeftConfigFile, peft_adapter_config_json(c));
}

std::map<std::string, at::Tensor> read_peft_adapter_tensors(const std::filesystem::path& dir) {
  SafetensorsFile f(dir / kPeftWeightsFile);
  std::map<std::string, at::Tensor> out;
  for (const auto& t : f.tensors()) out[t.name] = f.tensor(t.name).clone();
  return out;
}

}  // namespace qlora::io

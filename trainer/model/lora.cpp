#include "trainer/model/lora.h"

#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <mutex>
#include <set>

#include "trainer/common/error.h"
#include "trainer/io/peft.h"

namespace qlora::model {

uint64_t dropout_seed(at::Generator* gen) {
  at::Generator g = gen && gen->defined() ? *gen : at::detail::getDefaultCPUGenerator();
  TORCH_CHECK(g.device().is_cpu(), "LoRA dropout seeds come from a CPU generator, got one on ", g.device());
  std::lock_guard<std::mutex> lock(g.mutex());
  return g.get<at::CPUGeneratorImpl>()->random64();
}

config::LoraConfig to_lora_config(const io::PeftAdapterConfig& c) {
  config::LoraConfig l;
  l.r = c.r;
  l.alpha = c.lora_alpha;
  l.dropout = c.lora_dropout;
  l.use_rslora = c.use_rslora;
  l.use_dora = c.use_dora;
  l.init_lora_weights = c.init_lora_weights;
  l.loftq_iter = c.loftq_iter;
  l.target_parameters = c.target_parameters;
  if (c.target_modules.size() == 1 && c.target_modules[0] == "all-linear")
    l.target_linear = true;
  else
    l.target_modules = c.target_modules;
  return l;
}

double lora_scaling(const config::LoraConfig& cfg) {
  return cfg.use_rslora ? cfg.alpha / std::sqrt(static_cast<double>(cfg.r)) : cfg.alpha / static_cast<double>(cfg.r);
}

void validate_lora_config(const config::LoraConfig& cfg) {
  if (cfg.r <= 0) user_error("lora_r: expected a positive integer, got ", cfg.r);
  if (!(cfg.alpha > 0)) user_error("lora_alpha: expected a positive number, got ", cfg.alpha);
  if (!(cfg.dropout >= 0.0 && cfg.dropout < 1.0))
    user_error("lora_dropout: expected a value in [0, 1), got ", cfg.dropout);
  if (!cfg.target_linear && cfg.target_modules.empty() && cfg.target_parameters.empty())
    user_error("lora_target_modules: empty (name the modules, e.g. [q_proj, v_proj], or set lora_target_linear: true)");
}

namespace {
bool all_linear(const config::LoraConfig& cfg) {
  if (cfg.target_linear) return true;
  for (const auto& t : cfg.target_modules)
    if (t == "all-linear" || t == "all_linear") return true;
  return false;
}

// An expert of a mixture of experts ("model.layers.N.mlp.experts.E.gate_proj"): never adapted.
bool is_expert(const std::string& path) { return path.find(".experts.") != std::string::npos; }

bool matches(const std::string& path, const std::string& target) {
  if (path == target) return true;
  return path.size() > target.size() && path.ends_with(target) && path[path.size() - target.size() - 1] == '.';
}
}  // namespace

bool lora_targets(const config::LoraConfig& cfg, const std::string& module_path) {
  if (is_expert(module_path)) return false;
  if (all_linear(cfg)) return true;
  for (const auto& t : cfg.target_modules)
    if (matches(module_path, t)) return true;
  return false;
}

ExpertTargets resolve_expert_targets(const config::LoraConfig& cfg, const ModelConfig& mc) {
  ExpertTargets out;
  for (const auto& t : cfg.target_parameters) {
    if (!mc.is_moe())
      user_error("lora_target_parameters: \"", t, "\": ", mc.model_type,
                 " is not a mixture of experts (no expert tensors to adapt)");
    bool hit = false;
    for (int64_t l = 0; l < mc.num_hidden_layers; ++l) {
      const std::string p = layer_prefix(l) + "mlp.experts.";
      if (matches(p + "gate_up_proj", t)) hit = out.gate_up = true;
      if (matches(p + "down_proj", t)) hit = out.down = true;
    }
    if (!hit)
      user_error("lora_target_parameters: \"", t,
                 "\" names no expert tensor (expected experts.gate_up_proj or experts.down_proj, PEFT's names)");
  }
  return out;
}

std::string expert_lora_module(bool gate_up, const ExpertTargets& t) {
  return gate_up && t.down ? "mlp.experts.base_layer" : "mlp.experts";
}

std::vector<std::string> resolve_lora_targets(const config::LoraConfig& cfg, const ModelConfig& mc) {
  validate_lora_config(cfg);
  resolve_expert_targets(cfg, mc);  // UserError for a bad lora_target_parameters
  if (!all_linear(cfg) && cfg.target_modules.empty()) return {};
  const std::vector<LinearSpec> specs = layer_linears(mc);
  if (!all_linear(cfg)) {
    for (const auto& t : cfg.target_modules) {
      bool hit = false, expert = false;
      for (int64_t l = 0; l < mc.num_hidden_layers && !hit; ++l)
        for (const auto& s : specs)
          if (matches(layer_prefix(l) + s.path, t)) (is_expert(s.path) ? expert : hit) = true;
      if (!hit && expert)
        user_error("lora_target_modules: \"", t,
                   "\" names the experts of a mixture of experts; adapt them with lora_target_parameters: "
                   "[experts.gate_up_proj, experts.down_proj] as PEFT does");
      if (!hit) {
        std::string avail;
        std::set<std::string> seen;
        for (const auto& s : specs)
          if (!is_expert(s.path) && seen.insert(s.name).second) avail += (avail.empty() ? "" : ", ") + s.name;
        user_error("lora_target_modules: \"", t, "\" matches no linear layer of ",
                   mc.architecture.empty() ? mc.model_type + " models" : mc.architecture, " (its layers have ", avail,
                   ")");
      }
    }
  }
  std::vector<std::string> out;
  std::set<std::string> seen;
  for (const auto& s : specs) {
    if (seen.count(s.name)) continue;
    bool any = false;
    for (int64_t l = 0; l < mc.num_hidden_layers && !any; ++l) any = lora_targets(cfg, layer_prefix(l) + s.path);
    if (any) {
      out.push_back(s.name);
      seen.insert(s.name);
    }
  }
  return out;
}

LoraAdapter make_lora_adapter(int64_t in, int64_t out, const config::LoraConfig& cfg, at::Generator& init_gen,
                              at::ScalarType dtype, at::Device device) {
  // nn.init.kaiming_uniform_(t, a=sqrt(5)) over fan_in: gain = sqrt(2 / (1 + 5)), std = gain /
  // sqrt(fan_in), bound = sqrt(3) * std = 1 / sqrt(fan_in).
  auto kaiming = [&](int64_t rows, int64_t fan_in) {
    const double bound = std::sqrt(3.0) * (std::sqrt(2.0 / (1.0 + 5.0)) / std::sqrt(static_cast<double>(fan_in)));
    at::Tensor t = at::empty({rows, fan_in}, at::kFloat);
    t.uniform_(-bound, bound, init_gen);
    return t;
  };
  const std::string& init = cfg.init_lora_weights;
  at::Tensor A, B;
  if (init == "gaussian") {
    A = at::empty({cfg.r, in}, at::kFloat);
    A.normal_(0.0, 1.0 / static_cast<double>(cfg.r), init_gen);
  } else {
    TORCH_CHECK(init == "true" || init == "false", "make_lora_adapter: init_lora_weights ", init,
                " is computed from the base weight (lora_init.h)");
    A = kaiming(cfg.r, in);
  }
  B = init == "false" ? kaiming(out, cfg.r) : at::zeros({out, cfg.r}, at::kFloat);
  return lora_adapter_from(A, B, cfg, dtype, device);
}

LoraAdapter lora_adapter_from(const at::Tensor& A, const at::Tensor& B, const config::LoraConfig& cfg,
                              at::ScalarType dtype, at::Device device) {
  LoraAdapter a;
  a.scaling = lora_scaling(cfg);
  a.dropout = cfg.dropout;
  a.A = A.to(device, dtype, /*non_blocking=*/false, /*copy=*/true).requires_grad_(true);
  a.B = B.to(device, dtype, /*non_blocking=*/false, /*copy=*/true).requires_grad_(true);
  return a;
}

}  // namespace qlora::model

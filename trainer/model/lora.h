// LoRA adapters as PEFT defines them (docs/formats.md §5).
//
//   y = base(x) + B(A(dropout(x))) * scaling,  A [r, in], B [out, r]
//   scaling = alpha / r, or alpha / sqrt(r) with rsLoRA
//   init: A kaiming-uniform with a = sqrt(5) (uniform in ±1/sqrt(in)), B zeros; or another of
//   PEFT's init_lora_weights (lora_init.h)
//   DoRA (use_dora): the output rescaled per row by a trained magnitude over ||W + scaling B A||
//   (lora_linear.h)
//
// Parameters are plain tensors (requires_grad) named with PEFT's state-dict keys (io::peft_lora_key),
// e.g. "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", so adapter export and
// checkpoints are a straight copy. They are held in the compute dtype (bf16 on GPU); the
// optimizer keeps fp32 master copies and loads values back with Model::load_lora_weights.
#pragma once
#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <vector>

#include "trainer/config/config.h"
#include "trainer/model/model_config.h"

namespace qlora::io {
struct PeftAdapterConfig;
}

namespace qlora::model {

struct DoraNormCache;

struct LoraAdapter {
  at::Tensor A;  // lora_A.weight [r, in], requires grad
  at::Tensor B;  // lora_B.weight [out, r], requires grad
  double scaling = 1.0;
  double dropout = 0.0;  // probability; applied to the adapter's input only while training
  // DoRA (use_dora; lora_linear.h): lora_magnitude_vector [out] (float32, requires grad) and the
  // frozen base's squared row norms [out] (float32). Undefined for plain LoRA.
  at::Tensor magnitude;
  at::Tensor base_sq_norm;
  std::shared_ptr<DoraNormCache> norm_cache;  // ||W + scaling B A|| kept between no-grad calls
  bool dora() const { return magnitude.defined(); }

  // The product with a base layer is lora_linear (lora_linear.h).
};

// A trainable tensor and its PEFT state-dict key.
struct NamedParameter {
  std::string name;
  at::Tensor param;
};

// The LoRA config a PEFT adapter corresponds to (for building the model that loads it).
config::LoraConfig to_lora_config(const io::PeftAdapterConfig& c);

// alpha / r, or alpha / sqrt(r) with use_rslora.
double lora_scaling(const config::LoraConfig& cfg);

// UserError for r <= 0, alpha <= 0, dropout outside [0, 1), or no targets.
void validate_lora_config(const config::LoraConfig& cfg);

// Whether the LoRA config targets the module at `module_path` (PEFT's rule: the path equals a
// target or ends with "." + target; lora_target_linear or "all-linear" takes every projection).
bool lora_targets(const config::LoraConfig& cfg, const std::string& module_path);

// The short module names (q_proj, ...) the config targets in this architecture. UserError when
// a target names no linear layer of the model.
std::vector<std::string> resolve_lora_targets(const config::LoraConfig& cfg, const ModelConfig& mc);

// lora_target_parameters on a mixture of experts: which of the fused expert tensors PEFT's
// target_parameters would wrap, "model.layers.N.mlp.experts.gate_up_proj" [E, 2 inter, hidden]
// and ".down_proj" [E, hidden, inter] (transformers 5's names for every family), by PEFT's rule
// (the name equals a target or ends with "." + target). UserError for a target that names
// neither, or any target on a dense model.
struct ExpertTargets {
  bool gate_up = false, down = false;
};
ExpertTargets resolve_expert_targets(const config::LoraConfig& cfg, const ModelConfig& mc);

// PEFT's module path of an expert adapter under "model.layers.N.": both tensors targeted nest
// two ParamWrappers, gate_up_proj's inside ("mlp.experts.base_layer"), down_proj's outside
// ("mlp.experts").
std::string expert_lora_module(bool gate_up, const ExpertTargets& t);

// A fresh adapter for a [out, in] projection, initialized as PEFT does with `init_gen` (CPU), for
// init_lora_weights true, false and gaussian (the others are computed from the weight: lora_init.h).
LoraAdapter make_lora_adapter(int64_t in_features, int64_t out_features, const config::LoraConfig& cfg,
                              at::Generator& init_gen, at::ScalarType dtype, at::Device device);

// An adapter holding copies of A [r, in] and B [out, r] in `dtype` on `device`.
LoraAdapter lora_adapter_from(const at::Tensor& A, const at::Tensor& B, const config::LoraConfig& cfg,
                              at::ScalarType dtype, at::Device device);

// One 64-bit seed for a LoRA dropout call (kernels::hashed_dropout's mask), drawn from `gen` (a
// CPU generator; null: the default one) under the generator's lock.
uint64_t dropout_seed(at::Generator* gen);

}  // namespace qlora::model

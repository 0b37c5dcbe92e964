// The run configuration as plain structs. trainer/config parses YAML into these once, at the
// edge (validation, "did you mean", --set overrides); nothing deeper reads YAML.
// Key names are Axolotl's / HF's (base_model, lora_r, micro_batch_size, ...).
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "trainer/config/data_spec.h"

namespace qlora::config {

struct QuantizationConfig {
  std::string quant_type = "nf4";      // only nf4
  bool double_quant = true;            // bnb_4bit_use_double_quant
  int64_t blocksize = 64;              // 32..4096, power of two
  std::string compute_dtype = "auto";  // auto (bf16 on GPU, fp32 on CPU) | bf16 | fp16 | fp32
};

struct LoraConfig {
  std::string adapter = "qlora";            // qlora (NF4 base) | lora (16-bit base)
  int64_t r = 8;                            // lora_r
  double alpha = 16;                        // lora_alpha
  double dropout = 0.05;                    // lora_dropout
  std::vector<std::string> target_modules;  // lora_target_modules, e.g. q_proj, v_proj
  bool target_linear = false;               // lora_target_linear: every linear layer of the decoder
  bool use_rslora = false;                  // scaling alpha/sqrt(r) instead of alpha/r
  // use_dora (Axolotl: peft_use_dora): DoRA, the output scaled per row by a trained magnitude over
  // the row norm of W + scaling * B A (trainer/model/lora_linear.h).
  bool use_dora = false;
  // init_lora_weights as PEFT spells it: "true" (A kaiming-uniform, B zero), "false" (both
  // kaiming-uniform), "gaussian", "pissa", "pissa_niter_K", "olora", "loftq" (trainer/model/lora_init.h).
  std::string init_lora_weights = "true";
  int64_t loftq_bits = 4;  // loftq_config.loftq_bits (only 4: the base is NF4)
  int64_t loftq_iter = 1;  // loftq_config.loftq_iter
  // lora_target_parameters: the fused expert tensors of a mixture of experts as PEFT's
  // target_parameters names them (experts.gate_up_proj, experts.down_proj; docs/formats.md §4.5).
  std::vector<std::string> target_parameters;
  // lora_modules_to_save (PEFT's modules_to_save): the embedding and/or the output head trained in
  // full as trainable copies (trainer/model/saved_modules.h).
  std::vector<std::string> modules_to_save;
  // PEFT's ensure_weight_tying: on a model with tied embeddings, one trainable copy serves as both
  // the embedding and the output head. Always so for training; a PEFT adapter says (adapter_config.json).
  bool ensure_weight_tying = true;
};

// overrides_of_model_config: values that replace the base model's config.json ones (Axolotl's
// key). Only the router's load-balancing loss of a mixture of experts is supported.
struct ModelConfigOverrides {
  std::optional<bool> output_router_logits;
  std::optional<double> router_aux_loss_coef;
};

struct OptimizerConfig {
  std::string optimizer = "adamw";  // adamw | adamw_8bit (paged_ prefixes accepted: paging on)
  double learning_rate = 2e-4;
  double weight_decay = 0.0;
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.999;
  double adam_epsilon = 1e-8;
  double max_grad_norm = 1.0;           // 0 disables clipping
  std::string lr_scheduler = "cosine";  // cosine | linear | constant
  int64_t warmup_steps = 0;             // or warmup_ratio (exactly one may be set)
  std::optional<double> warmup_ratio;
  bool paged = false;                  // page optimizer state between device and host (YAML:
                                       // the paged_ prefix of `optimizer`)
  std::string device_budget = "auto";  // optimizer_device_budget: auto | a size like "512MB"
  // LoRA+ (PEFT's create_loraplus_optimizer): lora_B learns at learning_rate * loraplus_lr_ratio,
  // and every adapter parameter decays by loraplus_weight_decay (weight_decay does not apply).
  std::optional<double> loraplus_lr_ratio;
  double loraplus_weight_decay = 0.0;
  std::optional<double> loraplus_lr_embedding;  // accepted for Axolotl configs; PEFT applies it to LoRA on
                                                // embedding layers only (none here)
};

struct TrainConfig {
  std::string config_path;  // the file this came from (for messages)
  std::string base_model;   // HF model directory
  std::string tokenizer;    // tokenizer directory (default: base_model)
  QuantizationConfig quantization;
  LoraConfig lora;
  OptimizerConfig optim;
  DataSpec data;                         // datasets, sequence_len, packing, val split, ...
  ModelConfigOverrides model_overrides;  // overrides_of_model_config

  int64_t micro_batch_size = 1;
  int64_t gradient_accumulation_steps = 1;
  std::optional<int64_t> num_epochs;  // exactly one of num_epochs / max_steps
  std::optional<int64_t> max_steps;
  bool gradient_checkpointing = false;
  bool activation_offload = false;  // gradient_checkpointing: offload (block inputs in host memory)
  uint64_t seed = 42;
  std::string device = "auto";       // auto | cpu | cuda
  int64_t max_nonfinite_steps = 10;  // stop after this many skipped (NaN/Inf) steps in a row

  std::string output_dir = "runs/out";
  // Where prepared (tokenized, masked, shuffled, split, packed) datasets are cached between runs
  // (Axolotl's key; trainer/data/prepared.h). "": off.
  std::string dataset_prepared_path;
  int64_t save_steps = 0;            // 0: only at the end
  int64_t save_total_limit = 0;      // 0: keep all
  int64_t eval_steps = 0;            // 0: only at the end
  bool eval_on_start = false;        // also evaluate before the first step (HF's name)
  bool eval_exact_match = false;     // eval also greedy-generates each sample's answer and
                                     // reports exact-match accuracy
  int64_t eval_max_new_tokens = 64;  // generation budget per sample for exact match
  int64_t logging_steps = 1;
  // report_to (HF's key): the integrations the run reports to. "tensorboard" is the one there is
  // ("all" means it); empty: none (HF's "none").
  std::vector<std::string> report_to;
  // logging_dir (HF's key): the TensorBoard event files' directory. The loader resolves it, by
  // default to <output_dir>/runs (one fixed directory, so a resumed run appends to the same run).
  std::string logging_dir;
  bool reports_to(const std::string& integration) const {
    for (const auto& r : report_to)
      if (r == integration) return true;
    return false;
  }
  bool memory_check = true;  // refuse a run whose memory estimate exceeds the memory available
                             // (trainer/train/memory_estimate.h); false: warn and try anyway
  // Data-parallel runs (docs/distributed.md): the c10d backend (auto: gloo on the CPU, nccl on
  // CUDA) and how long a collective waits for the other ranks, in seconds.
  std::string ddp_backend = "auto";
  int64_t ddp_timeout = 1800;
  // Step-time breakdown (docs/gpu.md): profile profiler_steps steps after the first
  // profiler_steps_start, writing profile_breakdown.json into the run directory. 0: off.
  int64_t profiler_steps = 0;
  int64_t profiler_steps_start = 0;

  // Where each key the user set came from: key path (lora_r, quantization.blocksize,
  // datasets.0.path) -> "FILE:LINE" or "--set key=value". Filled by the loader.
  std::map<std::string, std::string> origins;

  // The place to name in a message about `key`: where it (or the section holding it) was set,
  // else the config file. E.g. "configs/x.yaml:12".
  std::string where(const std::string& key) const;
};

}  // namespace qlora::config

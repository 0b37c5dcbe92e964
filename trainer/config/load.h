// YAML config -> TrainConfig, once, at the edge: validation with one-line UserErrors, "did you
// mean" for unknown keys, --set overrides, the resolved config written back, and the comparison
// that resume uses.
//
// Messages name the file (and line when known) or the override, the key path and what was
// expected, e.g.
//   configs/x.yaml:7: lora_r: expected a positive integer, got "abc"
//   configs/x.yaml:3: unknown key "lora_rank" (did you mean "lora_r"?)
//   --set quantization.blocksize=100: quantization.blocksize: expected a power of two in 32..4096, got 100
//
// Keys (Axolotl / HF names; the README has the reference with defaults):
//   base_model, tokenizer (alias tokenizer_config), adapter: qlora|lora, load_in_4bit,
//   quantization: {quant_type: nf4, double_quant, blocksize, compute_dtype: auto|bf16|fp16|fp32}
//     (also bnb_4bit_quant_type / bnb_4bit_use_double_quant / bnb_4bit_compute_dtype, at the top
//     level or inside quantization), lora_r, lora_alpha, lora_dropout, lora_target_modules,
//   lora_target_linear, use_rslora, sequence_len, sample_packing, train_on_inputs, skip_invalid,
//   micro_batch_size, gradient_accumulation_steps, num_epochs | max_steps, learning_rate,
//   lr_scheduler: cosine|linear|constant, warmup_steps | warmup_ratio, weight_decay, max_grad_norm,
//   adam_beta1, adam_beta2, adam_epsilon, optimizer: adamw|adamw_8bit|paged_adamw|paged_adamw_8bit
//   (HF spellings adamw_torch, adamw_bnb_8bit, paged_adamw_32bit accepted), optimizer_device_budget:
//   auto|<bytes like 2GiB>, gradient_checkpointing, seed, device: auto|cpu|cuda|cuda:N,
//   max_nonfinite_steps, output_dir, save_steps, save_total_limit, eval_steps, logging_steps,
//   report_to: tensorboard|all|none (or a list), logging_dir (default <output_dir>/runs),
//   val_set_size, datasets / test_datasets (lists of {path, type, field...}), chat_template.
//
//   memory_check.
//
// A key set to null (or left empty) takes its default. Relative paths (base_model, tokenizer,
// output_dir, dataset paths) resolve against the current working directory, as in Axolotl and
// the HF tools, and are stored absolute, so the resolved config in a run directory means the same
// thing from anywhere.
#pragma once
#include <string>
#include <vector>

#include "trainer/config/config.h"

namespace qlora::config {

// Reads a YAML file, applies overrides ("key=value": a key path like lora_r,
// quantization.blocksize or datasets.0.path; the value is parsed as YAML), validates.
// UserError on any problem.
TrainConfig load_config(const std::string& path, const std::vector<std::string>& overrides = {});

// The same from YAML text; `source` names it in messages (a path, or e.g. "demo.yaml").
TrainConfig parse_config(const std::string& yaml_text, const std::string& source,
                         const std::vector<std::string>& overrides = {});

// A message from a deeper layer that starts with a config key path ("lora_target_modules: ...",
// "sequence_len: ...", "datasets.0.type: ...", "chat_template line 3: ...") gets the place that key was set in front
// ("configs/x.yaml:12: lora_target_modules: ..."); any other message is returned as it is.
std::string locate_message(const TrainConfig& cfg, const std::string& message);

// Every key with its effective value, as YAML that parse_config reads back to the same config.
std::string to_yaml(const TrainConfig& cfg);

// How a changed key affects resuming a run.
enum class ChangeKind {
  Harmless,     // logging, saving, evaluation cadence, output place, device, paging, checkpointing
  Schedule,     // max_steps / num_epochs: allowed, but the LR schedule differs from the original run
  Incompatible  // anything that changes the model, the data or the optimization
};

struct ConfigChange {
  std::string key;     // key path, e.g. "lora_r", "quantization.blocksize", "datasets.0.path"
  std::string before;  // YAML text of the value, "(absent)" when the key is not on that side
  std::string after;
  ChangeKind kind = ChangeKind::Incompatible;
};

// Keys whose effective values differ between a run's saved config and the current one, in key
// order.
std::vector<ConfigChange> diff_configs(const TrainConfig& saved, const TrainConfig& now);

// "harmless" | "schedule" | "incompatible"
const char* change_kind_name(ChangeKind k);

}  // namespace qlora::config

// Where a trained adapter comes from, for export / generate / eval:
//   - a checkpoint directory written by `qlora train` (adapter_config.json +
//     adapter_model.safetensors + config.yaml + manifest.json),
//   - a run directory (output_dir): its newest intact checkpoint,
//   - a plain PEFT adapter directory (adapter_config.json + adapter_model.safetensors).
// A checkpoint also says how the base was held while training (NF4 or 16-bit, blocksize, double
// quant, compute dtype); a plain PEFT directory does not, and callers choose (default NF4).
#pragma once
#include <ATen/core/Tensor.h>

#include <c10/core/Device.h>

#include <filesystem>
#include <map>
#include <optional>
#include <string>

#include "trainer/config/config.h"
#include "trainer/io/peft.h"
#include "trainer/model/model.h"

namespace qlora::run {

struct AdapterSource {
  std::filesystem::path dir;                  // the directory holding the adapter files
  io::PeftAdapterConfig peft;                 // its adapter_config.json
  std::optional<config::TrainConfig> train;   // config.yaml when `dir` is a qlora checkpoint
  std::filesystem::path base_model;           // from config.yaml, else base_model_name_or_path
  std::map<std::string, at::Tensor> tensors;  // adapter_model.safetensors (PEFT keys)
};

// Resolves PATH (checkpoint, run directory or PEFT directory) and reads the adapter. UserError
// naming PATH when none of those is there, or naming the file for a bad adapter_config.json.
AdapterSource read_adapter_source(const std::filesystem::path& path);

// Load options for the base model an adapter belongs to: the checkpoint's own settings when known
// (adapter qlora|lora, blocksize, double_quant, compute dtype), else NF4 with defaults; LoRA
// modules from the adapter's adapter_config.json (r, alpha, targets, rslora).
model::ModelLoadOptions adapter_load_options(const AdapterSource& src, c10::Device device);

// Loads the base model from `model_dir` (empty: src.base_model) with `opts` and copies the
// adapter weights in (strict: every key must match a module of that base with the right shape;
// UserError naming the adapter file and the key otherwise).
model::Model load_model_with_adapter(const std::filesystem::path& model_dir, const AdapterSource& src,
                                     const model::ModelLoadOptions& opts);

}  // namespace qlora::run

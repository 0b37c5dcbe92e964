#include "trainer/run/adapter_source.h"

#include <ATen/ATen.h>

#include <cstdio>

#include "trainer/common/error.h"
#include "trainer/config/load.h"
#include "trainer/run/checkpoint.h"
#include "trainer/run/checkpoint_state.h"
#include "trainer/run/layout.h"

namespace qlora::run {

namespace {

bool is_adapter_dir(const stdfs::path& p) {
  return stdfs::is_regular_file(p / kAdapterConfigFile) && stdfs::is_regular_file(p / kAdapterWeightsFile);
}

stdfs::path resolve_dir(const stdfs::path& path) {
  if (!stdfs::exists(path))
    user_error(path.string(),
               ": no such file or directory (expected a checkpoint, a run directory or a PEFT adapter directory)");
  if (is_adapter_dir(path)) {
    if (stdfs::exists(path / kManifestFile)) {
      if (auto why = check_checkpoint(path)) user_error(*why, " (checkpoint not usable)");
    }
    return path;
  }
  for (const stdfs::path& ckdir : {checkpoints_dir(path), path}) {
    if (!stdfs::is_directory(ckdir)) continue;
    std::vector<std::string> warnings;
    auto ck = find_resume_checkpoint(ckdir, &warnings, check_checkpoint);
    for (const auto& w : warnings) std::fprintf(stderr, "qlora: warning: %s\n", w.c_str());
    if (ck) return *ck;
  }
  user_error(path.string(),
             ": expected a checkpoint directory, a run directory with checkpoints, or a PEFT adapter directory "
             "(adapter_config.json + adapter_model.safetensors)");
}

}  // namespace

AdapterSource read_adapter_source(const stdfs::path& path) {
  AdapterSource s;
  s.dir = resolve_dir(path);
  s.peft = io::read_peft_adapter_config(s.dir);
  if (stdfs::is_regular_file(config_file(s.dir))) {
    s.train = config::load_config(config_file(s.dir).string());
    s.base_model = s.train->base_model;
  } else {
    s.base_model = s.peft.base_model_name_or_path;
  }
  s.tensors = io::read_peft_adapter_tensors(s.dir);
  // A plain PEFT directory has no manifest or optimizer to check against: at least every tensor
  // must be floating point and finite (the model checks names and shapes when it loads them).
  const std::string file = (s.dir / kAdapterWeightsFile).string();
  for (const auto& [k, t] : s.tensors) {
    if (!at::isFloatingType(t.scalar_type()))
      user_error(file, ": ", k, ": expected floating-point weights, got ", c10::toString(t.scalar_type()));
    if (t.numel() && !at::isfinite(t).all().item<bool>()) user_error(file, ": ", k, ": non-finite values");
  }
  return s;
}

model::ModelLoadOptions adapter_load_options(const AdapterSource& src, c10::Device device) {
  model::ModelLoadOptions o;
  if (src.train) o = model::ModelLoadOptions::from_train_config(*src.train, device);
  o.device = device;
  o.lora = model::to_lora_config(src.peft);
  o.lora->dropout = 0;                                 // inference only
  o.lora->modules_to_save = src.peft.modules_to_save;  // the embedding / output head trained in full
  o.lora->ensure_weight_tying = src.peft.ensure_weight_tying;
  if (src.train) {
    o.lora->adapter = src.train->lora.adapter;
    // PiSSA / OLoRA / LoftQ changed the base the adapter was trained on: load_model recomputes it.
    o.lora->init_lora_weights = src.train->lora.init_lora_weights;
    o.lora->loftq_iter = src.train->lora.loftq_iter;
  }
  return o;
}

model::Model load_model_with_adapter(const stdfs::path& model_dir, const AdapterSource& src,
                                     const model::ModelLoadOptions& opts) {
  const stdfs::path dir = model_dir.empty() ? src.base_model : model_dir;
  if (dir.empty())
    user_error(src.dir.string(), "/", kAdapterConfigFile,
               ": base_model_name_or_path is empty; give the base model with --model");
  model::Model m = model::load_model(dir, opts);
  m.load_lora_weights(src.tensors, (src.dir / kAdapterWeightsFile).string(), /*strict=*/true);
  return m;
}

}  // namespace qlora::run

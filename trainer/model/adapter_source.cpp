#include "trainer/model/adapter_source.h"

#include <torch/cuda.h>

#include <cstdio>

#include "trainer/common/error.h"
#include "trainer/config/load.h"
#include "trainer/train/checkpoint.h"

namespace qlora::model {
namespace stdfs = std::filesystem;

namespace {

bool is_adapter_dir(const stdfs::path& p) {
  return stdfs::is_regular_file(p / "adapter_config.json") && stdfs::is_regular_file(p / "adapter_model.safetensors");
}

stdfs::path resolve_dir(const stdfs::path& path) {
  if (!stdfs::exists(path)) user_error(path.string(), ": no such file or directory (expected a checkpoint, a run directory or a PEFT adapter directory)");
  if (is_adapter_dir(path)) {
    if (stdfs::exists(path / "manifest.json")) {
      if (auto why = train::verify_checkpoint(path)) user_error(path.string(), ": checkpoint is not intact: ", *why);
    }
    return path;
  }
  for (const stdfs::path& ckdir : {path / "checkpoints", path}) {
    if (!stdfs::is_directory(ckdir)) continue;
    std::vector<std::string> warnings;
    auto ck = train::find_resume_checkpoint(ckdir, &warnings);
    for (const auto& w : warnings) std::fprintf(stderr, "warning: %s\n", w.c_str());
    if (ck) return *ck;
  }
  user_error(path.string(), ": expected a checkpoint directory, a run directory with checkpoints, or a PEFT adapter directory (adapter_config.json + adapter_model.safetensors)");
}

}  // namespace

AdapterSource read_adapter_source(const stdfs::path& path) {
  AdapterSource s;
  s.dir = resolve_dir(path);
  s.peft = io::read_peft_adapter_config(s.dir);
  if (stdfs::is_regular_file(s.dir / "config.yaml")) {
    s.train = config::load_config((s.dir / "config.yaml").string());
    s.base_model = s.train->base_model;
  } else {
    s.base_model = s.peft.base_model_name_or_path;
  }
  s.tensors = io::read_peft_adapter_tensors(s.dir);
  return s;
}

c10::Device resolve_device(const std::string& d, const std::string& what) {
  if (d == "cpu") return c10::kCPU;
  const bool cuda = torch::cuda::is_available();
  if (d == "auto") return cuda ? c10::Device(c10::kCUDA, 0) : c10::Device(c10::kCPU);
  if (d.rfind("cuda", 0) != 0) user_error(what, ": expected auto, cpu, cuda or cuda:N, got \"", d, "\"");
  if (!cuda) user_error(what, ": ", d, " requested but no CUDA GPU is visible (use cpu or auto)");
  return c10::Device(d);
}

ModelLoadOptions adapter_load_options(const AdapterSource& src, c10::Device device) {
  ModelLoadOptions o;
  if (src.train) o = ModelLoadOptions::from_train_config(*src.train, device);
  o.device = device;
  o.lora = model::to_lora_config(src.peft);
  o.lora->dropout = 0;  // inference only
  if (src.train) o.lora->adapter = src.train->lora.adapter;
  return o;
}

Model load_model_with_adapter(const stdfs::path& model_dir, const AdapterSource& src, const ModelLoadOptions& opts) {
  const stdfs::path dir = model_dir.empty() ? src.base_model : model_dir;
  if (dir.empty()) user_error(src.dir.string(), "/adapter_config.json: base_model_name_or_path is empty; give the base model with --model");
  Model m = load_model(dir, opts);
  m.load_lora_weights(src.tensors, (src.dir / "adapter_model.safetensors").string(), /*strict=*/true);
  return m;
}

}  // namespace qlora::model

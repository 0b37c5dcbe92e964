#include "trainer/cli/inference.h"

#include <chrono>
#include <cstdio>

#include "trainer/common/error.h"
#include "trainer/common/fs.h"
#include "trainer/model/device.h"
#include "trainer/model/gguf_tokenizer.h"
#include "trainer/run/adapter_source.h"
#include "trainer/run/layout.h"

namespace qlora::cli {

InferenceModel load_inference_model(const std::string& model_dir, const std::string& adapter,
                                    const std::string& device_name, bool load_in_4bit) {
  const auto t0 = std::chrono::steady_clock::now();
  const c10::Device device = model::resolve_device(device_name, "--device");
  InferenceModel r;
  std::string what;
  if (adapter.empty()) {
    if (model_dir.empty())
      user_error("--model: required (or give --adapter with a checkpoint that names its base model)");
    model::ModelLoadOptions o;
    o.device = device;
    o.quantize = load_in_4bit;
    r.model_dir = model_dir;
    r.model = model::load_model(r.model_dir, o);
  } else {
    run::AdapterSource src = run::read_adapter_source(adapter);
    model::ModelLoadOptions o = run::adapter_load_options(src, device);
    if (load_in_4bit) o.quantize = true;
    r.model_dir = model_dir.empty() ? src.base_model : std::filesystem::path(model_dir);
    if (r.model_dir.empty())
      user_error((src.dir / run::kAdapterConfigFile).string(),
                 ": base_model_name_or_path is empty and no --model was given; give the base model with --model");
    if (!std::filesystem::is_directory(r.model_dir) && !std::filesystem::is_regular_file(r.model_dir))  // a GGUF file
      user_error(r.model_dir.string(), ": base model directory not found",
                 model_dir.empty() ? " (named by the adapter " + src.dir.string() + "; give --model)" : std::string());
    r.model = run::load_model_with_adapter(r.model_dir, src, o);
    r.train = src.train;
    what = " + adapter " + src.dir.string() + " (r=" + std::to_string(src.peft.r) + ")";
  }
  std::filesystem::path tok_dir = r.model_dir;
  if (r.train && !r.train->tokenizer.empty()) tok_dir = r.train->tokenizer;
  r.tokenizer = model::load_base_tokenizer(tok_dir);
  const model::Model& m = r.model;
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  char buf[1024];
  std::snprintf(buf, sizeof buf, "%s (%s, %lld layers, %s base, %s)%s on %s, loaded in %.1f s",
                r.model_dir.string().c_str(), m.config.model_type.c_str(), static_cast<long long>(m.layers.size()),
                m.layers.empty() || !m.layers[0].o_proj.nf4 ? "16-bit" : "NF4", c10::toString(m.compute_dtype),
                what.c_str(), m.device.str().c_str(), s);
  r.description = buf;
  return r;
}

}  // namespace qlora::cli

// LoRA initialisations side by side on the demo task (configs/demo.yaml, CPU): how far the
// quantized model starts from the 16-bit one, and where training gets in a fixed number of steps.
//
//   build/bench/bench_lora_init [--steps N] [--out FILE]   (default 60, bench/results/lora_init.json)
//
// Runs: qlora with init_lora_weights true (plain QLoRA), loftq (loftq_iter 1), pissa, and plain
// LoRA on the 16-bit base (the ceiling); each is `qlora train configs/demo.yaml` with max_steps N
// and one evaluation at the end, in its own process. LoftQ's factors cancel the quantization error
// at a LoRA scaling of 1 (as PEFT computes them), so its run uses lora_alpha = lora_r = 16;
// the others keep the demo's alpha 32.
//
// Step 0 error (this process): on the demo model with each run's init, before any training,
//   layer  sum over linears of ||x W'^T - x W^T||_F / sum ||x W^T||_F, x Gaussian [64, in],
//          W' = dequant(NF4 base) + scaling * B A, W the 16-bit weight;
//   logits ||logits' - logits||_F / ||logits||_F on 8 random sequences of 48 tokens.
// From the run: eval loss after N steps (metrics.jsonl), median step time, peak RSS (the largest
// memory_bytes the run logged).
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "bench/random_llama.h"
#include "kernels/ops.h"
#include "trainer/common/fs.h"
#include "trainer/model/lora_init.h"
#include "trainer/model/model.h"

using namespace qlora;
using json = nlohmann::json;
namespace stdfs = std::filesystem;

namespace {

struct Run {
  std::string name;
  std::string adapter;  // qlora | lora
  std::string init;     // init_lora_weights
  double alpha;
  std::string extra;  // more --set overrides
};

const stdfs::path kSource = QLORA_SOURCE_DIR;

model::Model load(const Run& r) {
  model::ModelLoadOptions o;
  o.compute_dtype = at::kFloat;
  o.quantize = r.adapter == "qlora";
  config::LoraConfig lc;
  lc.r = 16;
  lc.alpha = r.alpha;
  lc.dropout = 0;
  lc.target_linear = true;
  lc.init_lora_weights = r.init;
  o.lora = lc;
  o.seed = 42;
  return model::load_model(kSource / "data/demo/model", o);
}

json step0_error(const Run& r, model::Model& ref) {
  at::NoGradGuard ng;
  model::Model m = load(r);
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(7);
  double num = 0, den = 0;
  const auto ls = m.linears(), rs = ref.linears();
  for (size_t i = 0; i < ls.size(); ++i) {
    const at::Tensor x = at::randn({64, ls[i]->in_features}, g, at::kFloat);
    const at::Tensor W = ls[i]->base_weight(at::kFloat) + ls[i]->lora->scaling * at::mm(ls[i]->lora->B, ls[i]->lora->A);
    const at::Tensor y = at::mm(x, rs[i]->base_weight(at::kFloat).t());
    num += (at::mm(x, W.t()) - y).norm().item<double>();
    den += y.norm().item<double>();
  }
  const at::Tensor ids = at::randint(4, m.config.vocab_size, {8, 48}, g, at::kLong);
  const at::Tensor a = m.logits(m.forward(ids)), b = ref.logits(ref.forward(ids));
  return {{"layer_output_rel_error", num / den}, {"logits_rel_error", ((a - b).norm() / b.norm()).item<double>()}};
}

json train_run(const Run& r, int steps, const stdfs::path& work) {
  const stdfs::path out = work / r.name;
  stdfs::remove_all(out);
  const stdfs::path cfg = kSource / (r.adapter == "qlora" ? "configs/demo.yaml" : "configs/demo-lora.yaml");
  std::string cmd = "cd '" + kSource.string() + "' && '" + (stdfs::path(QLORA_BINARY_DIR) / "qlora").string() +
                    "' train '" + cfg.string() + "' --set output_dir='" + out.string() +
                    "' --set max_steps=" + std::to_string(steps) + " --set eval_steps=" + std::to_string(steps) +
                    " --set save_steps=" + std::to_string(steps) + " --set init_lora_weights=" + r.init +
                    " --set lora_alpha=" + std::to_string(static_cast<int>(r.alpha)) + r.extra + " > '" +
                    (work / (r.name + ".log")).string() + "' 2>&1";
  const int rc = std::system(cmd.c_str());
  if (rc != 0) throw std::runtime_error("run " + r.name + " failed: see " + (work / (r.name + ".log")).string());
  std::ifstream in(out / "metrics.jsonl");
  std::string line;
  std::vector<double> step_s;
  double eval_loss = -1, peak = 0, prev = 0;
  while (std::getline(in, line)) {
    const json j = json::parse(line);
    if (j.contains("eval_loss")) eval_loss = j["eval_loss"].get<double>();
    if (j.contains("loss") && j.contains("elapsed_s")) {
      const double e = j["elapsed_s"].get<double>();
      step_s.push_back(e - prev);
      prev = e;
    }
    if (j.contains("memory_bytes")) peak = std::max(peak, j["memory_bytes"].get<double>());
  }
  std::sort(step_s.begin(), step_s.end());
  return {{"eval_loss", eval_loss},
          {"median_step_s", step_s.empty() ? 0.0 : step_s[step_s.size() / 2]},
          {"peak_rss_bytes", peak},
          {"steps", steps}};
}

}  // namespace

int main(int argc, char** argv) {
  int steps = 60;
  stdfs::path out = kSource / "bench/results/lora_init.json";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--steps" && i + 1 < argc)
      steps = std::atoi(argv[++i]);
    else if (a == "--out" && i + 1 < argc)
      out = argv[++i];
  }
  const std::vector<Run> runs = {{"qlora", "qlora", "true", 32, ""},
                                 {"loftq", "qlora", "loftq", 16, ""},
                                 {"pissa", "qlora", "pissa", 32, ""},
                                 {"lora_16bit", "lora", "true", 32, ""}};
  const stdfs::path work = stdfs::temp_directory_path() / "qlora_bench_lora_init";
  stdfs::create_directories(work);
  Run ref_run{"ref", "lora", "true", 32, ""};
  model::Model ref = load(ref_run);
  json res;
  for (const Run& r : runs) {
    json j = step0_error(r, ref);
    j.update(train_run(r, steps, work));
    j["adapter"] = r.adapter;
    j["init_lora_weights"] = r.init;
    j["lora_alpha"] = r.alpha;
    std::cout << r.name << ": " << j.dump() << "\n";
    res["runs"][r.name] = j;
  }
  res["task"] = "configs/demo.yaml (demo-lora.yaml for lora_16bit), lora_r 16, max_steps " + std::to_string(steps) +
                ", eval on data/demo/eval.jsonl";
  res["machine"] = {{"cpu", bench::cpu_model_name()}, {"threads", at::get_num_threads()}};
  res["command"] = "cmake --build build --target bench_lora_init && build/bench/bench_lora_init";
  fs::write_file_atomic(out, res.dump(2) + "\n");
  return 0;
}

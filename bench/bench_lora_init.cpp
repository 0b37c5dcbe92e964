// LoRA initialisations and DoRA side by side on two CPU tasks: how far the quantized model starts
// from the 16-bit one, and where training gets in a fixed number of steps.
//
//   build/bench/bench_lora_init [--steps N] [--out FILE] [--methods a,b]
//   (defaults: 60 steps, bench/results/lora_init.json, every method below; about 7 minutes on
//   2 threads)
//
// Tasks, both on the demo's base model (data/demo/model, pretrained by data/demo/recipe/):
//   demo  configs/demo.yaml's data (ISO <-> words); every method ends near an eval loss of 0.
//   hard  made at run time by bench/lora_init_task.py the way data/demo/recipe/make_data.py makes
//         the demo's (same generator, dates and spellings, held-out eval dates): conversions
//         between all four spellings the pretraining corpus shows, and the day before / after a
//         date (arithmetic the corpus never shows), 4000 train / 200 eval examples. Its eval loss
//         stays well above 0 in N steps, so the methods separate.
// Runs, each `qlora train configs/demo.yaml` (configs/demo-lora.yaml for lora_16bit) with
// max_steps N, an evaluation at the start and at the end, in its own process:
//   qlora       init_lora_weights true (plain QLoRA)
//   loftq       init_lora_weights loftq (loftq_iter 1)
//   pissa       init_lora_weights pissa (full SVD)
//   dora        use_dora true, init true (only when this build's config has use_dora; otherwise
//               the row is recorded as skipped)
//   lora_16bit  plain LoRA on the 16-bit base: the ceiling
// each at two scalings, lora_alpha 16 = r (scaling 1) and the demo's 32 (scaling 2). LoftQ's
// factors cancel the quantization error only at scaling 1 (PEFT computes them so and does not
// rescale them), so alpha 16 is the comparison at equal scaling for every method; at alpha 32
// LoftQ applies its correction twice over and starts about as far from the 16-bit model as plain
// QLoRA (the warning qlora prints then).
//
// Step 0 error (this process, on the demo model with each run's init, before any training):
//   layer  sum over linears of ||x W'^T - x W^T||_F / sum ||x W^T||_F, x Gaussian [64, in],
//          W' = W0 + scaling * B A, W0 = dequant(NF4 base) (DoRA: m / ||W0 + s B A||_row * (W0 + s B A)
//          with the model's magnitude vector m, which at init is W0 + s B A), W the 16-bit weight;
//   logits ||logits' - logits||_F / ||logits||_F on 8 random sequences of 48 tokens.
// From each run (metrics.jsonl): eval loss at step 0 and after N steps, greedy exact match after
// N steps, median step time, peak RSS (the largest memory_bytes the run logged); all of seed 42
// (the configs' seed: data order, LoRA init, dropout). The hard task also runs seeds 43 and 44:
// their eval loss and exact match, and the means over the three, show what a difference is worth.
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
#include "trainer/common/fs.h"
#include "trainer/model/model.h"

using namespace qlora;
using json = nlohmann::json;
namespace stdfs = std::filesystem;

namespace {

// Whether this build's config knows DoRA (use_dora): the dora rows run only then.
template <class C>
constexpr bool has_dora = requires(C c) {
  c.use_dora = true;
};
template <class C>
void set_dora(C& c, bool on) {
  if constexpr (has_dora<C>) c.use_dora = on;
}
constexpr bool kHaveDora = has_dora<config::LoraConfig>;

struct Run {
  std::string method;   // qlora | loftq | pissa | dora | lora_16bit
  std::string adapter;  // qlora | lora
  std::string init;     // init_lora_weights
  bool dora = false;
  int alpha = 32;
  std::string name() const { return method + "_a" + std::to_string(alpha); }
};

struct Task {
  std::string name;
  stdfs::path train, eval;  // empty: the configs' own data
  std::string description;
  std::vector<int> seeds;  // the first is the one every table reports; the others show the spread
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
  set_dora(lc, r.dora);
  o.lora = lc;
  o.seed = 42;
  return model::load_model(kSource / "data/demo/model", o);
}

// DoRA's magnitude vector [out] (a template, so that this file builds without DoRA too).
template <class A>
at::Tensor dora_magnitude(const A& a) {
  if constexpr (requires { a.magnitude; })
    return a.magnitude;
  else
    throw std::logic_error("this build has no DoRA");
}

// The weight a layer computes with: W0 + s B A, or with DoRA m / ||W0 + s B A||_row * (W0 + s B A)
// (the row norm per output feature, as PEFT's get_weight_norm), m the model's magnitude vector.
at::Tensor effective_weight(const model::Linear& l, bool dora) {
  const at::Tensor V = l.base_weight(at::kFloat) + l.lora->scaling * at::mm(l.lora->B, l.lora->A);
  if (!dora) return V;
  const at::Tensor m = dora_magnitude(*l.lora);
  if (!m.defined()) throw std::runtime_error("use_dora set but the adapter has no magnitude vector");
  return m.to(at::kFloat).reshape({-1, 1}) / V.norm(2, {1}, /*keepdim=*/true) * V;
}

json step0_error(const Run& r, model::Model& ref) {
  at::NoGradGuard ng;
  model::Model m = load(r);
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(7);
  double num = 0, den = 0;
  const auto ls = m.linears(), rs = ref.linears();
  for (size_t i = 0; i < ls.size(); ++i) {
    const at::Tensor x = at::randn({64, ls[i]->in_features}, g, at::kFloat);
    const at::Tensor W = effective_weight(*ls[i], r.dora);
    const at::Tensor y = at::mm(x, rs[i]->base_weight(at::kFloat).t());
    num += (at::mm(x, W.t()) - y).norm().item<double>();
    den += y.norm().item<double>();
  }
  const at::Tensor ids = at::randint(4, m.config.vocab_size, {8, 48}, g, at::kLong);
  const at::Tensor a = m.logits(m.forward(ids)), b = ref.logits(ref.forward(ids));
  return {{"layer_output_rel_error", num / den}, {"logits_rel_error", ((a - b).norm() / b.norm()).item<double>()}};
}

std::string quoted(const stdfs::path& p) {
  std::string s = p.string();
  s.insert(s.begin(), '\'');
  s.push_back('\'');
  return s;
}

json train_run(const Run& r, const Task& t, int seed, int steps, const stdfs::path& work) {
  const std::string id = r.name() + "_seed" + std::to_string(seed);
  const stdfs::path out = work / t.name / id, log = work / t.name / (id + ".log");
  stdfs::remove_all(out);
  const stdfs::path cfg = kSource / (r.adapter == "qlora" ? "configs/demo.yaml" : "configs/demo-lora.yaml");
  std::string cmd = "cd " + quoted(kSource) + " && " + quoted(stdfs::path(QLORA_BINARY_DIR) / "qlora") + " train " +
                    quoted(cfg) + " --set output_dir=" + quoted(out) + " --set max_steps=" + std::to_string(steps) +
                    " --set eval_steps=" + std::to_string(steps) + " --set save_steps=" + std::to_string(steps) +
                    " --set init_lora_weights=" + r.init + " --set lora_alpha=" + std::to_string(r.alpha) +
                    " --set seed=" + std::to_string(seed);
  if (r.dora) cmd += " --set use_dora=true";
  if (!t.train.empty())
    cmd += " --set datasets.0.path=" + quoted(t.train) + " --set test_datasets.0.path=" + quoted(t.eval);
  cmd += " > " + quoted(log) + " 2>&1";
  if (std::system(cmd.c_str()) != 0) throw std::runtime_error("run " + id + " failed: see " + log.string());
  std::ifstream in(out / "metrics.jsonl");
  std::string line;
  std::vector<double> step_s;
  double eval_start = -1, eval_loss = -1, exact = -1, peak = 0, prev = 0;
  while (std::getline(in, line)) {
    const json j = json::parse(line);
    if (j.contains("eval_loss")) {
      (j.value("step", -1) == 0 ? eval_start : eval_loss) = j["eval_loss"].get<double>();
      if (j.value("step", -1) == steps && j.contains("eval_accuracy")) exact = j["eval_accuracy"].get<double>();
    }
    if (j.contains("loss") && j.contains("elapsed_s")) {
      const double e = j["elapsed_s"].get<double>();
      step_s.push_back(e - prev);
      prev = e;
    }
    if (j.contains("memory_bytes")) peak = std::max(peak, j["memory_bytes"].get<double>());
  }
  std::sort(step_s.begin(), step_s.end());
  return {{"eval_loss_start", eval_start},
          {"eval_loss", eval_loss},
          {"eval_exact_match", exact},
          {"median_step_s", step_s.empty() ? 0.0 : step_s[step_s.size() / 2]},
          {"peak_rss_bytes", peak}};
}

}  // namespace

int main(int argc, char** argv) {
  int steps = 60;
  stdfs::path out = kSource / "bench/results/lora_init.json";
  std::string methods = "qlora,loftq,pissa,dora,lora_16bit";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--steps" && i + 1 < argc)
      steps = std::atoi(argv[++i]);
    else if (a == "--out" && i + 1 < argc)
      out = argv[++i];
    else if (a == "--methods" && i + 1 < argc)
      methods = argv[++i];
  }
  const auto wanted = [&](const std::string& m) {
    return ("," + methods + ",").find("," + m + ",") != std::string::npos;
  };
  const stdfs::path work = stdfs::temp_directory_path() / "qlora_bench_lora_init";
  stdfs::create_directories(work / "demo");
  stdfs::create_directories(work / "hard");
  const std::string gen = std::string("'") + QLORA_BENCH_PYTHON + "' " + quoted(kSource / "bench/lora_init_task.py") +
                          " --out " + quoted(work / "hard" / "data");
  if (std::system(gen.c_str()) != 0) throw std::runtime_error("bench/lora_init_task.py failed");
  const std::vector<Task> tasks = {
      {"demo", {}, {}, "configs/demo.yaml's data: data/demo/train.jsonl, eval on data/demo/eval.jsonl", {42}},
      {"hard",
       work / "hard/data/train.jsonl",
       work / "hard/data/eval.jsonl",
       "bench/lora_init_task.py: conversions between the four date spellings and the day before/after a date, "
       "4000 train / 200 held-out eval examples, on the demo's base model and settings",
       {42, 43, 44}}};

  std::vector<Run> runs;
  for (int alpha : {16, 32}) {
    runs.push_back({"qlora", "qlora", "true", false, alpha});
    runs.push_back({"loftq", "qlora", "loftq", false, alpha});
    runs.push_back({"pissa", "qlora", "pissa", false, alpha});
    runs.push_back({"dora", "qlora", "true", true, alpha});
    runs.push_back({"lora_16bit", "lora", "true", false, alpha});
  }
  model::Model ref = load({"ref", "lora", "true", false, 32});
  json res;
  for (const Run& r : runs) {
    if (!wanted(r.method)) continue;
    json s;
    s["method"] = r.method;
    s["adapter"] = r.adapter;
    s["init_lora_weights"] = r.init;
    s["use_dora"] = r.dora;
    s["lora_alpha"] = r.alpha;
    if (r.dora && !kHaveDora) {
      s["skipped"] = "this build's config has no use_dora";
      std::cout << r.name() << ": skipped (no use_dora in this build)\n";
      res["step0"][r.name()] = s;
      continue;
    }
    s.update(step0_error(r, ref));
    std::cout << r.name() << " step 0: " << s.dump() << "\n";
    res["step0"][r.name()] = s;
    for (const Task& t : tasks) {
      json j;
      double loss_sum = 0, exact_sum = 0;
      for (int seed : t.seeds) {
        const json k = train_run(r, t, seed, steps, work);
        std::cout << t.name << " " << r.name() << " seed " << seed << ": " << k.dump() << "\n" << std::flush;
        if (j.is_null()) j = k;
        loss_sum += k["eval_loss"].get<double>();
        exact_sum += k["eval_exact_match"].get<double>();
        if (t.seeds.size() > 1) {
          j["eval_loss_by_seed"][std::to_string(seed)] = k["eval_loss"];
          j["eval_exact_match_by_seed"][std::to_string(seed)] = k["eval_exact_match"];
        }
      }
      if (t.seeds.size() > 1) {
        j["eval_loss_mean"] = loss_sum / t.seeds.size();
        j["eval_exact_match_mean"] = exact_sum / t.seeds.size();
      }
      res["tasks"][t.name]["runs"][r.name()] = j;
    }
  }
  for (const Task& t : tasks) {
    res["tasks"][t.name]["data"] = t.description;
    res["tasks"][t.name]["seeds"] = t.seeds;
  }
  res["settings"] =
      "configs/demo.yaml (demo-lora.yaml for lora_16bit): lora_r 16 on all linears, batch 16, lr 2e-3 "
      "cosine, warmup 10, max_steps " +
      std::to_string(steps) + "; lora_alpha as in each run's name (_a16, _a32)";
  res["machine"] = {{"cpu", bench::cpu_model_name()}, {"threads", at::get_num_threads()}};
  res["command"] = "cmake --build build --target bench_lora_init && build/bench/bench_lora_init";
  fs::write_file_atomic(out, res.dump(2) + "\n");
  return 0;
}

// A mixture of experts against a dense model of the same active size, one QLoRA training step on
// the CPU (Model::forward_loss + backward, as the trainer runs it): step time (median of 3 after a
// warm-up step) and peak resident memory, each model in its own process.
//
//   build/bench/bench_moe_cpu [--out FILE]     (default bench/results/moe_cpu.json)
//
// Models (random, written here): Mixtral-shaped, 8 experts of intermediate 1024, 2 per token;
// Llama-shaped with intermediate 2048 = 2 x 1024, so each token passes through the same number of
// MLP weights. Both vocab 32000, hidden 768, 6 layers, 12 heads / 4 kv; NF4 base, LoRA r 16 on
// the attention projections, gradient checkpointing, fp32; batch 2 x 512 tokens. A third run,
// moe_experts, adds LoRA r 16 on the experts (lora_target_parameters gate_up_proj and down_proj)
// and the router load-balancing loss (coefficient 0.001).
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "bench/random_llama.h"
#include "kernels/ops.h"
#include "trainer/common/fs.h"
#include "trainer/model/model.h"

using namespace qlora;
using json = nlohmann::json;
namespace stdfs = std::filesystem;

namespace {

constexpr int64_t kVocab = 32000, kHidden = 768, kLayers = 6, kHeads = 12, kKv = 4, kBatch = 2, kSeq = 512;
constexpr int64_t kExperts = 8, kTopK = 2, kExpertInter = 1024;

bench::LlamaShape shape_of(const std::string& kind) {
  if (kind == "moe" || kind == "moe_experts")
    return {kVocab, kHidden, kExpertInter, kLayers, kHeads, kKv, kExperts, kTopK};
  return {kVocab, kHidden, kTopK * kExpertInter, kLayers, kHeads, kKv};
}

// One model (written by the parent into `dir`), in this process: writes its JSON to `out`.
int run_one(const std::string& kind, const stdfs::path& dir, const stdfs::path& out) {
  const int64_t rss_before_load = static_cast<int64_t>(fs::proc_status_bytes("VmRSS:"));
  model::ModelLoadOptions o;
  o.compute_dtype = at::kFloat;
  config::LoraConfig lc;
  lc.r = 16;
  lc.alpha = 32;
  lc.dropout = 0.0;
  lc.target_modules = {"q_proj", "k_proj", "v_proj", "o_proj"};
  if (kind == "moe_experts") lc.target_parameters = {"experts.gate_up_proj", "experts.down_proj"};
  o.lora = lc;
  model::Model m = model::load_model(dir, o);
  m.training = true;
  m.router_aux_loss = kind == "moe_experts";
  m.gradient_checkpointing = true;
  const at::Tensor ids = at::randint(kVocab, {kBatch, kSeq}, at::make_generator<at::CPUGeneratorImpl>(3), at::kLong);
  std::vector<double> secs;
  double loss = 0;
  for (int rep = 0; rep < 4; ++rep) {
    for (auto& q : m.lora_parameters()) q.param.mutable_grad() = at::Tensor();
    auto t0 = std::chrono::steady_clock::now();
    model::LossSum l = m.forward_loss(ids, ids);
    at::Tensor objective = l.sum / l.count.to(at::kFloat);
    if (l.aux.defined()) objective = objective + l.aux * m.config.router_aux_loss_coef;
    objective.backward();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (rep > 0) secs.push_back(s);  // the first step warms up the allocator and thread pool
    loss = (l.sum / l.count.to(at::kFloat)).item<double>();
  }
  std::vector<double> sorted = secs;
  std::sort(sorted.begin(), sorted.end());
  int64_t linear = 0, active = 0, trainable = 0;
  for (const auto& p : m.lora_parameters()) trainable += p.param.numel();
  for (const model::Linear* l : m.linears()) {
    linear += l->in_features * l->out_features;
    const bool expert = l->name.find(".experts.") != std::string::npos;
    if (!expert) active += l->in_features * l->out_features;
  }
  if (m.config.is_moe())
    active += m.config.num_hidden_layers * m.config.num_experts_per_tok * 3 * m.config.hidden_size *
              m.config.moe_intermediate_size;
  json r = {{"model", bench::shape_json(shape_of(kind))},
            {"linear_weights", linear},
            {"active_linear_weights_per_token", active},
            {"base_bytes", m.base_nbytes()},
            {"trainable_parameters", trainable},
            {"step_s", sorted[sorted.size() / 2]},
            {"all_step_s", secs},
            {"tokens_per_s", static_cast<double>(kBatch * kSeq) / sorted[sorted.size() / 2]},
            {"peak_rss_bytes", static_cast<int64_t>(fs::proc_status_bytes("VmHWM:"))},
            {"rss_before_load_bytes", rss_before_load},
            {"loss", loss}};
  fs::write_file_atomic(out, r.dump(2) + "\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.size() == 4 && args[0] == "--one") return run_one(args[1], args[2], args[3]);
  stdfs::path out = stdfs::path(QLORA_SOURCE_DIR) / "bench/results/moe_cpu.json";
  if (args.size() == 2 && args[0] == "--out") out = args[1];
  json runs;
  for (const std::string kind : {"moe", "moe_experts", "dense"}) {
    const stdfs::path part = stdfs::temp_directory_path() / ("qlora_bench_moe_" + kind + ".json");
    const stdfs::path dir = stdfs::temp_directory_path() / ("qlora_bench_moe_" + kind + std::to_string(::getpid()));
    bench::write_random_llama(dir, shape_of(kind));  // here, so the child's peak is loading and training only
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::execl("/proc/self/exe", argv[0], "--one", kind.c_str(), dir.c_str(), part.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    stdfs::remove_all(dir);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      std::cerr << "bench_moe_cpu: the " << kind << " run failed\n";
      return 1;
    }
    runs[kind] = json::parse(fs::read_file(part));
    stdfs::remove(part);
    std::cerr << kind << ": " << runs[kind].dump() << "\n";
  }
  const double moe_s = runs["moe"]["step_s"].get<double>(), dense_s = runs["dense"]["step_s"].get<double>();
  json res = {
      {"description",
       "One QLoRA training step (forward_loss + backward, gradient checkpointing, fp32, LoRA r 16 on attention) of a "
       "Mixtral-shaped mixture of experts against a Llama-shaped dense model whose MLP has the same active size "
       "(intermediate = experts_per_tok x expert intermediate); each model in its own process; step time median of 3 "
       "after a warm-up step; peak_rss_bytes is the process's VmHWM."},
      {"machine",
       {{"cpu", bench::cpu_model_name()},
        {"cores", ::sysconf(_SC_NPROCESSORS_ONLN)},
        {"threads", at::get_num_threads()},
        {"cpu_kernels", kernels::cpu_isa_name()}}},
      {"batch", {{"micro_batch_size", kBatch}, {"sequence_len", kSeq}}},
      {"command", "cmake --build build --target bench_moe_cpu && build/bench/bench_moe_cpu"},
      {"moe", runs["moe"]},
      {"moe_experts", runs["moe_experts"]},
      {"dense", runs["dense"]},
      {"moe_experts_over_moe",
       {{"step_time", runs["moe_experts"]["step_s"].get<double>() / moe_s},
        {"peak_rss",
         runs["moe_experts"]["peak_rss_bytes"].get<double>() / runs["moe"]["peak_rss_bytes"].get<double>()}}},
      {"moe_over_dense",
       {{"step_time", moe_s / dense_s},
        {"peak_rss", runs["moe"]["peak_rss_bytes"].get<double>() / runs["dense"]["peak_rss_bytes"].get<double>()},
        {"base_bytes", runs["moe"]["base_bytes"].get<double>() / runs["dense"]["base_bytes"].get<double>()}}}};
  fs::write_file_atomic(out, res.dump(2) + "\n");
  std::cout << res.dump(2) << "\n";
  return 0;
}

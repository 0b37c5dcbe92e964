// Packed rows on the CPU: attention per sequence (Model::varlen_attention = 1) against the
// block-diagonal mask over whole rows (0), one QLoRA training step (Model::forward_loss +
// backward, as the trainer runs it), the two interleaved, median of 3 each.
//
//   build/bench/bench_varlen_cpu [--out FILE]     (default bench/results/varlen_cpu.json)
//
// Model: a random llama-shaped checkpoint written here (vocab 32000, hidden 768, intermediate
// 2048, 6 layers, 12 heads / 4 kv); NF4 base, LoRA r 16 on every linear, gradient checkpointing,
// fp32. Batch: 2 rows of T tokens, each packed with samples of 32-256 tokens (uniform), positions
// restarting at every sample, as sample_packing makes them.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>

#include "bench/random_llama.h"
#include "kernels/ops.h"
#include "trainer/common/fs.h"
#include "trainer/model/model.h"

using namespace qlora;
using json = nlohmann::json;
namespace stdfs = std::filesystem;

namespace {

constexpr int64_t kVocab = 32000, kHidden = 768, kInter = 2048, kLayers = 6, kHeads = 12, kKv = 4, kBatch = 2;

void write_model(const stdfs::path& dir) {
  bench::write_random_llama(dir, {kVocab, kHidden, kInter, kLayers, kHeads, kKv});
}

struct Packed {
  at::Tensor ids, pos, seg;
  int64_t samples = 0;
  double sum_sq = 0;  // sum of squared sample lengths
};

Packed pack(int64_t T, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Packed p;
  p.ids = at::randint(kVocab, {kBatch, T}, at::make_generator<at::CPUGeneratorImpl>(seed), at::kLong);
  p.pos = at::empty({kBatch, T}, at::kLong);
  p.seg = at::empty({kBatch, T}, at::kLong);
  auto pos = p.pos.accessor<int64_t, 2>();
  auto seg = p.seg.accessor<int64_t, 2>();
  for (int64_t b = 0; b < kBatch; ++b) {
    int64_t t = 0, s = 0;
    while (t < T) {
      const int64_t len = std::min<int64_t>(T - t, std::uniform_int_distribution<int64_t>(32, 256)(rng));
      for (int64_t i = 0; i < len; ++i) {
        pos[b][t + i] = i;
        seg[b][t + i] = s;
      }
      p.sum_sq += static_cast<double>(len) * len;
      ++p.samples;
      t += len;
      ++s;
    }
  }
  return p;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  stdfs::path out = stdfs::path(QLORA_SOURCE_DIR) / "bench/results/varlen_cpu.json";
  if (args.size() == 2 && args[0] == "--out") out = args[1];
  const stdfs::path dir = stdfs::temp_directory_path() / ("qlora_bench_varlen_" + std::to_string(::getpid()));
  write_model(dir);
  model::ModelLoadOptions o;
  o.compute_dtype = at::kFloat;
  config::LoraConfig lc;
  lc.r = 16;
  lc.alpha = 32;
  lc.dropout = 0.0;  // the same numbers both ways
  lc.target_linear = true;
  o.lora = lc;
  model::Model m = model::load_model(dir, o);
  m.training = true;
  m.gradient_checkpointing = true;

  json rows = json::array();
  for (int64_t T : {512, 1024, 2048}) {
    const Packed p = pack(T, 7 + T);
    std::map<int, std::vector<double>> secs;
    std::map<int, double> loss;
    for (int rep = 0; rep < 3; ++rep) {
      for (int varlen : {0, 1}) {
        m.varlen_attention = varlen;
        for (auto& q : m.lora_parameters()) q.param.mutable_grad() = at::Tensor();
        auto t0 = std::chrono::steady_clock::now();
        model::LossSum l = m.forward_loss(p.ids, p.ids, p.pos, p.seg);
        (l.sum / l.count.to(at::kFloat)).backward();
        secs[varlen].push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        loss[varlen] = (l.sum / l.count.to(at::kFloat)).item<double>();
      }
    }
    auto median = [](std::vector<double> v) {
      std::sort(v.begin(), v.end());
      return v[v.size() / 2];
    };
    const double mask_s = median(secs[0]), varlen_s = median(secs[1]);
    json r = {{"sequence_len", T},
              {"samples", p.samples},
              {"attention_work_ratio", p.sum_sq / (static_cast<double>(kBatch) * T * T)},
              {"mask_step_s", mask_s},
              {"varlen_step_s", varlen_s},
              {"speedup", mask_s / varlen_s},
              {"mask_bytes_avoided", kBatch * T * T},
              {"loss_mask", loss[0]},
              {"loss_varlen", loss[1]},
              {"all_step_s", {{"mask", secs[0]}, {"varlen", secs[1]}}}};
    std::cerr << r.dump() << "\n";
    rows.push_back(r);
  }
  stdfs::remove_all(dir);
  const std::string model_name = bench::cpu_model_name();
  json res = {{"description",
               "One QLoRA training step on packed rows (forward_loss + backward, gradient checkpointing, fp32): "
               "attention per sequence (varlen) against the block-diagonal mask over whole rows; median of 3, "
               "interleaved. attention_work_ratio = sum of squared sample lengths / (B T^2)."},
              {"machine",
               {{"cpu", model_name},
                {"cores", ::sysconf(_SC_NPROCESSORS_ONLN)},
                {"threads", at::get_num_threads()},
                {"cpu_kernels", kernels::cpu_isa_name()}}},
              {"model",
               [] {
                 nlohmann::json m = bench::shape_json({kVocab, kHidden, kInter, kLayers, kHeads, kKv});
                 m.update({{"base", "NF4 (double quant)"}, {"lora", "r=16, all linear"}});
                 return m;
               }()},
              {"batch", {{"micro_batch_size", kBatch}, {"sample_lengths", "uniform 32-256"}}},
              {"command", "cmake --build build --target bench_varlen_cpu && build/bench/bench_varlen_cpu"},
              {"rows", rows}};
  fs::write_file_atomic(out, res.dump(2) + "\n");
  std::cout << res.dump(2) << "\n";
  return 0;
}

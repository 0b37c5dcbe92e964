// Peak host memory of one QLoRA training step (Model::forward_loss + backward, as the trainer runs
// it) with and without activation checkpointing and the chunked cross-entropy, on CPU.
//
//   build/bench/bench_train_memory [--out FILE]      runs every variant, each in its own process
//                                                     (peak RSS is per process), writes JSON
//   build/bench/bench_train_memory --one VARIANT DIR  one variant (used by the above)
//
// The model is a random llama-shaped checkpoint written here (bf16 safetensors): vocab 32000,
// hidden 768, intermediate 2048, 6 layers, 12 heads (4 kv); NF4 base, LoRA r=16 on every linear;
// batch 2 x 1024 tokens, fp32 compute (the CPU default).
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/GradMode.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "bench/random_llama.h"
#include "kernels/ops.h"
#include "trainer/common/fs.h"
#include "trainer/model/model.h"

using namespace qlora;
using json = nlohmann::json;
namespace stdfs = std::filesystem;

namespace {

constexpr int64_t kVocab = 32000, kHidden = 768, kInter = 2048, kLayers = 6, kHeads = 12, kKv = 4;
constexpr int64_t kBatch = 2, kSeq = 1024;

// Resets VmHWM to the current RSS (Linux: echo 5 > /proc/self/clear_refs).
void reset_peak() {
  std::ofstream f("/proc/self/clear_refs");
  f << "5";
}

void write_model(const stdfs::path& dir) {
  bench::write_random_llama(dir, {kVocab, kHidden, kInter, kLayers, kHeads, kKv});
}

int run_one(const std::string& variant, const stdfs::path& dir) {
  const bool ckpt = variant == "checkpointing" || variant == "both";
  const bool chunked = variant == "chunked_ce" || variant == "both";
  model::ModelLoadOptions o;
  o.compute_dtype = at::kFloat;
  config::LoraConfig lc;
  lc.r = 16;
  lc.alpha = 32;
  lc.dropout = 0.05;
  lc.target_linear = true;
  o.lora = lc;
  model::Model m = model::load_model(dir, o);
  m.training = true;
  m.gradient_checkpointing = ckpt;
  m.ce_chunk_tokens = chunked ? 0 : -1;
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(5);
  at::Tensor ids = at::randint(kVocab, {kBatch, kSeq}, g, at::kLong);
  const uint64_t before = fs::proc_status_bytes("VmRSS:");
  reset_peak();
  auto t0 = std::chrono::steady_clock::now();
  model::LossSum l = m.forward_loss(ids, ids);  // what the trainer calls
  (l.sum / l.count.to(at::kFloat)).backward();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const uint64_t peak = fs::proc_status_bytes("VmHWM:");
  json r = {{"variant", variant},
            {"gradient_checkpointing", ckpt},
            {"chunked_cross_entropy", chunked},
            {"ce_chunk_tokens", chunked ? model::default_ce_chunk_tokens(kVocab) : kBatch * kSeq},
            {"rss_before_step_bytes", before},
            {"peak_rss_bytes", peak},
            {"step_peak_extra_bytes", peak - before},
            {"step_seconds", secs},
            {"loss", (l.sum / l.count.to(at::kFloat)).item<double>()}};
  std::cout << r.dump() << std::endl;
  return 0;
}

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char ch : s) q += ch == '\'' ? std::string("'\\''") : std::string(1, ch);
  return q + "'";
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.size() == 3 && args[0] == "--one") return run_one(args[1], args[2]);
  stdfs::path out = stdfs::path(QLORA_SOURCE_DIR) / "bench/results/train_step_memory.json";
  if (args.size() == 2 && args[0] == "--out") out = args[1];

  const stdfs::path dir = stdfs::temp_directory_path() / ("qlora_bench_train_" + std::to_string(::getpid()));
  write_model(dir);
  json runs = json::array();
  for (const char* v : {"plain", "checkpointing", "chunked_ce", "both"}) {
    std::string exe = stdfs::read_symlink("/proc/self/exe").string();
    FILE* p = ::popen((shell_quote(exe) + " --one " + v + " " + shell_quote(dir.string())).c_str(), "r");
    std::string text;
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) text.append(buf, n);
    if (::pclose(p) != 0) {
      std::cerr << "variant " << v << " failed:\n" << text;
      return 1;
    }
    json r = json::parse(text.substr(text.rfind('{', text.size() - 2)));
    std::cerr << r.dump() << "\n";
    runs.push_back(r);
  }
  stdfs::remove_all(dir);
  const std::string model_name = bench::cpu_model_name();
  json res = {
      {"description",
       "Peak host RSS of one QLoRA training step on CPU (Model::forward_loss + backward, as the trainer runs it), each "
       "variant in its own process; step_peak_extra_bytes = VmHWM during the step - VmRSS "
       "before it (model, LoRA and inputs already resident)."},
      {"machine",
       {{"cpu", model_name}, {"cores", ::sysconf(_SC_NPROCESSORS_ONLN)}, {"cpu_kernels", kernels::cpu_isa_name()}}},
      {"model",
       [] {
         nlohmann::json m = bench::shape_json({kVocab, kHidden, kInter, kLayers, kHeads, kKv});
         m.update({{"base", "NF4 (double quant)"}, {"lora", "r=16, all linear"}, {"compute_dtype", "float32"}});
         return m;
       }()},
      {"batch", {{"micro_batch_size", kBatch}, {"sequence_len", kSeq}}},
      {"command", "cmake --build build --target bench_train_memory && build/bench/bench_train_memory"},
      {"runs", runs}};
  fs::write_file_atomic(out, res.dump(2) + "\n");
  std::cout << res.dump(2) << "\n";
  return 0;
}

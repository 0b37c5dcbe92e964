// Peak host memory of load_model (quantize-while-loading from the mmap) for one model directory.
// Driven by bench/bench_load_memory.py, which also measures transformers + bitsandbytes.
//
//   build/bench/bench_load_memory MODEL_DIR [bf16|fp32]     prints one JSON object
#include <chrono>
#include <cstring>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "trainer/common/fs.h"
#include "trainer/io/hf_checkpoint.h"
#include "trainer/model/model.h"

using namespace qlora;

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: bench_load_memory MODEL_DIR [bf16|fp32]\n";
    return 2;
  }
  const std::string dtype = argc > 2 ? argv[2] : "bf16";
  uint64_t largest = 0;
  {
    io::HfCheckpoint ck(argv[1]);  // headers only: the largest tensor of the checkpoint
    for (const auto& n : ck.names()) largest = std::max<uint64_t>(largest, ck.info(n).nbytes());
  }
  at::zeros({1});  // torch initialized before the baseline
  const uint64_t baseline = fs::proc_status_bytes("VmRSS:");
  const uint64_t baseline_hwm = fs::proc_status_bytes("VmHWM:");
  const uint64_t baseline_anon = fs::proc_status_bytes("RssAnon:"), baseline_file = fs::proc_status_bytes("RssFile:");
  model::ModelLoadOptions o;
  o.compute_dtype = dtype == "fp32" ? at::kFloat : at::kBFloat16;
  auto t0 = std::chrono::steady_clock::now();
  model::Model m = model::load_model(argv[1], o);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  nlohmann::json r = {{"loader", "qlora load_model (NF4 double quant, blocksize 64)"},
                      {"compute_dtype", dtype},
                      {"baseline_rss_bytes", baseline},
                      {"baseline_peak_rss_bytes", baseline_hwm},
                      {"baseline_rss_anon_bytes", baseline_anon},
                      {"baseline_rss_file_bytes", baseline_file},
                      {"peak_rss_bytes", fs::proc_status_bytes("VmHWM:")},
                      {"final_rss_bytes", fs::proc_status_bytes("VmRSS:")},
                      {"final_rss_anon_bytes", fs::proc_status_bytes("RssAnon:")},
                      {"final_rss_file_bytes", fs::proc_status_bytes("RssFile:")},
                      {"model_bytes", m.base_nbytes()},
                      {"largest_tensor_bytes", largest},
                      {"seconds", secs}};
  std::cout << r.dump() << std::endl;
  return 0;
}

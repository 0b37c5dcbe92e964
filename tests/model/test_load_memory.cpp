// Quantize-while-loading keeps host memory near the final model: peak RSS of load_model stays
// within NF4 model + the largest single tensor + a fixed allowance, well under the file size.
// The load runs in a child process (this test binary re-run with QLORA_LOAD_MEMORY_CHILD set), so
// its peak RSS is its own.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/common/load_peak.h"
#include "tests/model/fixtures.h"
#include "trainer/common/fs.h"
#include "trainer/io/hf_checkpoint.h"
#include "trainer/model/model.h"

using namespace qlora;

namespace {

// A random llama-shaped bf16 checkpoint: 8 layers, hidden 1024, intermediate 2816, vocab 32000,
// untied (about 330 MB on disk; the largest tensors are the 65 MB embeddings).
void write_checkpoint(const stdfs::path& dir) {
  const int64_t V = 32000, H = 1024, I = 2816, L = 8;
  nlohmann::json c = {{"model_type", "llama"},     {"vocab_size", V},          {"hidden_size", H},
                      {"intermediate_size", I},    {"num_hidden_layers", L},   {"num_attention_heads", 16},
                      {"num_key_value_heads", 16}, {"torch_dtype", "bfloat16"}};
  fs::write_file_atomic(dir / "config.json", c.dump());
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(1);
  io::SafetensorsWriter w;
  auto rnd = [&](std::vector<int64_t> s) { return at::randn(s, g, at::kFloat).to(at::kBFloat16); };
  w.add("model.embed_tokens.weight", rnd({V, H}));
  w.add("lm_head.weight", rnd({V, H}));
  w.add("model.norm.weight", rnd({H}));
  for (int64_t l = 0; l < L; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    w.add(p + "input_layernorm.weight", rnd({H}));
    w.add(p + "post_attention_layernorm.weight", rnd({H}));
    for (const char* m : {"q_proj", "k_proj", "v_proj", "o_proj"}) w.add(p + "self_attn." + m + ".weight", rnd({H, H}));
    w.add(p + "mlp.gate_proj.weight", rnd({I, H}));
    w.add(p + "mlp.up_proj.weight", rnd({I, H}));
    w.add(p + "mlp.down_proj.weight", rnd({H, I}));
  }
  w.write(dir / "model.safetensors");
}

}  // namespace

TEST(LoadMemory, PeakIsModelPlusLargestTensor) {
  if (test::report_load_peak_if_child("QLORA_LOAD_MEMORY_CHILD")) return;
  if (!test::rss_is_measurable()) GTEST_SKIP() << "peak RSS is not measurable under AddressSanitizer";
  const stdfs::path dir = test::temp_dir();
  write_checkpoint(dir);
  uint64_t largest = 0, file_bytes = 0;
  {
    io::HfCheckpoint ck(dir);
    for (const auto& n : ck.names()) largest = std::max<uint64_t>(largest, ck.info(n).nbytes());
    file_bytes = ck.total_bytes();
  }
  const test::LoadPeak lp =
      test::load_peak_in_child("QLORA_LOAD_MEMORY_CHILD", dir, "LoadMemory.PeakIsModelPlusLargestTensor");
  const uint64_t peak = lp.peak, baseline = lp.baseline;
  const int64_t model_bytes = lp.model_bytes;
  const double mib = 1024.0 * 1024.0;
  const uint64_t growth = peak - baseline;
  const uint64_t allowance = 64ull << 20;  // allocator slack, the fp32 copy of one linear while quantizing
  std::printf("load: peak - baseline %.1f MiB; NF4 model %.1f MiB + largest tensor %.1f MiB; file %.1f MiB\n",
              growth / mib, model_bytes / mib, largest / mib, file_bytes / mib);
  EXPECT_LE(growth, static_cast<uint64_t>(model_bytes) + largest + allowance);
  EXPECT_LT(growth, file_bytes);  // never the whole 16-bit model in memory
}

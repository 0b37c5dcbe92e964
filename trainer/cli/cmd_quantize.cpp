// qlora quantize --model HF_DIR --out DIR: writes an HF "bnb-4bit" (NF4) checkpoint that
// transformers + bitsandbytes load as they load their own (trainer/quant/quantize_checkpoint.h).
#include <chrono>
#include <cstdio>

#include "trainer/cli/commands.h"
#include "trainer/common/fs.h"
#include "trainer/quant/quantize_checkpoint.h"

namespace qlora::cli {

int run_quantize(const QuantizeArgs& a) {
  quant::QuantizeOptions opt;
  opt.model = a.model;
  opt.out = a.out;
  opt.blocksize = a.blocksize;
  opt.double_quant = a.double_quant;
  opt.compute_dtype = a.compute_dtype;
  opt.force = a.force;
  const auto t0 = std::chrono::steady_clock::now();
  const quant::QuantizeReport r = quant::quantize_hf_checkpoint(opt);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("quantized %lld linear weights to NF4 (blocksize %lld, double quantization %s), copied %lld tensors\n",
              static_cast<long long>(r.quantized), static_cast<long long>(a.blocksize), a.double_quant ? "on" : "off",
              static_cast<long long>(r.copied));
  std::printf("%s -> %s in %d shard(s), %.1f s; wrote %s\n", fs::format_bytes(r.bytes_in).c_str(),
              fs::format_bytes(r.bytes_out).c_str(), r.shards, s, a.out.c_str());
  return 0;
}

}  // namespace qlora::cli

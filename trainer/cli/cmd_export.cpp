// qlora export CHECKPOINT --format peft|merged|gguf-adapter|gguf --out DIR|FILE.gguf (trainer/export/export.h).
#include <chrono>
#include <cstdio>

#include "trainer/cli/commands.h"
#include "trainer/common/fs.h"
#include "trainer/export/export.h"

namespace qlora::cli {

int run_export(const ExportArgs& a) {
  exporter::ExportOptions o;
  o.checkpoint = a.checkpoint;
  o.out = a.out;
  o.base_model = a.base_model;
  o.format = a.format;
  o.merge_into = a.merge_into;
  o.outtype = a.outtype;
  if (!a.dtype.empty()) o.dtype = exporter::parse_export_dtype(a.dtype, "--dtype");
  o.max_shard_bytes = exporter::parse_size(a.max_shard_size, "--max-shard-size");
  o.force = a.force;
  const auto t0 = std::chrono::steady_clock::now();
  const exporter::ExportReport r = exporter::export_checkpoint(o);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("adapter: %s\n", r.adapter_dir.string().c_str());
  if (!r.base_model.empty()) std::printf("base: %s\n", r.base_model.string().c_str());
  if (a.format == "merged" || a.format == "gguf")
    std::printf("merged %lld adapted linears into %s weights\n", static_cast<long long>(r.merged_modules),
                a.merge_into == "original" ? "the original 16-bit" : "the dequantized");
  if (a.format == "gguf")
    std::printf("wrote %s (%s, %s of tensors):", a.out.c_str(), a.outtype.empty() ? "f16" : a.outtype.c_str(),
                fs::format_bytes(r.tensor_bytes).c_str());
  else
    std::printf("wrote %s (%s, %s of tensors):", a.out.c_str(), c10::toString(r.dtype),
                fs::format_bytes(r.tensor_bytes).c_str());
  for (const auto& f : r.files) std::printf(" %s", f.c_str());
  std::printf("\n%.1f s, peak RSS %s\n", s, fs::format_bytes(fs::peak_rss_bytes()).c_str());
  return 0;
}

}  // namespace qlora::cli

#include "trainer/quant/quantize_checkpoint.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <cstdio>

#include "kernels/nf4.h"
#include "kernels/ops.h"
#include "trainer/common/error.h"
#include "trainer/common/fs.h"
#include "trainer/io/dtype.h"
#include "trainer/io/hf_checkpoint.h"
#include "trainer/quant/bnb_nf4.h"

namespace qlora::quant {

namespace stdfs = std::filesystem;

namespace {

// Output bytes of one input tensor once written.
uint64_t output_bytes(const std::string& name, const io::TensorInfo& info, const QuantizeOptions& opt) {
  if (!is_quantized_linear_weight(name, info)) return info.nbytes();
  const int64_t n = info.numel(), nb = nf4::num_blocks(n, opt.blocksize);
  uint64_t b = (n + 1) / 2 + 16 * 4 + 256;  // codes, quant_map, JSON (about)
  b += opt.double_quant ? nb + 4 * nf4::num_blocks(nb, nf4::kNestedBlocksize) + 256 * 4 : 4 * nb;
  return b;
}

// transformers' BitsAndBytesConfig.to_dict() for 4-bit NF4, as save_pretrained writes it.
nlohmann::ordered_json quantization_config(const QuantizeOptions& opt) {
  nlohmann::ordered_json q;
  q["_load_in_4bit"] = true;
  q["_load_in_8bit"] = false;
  q["bnb_4bit_compute_dtype"] = opt.compute_dtype;
  q["bnb_4bit_quant_storage"] = "uint8";
  q["bnb_4bit_quant_type"] = "nf4";
  q["bnb_4bit_use_double_quant"] = opt.double_quant;
  q["llm_int8_enable_fp32_cpu_offload"] = false;
  q["llm_int8_has_fp16_weight"] = false;
  q["llm_int8_skip_modules"] = nullptr;
  q["llm_int8_threshold"] = 6.0;
  q["load_in_4bit"] = true;
  q["load_in_8bit"] = false;
  q["quant_method"] = "bitsandbytes";
  return q;
}

}  // namespace

bool is_quantized_linear_weight(const std::string& name, const io::TensorInfo& info) {
  if (info.shape.size() != 2 || !name.ends_with(".weight")) return false;
  if (!io::is_float_weight_dtype(info.dtype)) return false;
  // Mixture-of-experts routers (mlp.gate, block_sparse_moe.gate) and shared-expert gates stay
  // 16-bit, as the loader reads them.
  if (name.ends_with(".gate.weight") || name.ends_with("shared_expert_gate.weight")) return false;
  return name.starts_with("model.layers.");
}

QuantizeReport quantize_hf_checkpoint(const QuantizeOptions& opt) {
  if (opt.blocksize < 32 || opt.blocksize > 4096 || (opt.blocksize & (opt.blocksize - 1)) != 0)
    user_error("--blocksize: expected a power of two in 32..4096, got ", opt.blocksize);
  if (!io::parse_float_dtype(opt.compute_dtype, io::FloatNames::Torch))
    user_error("--compute-dtype: expected bfloat16, float16 or float32, got \"", opt.compute_dtype, "\"");
  const stdfs::path cfg_path = opt.model / "config.json";
  if (!stdfs::exists(cfg_path)) user_error(cfg_path.string(), ": missing (an HF model directory has config.json)");
  nlohmann::ordered_json cfg;
  try {
    cfg = nlohmann::ordered_json::parse(fs::read_file(cfg_path));
  } catch (const nlohmann::json::exception& e) {
    user_error(cfg_path.string(), ": not valid JSON: ", json_error_text(e));
  }
  if (!cfg.is_object()) user_error(cfg_path.string(), ": expected a JSON object");
  if (cfg.contains("quantization_config"))
    user_error(cfg_path.string(), ": quantization_config: the model is already quantized (",
               cfg["quantization_config"].value("quant_method", std::string("?")), ")");
  if (stdfs::exists(opt.out) && !stdfs::is_directory(opt.out))
    user_error(opt.out.string(), ": exists and is not a directory");
  if (stdfs::exists(opt.out) && !stdfs::is_empty(opt.out) && !opt.force)
    user_error(opt.out.string(), ": output directory is not empty (use --force to replace it)");
  if (stdfs::exists(opt.out) && stdfs::weakly_canonical(opt.out) == stdfs::weakly_canonical(opt.model))
    user_error(opt.out.string(), ": the output directory must differ from the model directory");

  io::HfCheckpoint in(opt.model);
  const std::vector<std::string> names = in.names();
  for (const std::string& n : names)
    if (n.ends_with(kBnbNf4StateSuffix))
      user_error(in.file_of(n).path().string(), ": ", n, ": the weights are already 4-bit");

  // Plan shards in name order (a module's entries stay together: they share a prefix).
  std::vector<uint64_t> bytes;
  for (const std::string& n : names) bytes.push_back(output_bytes(n, in.info(n), opt));
  const std::vector<std::vector<size_t>> shards = io::plan_shards(bytes, opt.max_shard_bytes);

  QuantizeReport rep;
  rep.shards = static_cast<int>(shards.size());
  fs::StagedDir staged(opt.out, /*replace_existing=*/opt.force);
  std::vector<std::pair<std::string, std::string>> weight_map;
  for (size_t s = 0; s < shards.size(); ++s) {
    const std::string fname = io::shard_file_name(s, shards.size());
    io::SafetensorsWriter w;  // metadata {"format": "pt"}
    for (size_t i : shards[s]) {
      const std::string& n = names[i];
      const io::TensorInfo& info = in.info(n);
      at::Tensor t = in.tensor(n);  // zero-copy view of the mapping
      rep.bytes_in += info.nbytes();
      if (is_quantized_linear_weight(n, info)) {
        const std::string prefix = n.substr(0, n.size() - std::string(".weight").size());
        add_bnb_nf4(w, prefix, kernels::nf4_quantize(t, opt.blocksize, opt.double_quant));
        ++rep.quantized;
      } else {
        w.add(n, t);
        ++rep.copied;
      }
    }
    rep.bytes_out += w.data_bytes();
    w.write(staged.path() / fname);
    // every key the shard holds (the bnb entries too), for the index
    io::SafetensorsFile written(staged.path() / fname);
    for (const io::TensorInfo& ti : written.tensors()) weight_map.emplace_back(ti.name, fname);
  }
  if (shards.size() > 1) io::write_shard_index(staged.path(), rep.bytes_out, weight_map);
  cfg["quantization_config"] = quantization_config(opt);
  fs::write_file_atomic(staged.path() / "config.json", cfg.dump(2) + "\n");
  // Tokenizer, generation config, chat template, README...: copied as they are.
  for (const auto& e : stdfs::directory_iterator(opt.model)) {
    if (!e.is_regular_file() || io::is_hf_weight_file(e.path()) || e.path().filename() == "config.json") continue;
    stdfs::copy_file(e.path(), staged.path() / e.path().filename());
  }
  staged.commit();
  return rep;
}

}  // namespace qlora::quant

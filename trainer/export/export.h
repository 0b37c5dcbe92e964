// qlora export: a trained adapter (a checkpoint, a run directory's newest intact checkpoint, or a
// PEFT adapter directory) written for other tools.
//
//   peft          OUT/adapter_config.json + OUT/adapter_model.safetensors as PEFT writes them
//                 (tensors fp32 unless a dtype is given). PeftModel.from_pretrained(base, OUT).
//   merged        a plain Hugging Face model: W' = W + scaling * B @ A for every adapted linear,
//                 computed in fp32, with W = dequant(NF4) (the weights a QLoRA adapter was trained
//                 against; default) or the original 16-bit weights (--merge-into original), saved
//                 bf16 (default) / fp16 / fp32 in safetensors shards of at most max_shard_bytes
//                 (model-0000i-of-0000n.safetensors + model.safetensors.index.json when more than
//                 one), config.json without quantization_config, the base's tokenizer files and
//                 generation_config.json. Streams tensor by tensor out of the base's mmap and into
//                 the output files: peak memory is about one fp32 weight and its temporaries.
//   gguf-adapter  OUT/adapter_model.gguf for llama.cpp (--lora), see trainer/io/gguf.h.
//   gguf          the merged model (computed as for merged) as one llama.cpp GGUF file OUT
//                 (NAME.gguf): 2-D weights in the outtype (f16 default, bf16, q8_0, f32), 1-D
//                 tensors F32, the llama q/k row permutation, no output.weight when tied, the
//                 hyperparameters and the run's tokenizer as metadata (trainer/export/gguf_model.h).
//                 Streamed tensor by tensor into a temporary sibling renamed over OUT when complete.
//
// Every other format is built in a temporary sibling of OUT and renamed into place when complete
// (fs::StagedDir): a failed export leaves nothing behind and replaces nothing (--force replaces a
// good OUT only at the very end).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "trainer/model/model_config.h"
#include "trainer/run/adapter_source.h"

namespace qlora::exporter {

struct ExportOptions {
  std::filesystem::path checkpoint;             // checkpoint, run directory or PEFT directory
  std::filesystem::path out;                    // output directory (gguf: the .gguf file)
  std::filesystem::path base_model;             // empty: the base the adapter records
  std::string format = "peft";                  // peft | merged | gguf-adapter | gguf
  std::string outtype;                          // gguf: f16 (default) | bf16 | q8_0 | f32
  std::string merge_into = "dequant";           // dequant | original (merged)
  std::optional<at::ScalarType> dtype;          // default: fp32 (peft), bf16 (merged), fp16 (gguf-adapter)
  uint64_t max_shard_bytes = 5'000'000'000ull;  // merged; "5GB" as transformers counts it
  bool force = false;                           // replace a non-empty OUT
};

struct ExportReport {
  std::filesystem::path adapter_dir;  // the checkpoint the adapter came from
  std::filesystem::path base_model;   // the base used (merged, gguf-adapter; peft when checked)
  at::ScalarType dtype = at::kFloat;  // dtype of the written tensors
  std::vector<std::string> files;     // written files, relative to OUT
  uint64_t tensor_bytes = 0;          // bytes of tensor data written
  int64_t merged_modules = 0;         // linears that received B @ A (merged)
};

// A positive byte size in the forms parse_byte_size (trainer/common/bytes.h) reads: "5GB"
// (10^9, as transformers' convert_file_size_to_int counts), "500MB", "512m", "2GiB" (2^30),
// "123" (bytes). UserError naming `what` otherwise (0 included).
uint64_t parse_size(const std::string& s, const std::string& what);

// "bf16" | "fp16" | "fp32" -> scalar type; UserError naming `what` otherwise.
at::ScalarType parse_export_dtype(const std::string& s, const std::string& what);

// Checks that the adapter fits the base described by `mc`: every key is
// base_model.model.<decoder linear>.lora_A|lora_B.weight of a module the base has, with
// A [r, in] and B [out, r], and every module the adapter targets has both. UserError naming the
// adapter file and the key otherwise (an adapter made for another base).
void check_adapter_matches_base(const run::AdapterSource& src, const model::ModelConfig& mc);

// Runs the export; warnings go to stderr. UserError (one line naming the file/option) for bad
// input; nothing is left at or next to OUT when it throws.
ExportReport export_checkpoint(const ExportOptions& o);

}  // namespace qlora::exporter

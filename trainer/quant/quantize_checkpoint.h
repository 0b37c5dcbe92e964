// HF model directory -> HF "bnb-4bit" checkpoint (what `qlora quantize` writes).
//
// The linear weights of the decoder layers (2-D floating ".weight" tensors under
// "model.layers.") become bitsandbytes NF4 entries (trainer/quant/bnb_nf4.h); everything else
// (embeddings, norms, lm_head, biases) is copied unchanged - the modules transformers quantizes
// for Llama / Mistral / Qwen2 / Qwen3 / Gemma. config.json gets the "quantization_config" that
// transformers writes for BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", ...);
// the other files of the directory (tokenizer, generation config, ...) are copied. Tensors stream
// one shard at a time: peak memory is about one output shard plus one input tensor.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>

#include "trainer/io/safetensors.h"

namespace qlora::quant {

struct QuantizeOptions {
  std::filesystem::path model;  // HF model directory
  std::filesystem::path out;    // output directory
  int64_t blocksize = 64;
  bool double_quant = true;
  std::string compute_dtype = "bfloat16";  // bnb_4bit_compute_dtype
  uint64_t max_shard_bytes = 5ull << 30;   // like save_pretrained's default max_shard_size
  bool force = false;                      // replace a non-empty output directory
};

struct QuantizeReport {
  int64_t quantized = 0;   // tensors turned into NF4
  int64_t copied = 0;      // tensors copied unchanged
  uint64_t bytes_in = 0;   // tensor bytes read
  uint64_t bytes_out = 0;  // tensor bytes written
  int shards = 0;
};

// Whether `qlora quantize` stores this tensor in NF4: every floating matrix of the decoder layers
// (transformers holds the dense ones as bnb Linear4bit), except mixture-of-experts routers and
// shared-expert gates, which stay 16-bit.
bool is_quantized_linear_weight(const std::string& name, const io::TensorInfo& info);

// UserError (one line, naming the path or option) for bad input; never leaves a partial output.
QuantizeReport quantize_hf_checkpoint(const QuantizeOptions& opt);

}  // namespace qlora::quant

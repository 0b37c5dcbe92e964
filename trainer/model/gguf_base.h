// A llama.cpp GGUF file as the base model (docs/formats.md §6.5): its metadata as a ModelConfig,
// and its tensors under Hugging Face names, dequantized to fp32 one at a time.
//
// The mapping follows transformers' own GGUF loading (from_pretrained(..., gguf_file=...)):
// config keys {arch}.block_count, .embedding_length, .feed_forward_length, .attention.head_count,
// .attention.head_count_kv, .attention.key_length (or .rope.dimension_count), .context_length,
// .rope.freq_base, .attention.layer_norm_rms_epsilon, .attention.sliding_window; tied embeddings
// when the file holds no output.weight; llama's q/k rows permuted back from llama.cpp's
// interleaved RoPE pairs to HF's half rotation; Gemma 2/3 norms stored as 1 + weight.
#pragma once
#include <ATen/core/Tensor.h>

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "trainer/model/model_config.h"

namespace qlora::io {
class GgufFile;
class HfCheckpoint;
}  // namespace qlora::io

namespace qlora::model {

// The ModelConfig of a GGUF model. UserError "FILE: KEY: ..." for a missing or ill-typed key or
// an architecture that is not supported.
ModelConfig gguf_model_config(const io::GgufFile& f);

// The config.json a Hugging Face copy of the GGUF model carries (what gguf_model_config reads).
std::string gguf_hf_config_json(const io::GgufFile& f);

// HF parameter name -> GGUF tensor name ("model.layers.3.self_attn.q_proj.weight" ->
// "blk.3.attn_q.weight"), for the families GGUF bases are read for (llama, mistral, qwen2, qwen3,
// gemma, gemma2, gemma3, phi3); nullopt for a name with no GGUF counterpart.
std::optional<std::string> gguf_name_of(const std::string& hf_name, const std::string& gguf_arch);

// Where a model's weights come from, tensor by tensor, under HF names: a Hugging Face directory
// (safetensors, zero-copy views) or a GGUF file (dequantized to fp32 on demand).
class TensorSource {
 public:
  virtual ~TensorSource() = default;
  virtual bool contains(const std::string& name) const = 0;
  // Row-major shape. UserError if missing.
  virtual std::vector<int64_t> shape(const std::string& name) const = 0;
  // Whether the stored dtype is a float one the loader takes (F32/F16/BF16 or a ggml type we dequantize).
  virtual bool is_float(const std::string& name) const = 0;
  // The stored dtype for messages ("BF16", "Q4_K", ...).
  virtual std::string dtype_name(const std::string& name) const = 0;
  // A CPU floating tensor holding the HF tensor: a view into the mapped file where the bytes are
  // already that (read-only), else a new fp32 tensor. UserError if missing.
  virtual at::Tensor tensor(const std::string& name) = 0;
  // Drops the mapped pages of a consumed tensor from the resident set.
  virtual void release(const std::string& name) = 0;
  // "FILE: NAME" for messages.
  virtual std::string where(const std::string& name) const = 0;
  // The directory or file, for messages.
  virtual std::string location() const = 0;
  // The safetensors checkpoint behind this source, if it is one (bitsandbytes 4-bit weights).
  virtual const io::HfCheckpoint* hf() const { return nullptr; }
};

// A Hugging Face directory or a GGUF file (io::is_gguf_file).
std::unique_ptr<TensorSource> open_tensor_source(const std::filesystem::path& base);

}  // namespace qlora::model

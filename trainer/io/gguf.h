// GGUF writer (version 3), enough for llama.cpp LoRA adapters (docs/formats.md §6).
//   header: "GGUF", u32 version, u64 tensor_count, u64 kv_count; KVs; tensor infos (name,
//   n_dims, dims in REVERSED (ggml ne) order, ggml type, offset); data aligned to 32 bytes.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace qlora::io {

class GgufWriter {
 public:
  void add_string(const std::string& key, const std::string& v);
  void add_u32(const std::string& key, uint32_t v);
  void add_i32(const std::string& key, int32_t v);
  void add_f32(const std::string& key, float v);
  void add_bool(const std::string& key, bool v);
  // F32, F16 or BF16 tensor (any CPU tensor of those dtypes; made contiguous). Name < 64 bytes.
  void add_tensor(const std::string& name, const at::Tensor& t);
  // Writes atomically (temp file, fsync, rename).
  void write(const std::filesystem::path& path) const;

 private:
  struct KV {
    std::string key;
    uint32_t type;
    std::string payload;  // value bytes, already encoded
  };
  std::vector<KV> kvs_;
  std::vector<std::pair<std::string, at::Tensor>> tensors_;
  uint32_t alignment_ = 32;
};

// One LoRA pair of a decoder linear, PEFT naming, e.g. module "model.layers.3.self_attn.q_proj".
struct LoraTensor {
  std::string module;  // HF module path without the "base_model.model." prefix
  at::Tensor A;        // [r, in]
  at::Tensor B;        // [out, r]
};

struct GgufLoraOptions {
  std::string architecture = "llama";  // llama (Llama, Mistral), qwen2, qwen3
  float alpha = 16;
  int64_t n_head = 0;  // for the llama q/k permutation
  int64_t n_head_kv = 0;
  at::ScalarType dtype = at::kHalf;  // F32 | F16 | BF16 in the file
};

// Writes a llama.cpp LoRA adapter GGUF: general.type=adapter, adapter.type=lora,
// adapter.lora.alpha; tensors blk.N.<attn_q|attn_k|attn_v|attn_output|ffn_gate|ffn_up|ffn_down>
// .weight.lora_a / .lora_b. For the llama architecture the rows of q/k lora_B are permuted from
// HF's half-rotation RoPE layout to llama.cpp's interleaved pairs.
void write_lora_gguf(const std::filesystem::path& path, const std::vector<LoraTensor>& lora,
                     const GgufLoraOptions& opt);

// HF module path -> GGUF base tensor name ("model.layers.3.self_attn.q_proj" -> "blk.3.attn_q").
// UserError for modules llama.cpp adapters cannot target.
std::string gguf_tensor_base_name(const std::string& module);

}  // namespace qlora::io

// GGUF writers (version 3): llama.cpp LoRA adapters held in memory, and whole models streamed
// tensor by tensor (docs/formats.md §6).
//   header: "GGUF", u32 version, u64 tensor_count, u64 kv_count; KVs; tensor infos (name,
//   n_dims, dims in REVERSED (ggml ne) order, ggml type, offset); data aligned to 32 bytes.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace qlora::fs {
class AtomicFile;
}

namespace qlora::io {

// The key-value metadata of a GGUF file, encoded as it is added.
class GgufMetadata {
 public:
  void add_string(const std::string& key, const std::string& v);
  void add_u32(const std::string& key, uint32_t v);
  void add_i32(const std::string& key, int32_t v);
  void add_f32(const std::string& key, float v);
  void add_bool(const std::string& key, bool v);
  void add_strings(const std::string& key, const std::vector<std::string>& v);
  void add_f32s(const std::string& key, const std::vector<float>& v);
  void add_i32s(const std::string& key, const std::vector<int32_t>& v);
  // Number of keys and their encoded bytes, general.alignment (32) first as llama.cpp writes it.
  uint64_t count() const { return count_ + 1; }
  std::string encode() const;

 private:
  void key(const std::string& k, uint32_t type);
  std::string bytes_;
  uint64_t count_ = 0;
};

// Tensor types the model writer stores: F32, F16, BF16, and Q8_0 (blocks of 32 values: an fp16
// scale d = max|x| / 127 and 32 int8 round(x / d), rounded half away from zero, as ggml's
// quantize_row_q8_0_ref).
enum class GgufOutType : uint32_t { F32 = 0, F16 = 1, Q8_0 = 8, BF16 = 30 };

// Bytes of a tensor of `shape` (row-major; the last dimension is ggml's ne0, a multiple of 32
// for Q8_0) stored as `type`.
uint64_t gguf_tensor_bytes(GgufOutType type, const std::vector<int64_t>& shape);

// Q8_0 blocks of a float32 tensor (numel a multiple of 32), row-major order.
std::string quantize_q8_0(const at::Tensor& x);

// A GGUF model written tensor by tensor: the header (metadata, every tensor's name, shape, type
// and offset) first, then each tensor's data as add() converts it, so memory holds one tensor.
// Written out of place (fs::AtomicFile): finish() publishes the file; without it nothing is left.
class GgufStreamWriter {
 public:
  struct Entry {
    std::string name;            // < 64 bytes
    std::vector<int64_t> shape;  // row-major (PyTorch) order
    GgufOutType type;
  };
  GgufStreamWriter(const std::filesystem::path& path, const GgufMetadata& meta, std::vector<Entry> entries);
  ~GgufStreamWriter();
  GgufStreamWriter(const GgufStreamWriter&) = delete;
  GgufStreamWriter& operator=(const GgufStreamWriter&) = delete;
  // The next entry's values (same name and shape, any float dtype), converted to its type a slice
  // at a time (a float32 conversion first, as ggml quantizes from float32).
  void add(const std::string& name, const at::Tensor& t);
  void finish();
  uint64_t data_bytes() const { return data_bytes_; }

 private:
  std::unique_ptr<fs::AtomicFile> file_;
  std::vector<Entry> entries_;
  size_t next_ = 0;
  uint64_t data_bytes_ = 0;
};

// The llama q/k row permutation llama.cpp's converter applies: per head, HF's half-rotation rows
// -> interleaved RoPE pairs; w.reshape(n_head, 2, rows/n_head/2, ...).swapaxes(1, 2) (a weight
// [rows, cols] or a bias [rows]).
at::Tensor gguf_permute_rows(const at::Tensor& w, int64_t n_head);

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
  GgufMetadata meta_;
  std::vector<std::pair<std::string, at::Tensor>> tensors_;
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

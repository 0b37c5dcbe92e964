#include "trainer/io/gguf.h"

#include <ATen/ATen.h>

#include <cstring>
#include <fstream>
#include <regex>

#include "trainer/common/error.h"
#include "trainer/common/fs.h"

namespace qlora::io {

namespace {
enum : uint32_t { kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7, kString = 8 };
enum : uint32_t { kGgmlF32 = 0, kGgmlF16 = 1, kGgmlBF16 = 30 };

template <class T>
void put(std::string& s, T v) {
  s.append(reinterpret_cast<const char*>(&v), sizeof v);
}
void put_str(std::string& s, const std::string& v) {
  put<uint64_t>(s, v.size());
  s += v;
}
}  // namespace

void GgufWriter::add_string(const std::string& key, const std::string& v) {
  std::string p;
  put_str(p, v);
  kvs_.push_back({key, kString, p});
}
void GgufWriter::add_u32(const std::string& key, uint32_t v) {
  std::string p;
  put(p, v);
  kvs_.push_back({key, kU32, p});
}
void GgufWriter::add_i32(const std::string& key, int32_t v) {
  std::string p;
  put(p, v);
  kvs_.push_back({key, kI32, p});
}
void GgufWriter::add_f32(const std::string& key, float v) {
  std::string p;
  put(p, v);
  kvs_.push_back({key, kF32, p});
}
void GgufWriter::add_bool(const std::string& key, bool v) {
  std::string p;
  put<uint8_t>(p, v ? 1 : 0);
  kvs_.push_back({key, kBool, p});
}

void GgufWriter::add_tensor(const std::string& name, const at::Tensor& t) {
  TORCH_CHECK(name.size() < 64, "GGUF tensor name too long: ", name);
  const auto st = t.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16, "GGUF: unsupported dtype ", st);
  tensors_.emplace_back(name, t.detach().cpu().contiguous());
}

void GgufWriter::write(const std::filesystem::path& path) const {
  std::string h;
  h += "GGUF";
  put<uint32_t>(h, 3);
  put<uint64_t>(h, tensors_.size());
  put<uint64_t>(h, kvs_.size() + 1);
  // general.alignment first, as llama.cpp's writer does
  put_str(h, "general.alignment");
  put<uint32_t>(h, kU32);
  put<uint32_t>(h, alignment_);
  for (const auto& kv : kvs_) {
    put_str(h, kv.key);
    put<uint32_t>(h, kv.type);
    h += kv.payload;
  }
  uint64_t off = 0;
  std::vector<uint64_t> offsets;
  for (const auto& [name, t] : tensors_) {
    put_str(h, name);
    put<uint32_t>(h, static_cast<uint32_t>(t.dim()));
    for (int64_t d = t.dim() - 1; d >= 0; --d) put<uint64_t>(h, static_cast<uint64_t>(t.size(d)));
    const auto st = t.scalar_type();
    put<uint32_t>(h, st == at::kFloat ? kGgmlF32 : st == at::kHalf ? kGgmlF16 : kGgmlBF16);
    put<uint64_t>(h, off);
    offsets.push_back(off);
    off += (t.nbytes() + alignment_ - 1) / alignment_ * alignment_;
  }
  while (h.size() % alignment_) h.push_back('\0');
  std::string data;
  data.reserve(off);
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const auto& t = tensors_[i].second;
    data.append(static_cast<const char*>(t.data_ptr()), t.nbytes());
    while (data.size() % alignment_) data.push_back('\0');
  }
  fs::write_file_atomic(path, h + data);
}

std::string gguf_tensor_base_name(const std::string& module) {
  static const std::regex re(
      R"(^model\.layers\.(\d+)\.(self_attn|mlp)\.(q_proj|k_proj|v_proj|qkv_proj|o_proj|gate_proj|up_proj|gate_up_proj|down_proj)$)");
  std::smatch m;
  if (!std::regex_match(module, m, re))
    user_error("gguf-adapter export: module \"", module, "\" is not a decoder linear llama.cpp adapters can target");
  static const std::map<std::string, std::string> names = {
      {"q_proj", "attn_q"},
      {"k_proj", "attn_k"},
      {"v_proj", "attn_v"},
      {"o_proj", "attn_output"},
      {"gate_proj", "ffn_gate"},
      {"up_proj", "ffn_up"},
      {"down_proj", "ffn_down"},
      // phi3: llama.cpp keeps the fused projections (ffn_up holds gate and up rows).
      {"qkv_proj", "attn_qkv"},
      {"gate_up_proj", "ffn_up"}};
  return "blk." + m[1].str() + "." + names.at(m[3].str());
}

namespace {
// HF half-rotation rows -> llama.cpp interleaved pairs, per head:
// w.reshape(n_head, 2, rows/n_head/2, cols).swapaxes(1, 2).reshape(rows, cols)
at::Tensor permute_rows(const at::Tensor& w, int64_t n_head) {
  const int64_t rows = w.size(0), cols = w.size(1);
  TORCH_CHECK(n_head > 0 && rows % (2 * n_head) == 0, "gguf: cannot permute ", rows, " rows for ", n_head, " heads");
  return w.reshape({n_head, 2, rows / n_head / 2, cols}).transpose(1, 2).reshape({rows, cols});
}
}  // namespace

void write_lora_gguf(const std::filesystem::path& path, const std::vector<LoraTensor>& lora,
                     const GgufLoraOptions& opt) {
  GgufWriter w;
  w.add_string("general.type", "adapter");
  w.add_string("general.architecture", opt.architecture);
  w.add_string("adapter.type", "lora");
  w.add_f32("adapter.lora.alpha", opt.alpha);
  const bool permute = opt.architecture == "llama";
  for (const auto& l : lora) {
    const std::string base = gguf_tensor_base_name(l.module);
    at::Tensor B = l.B;
    if (permute && base.ends_with(".attn_q")) B = permute_rows(B, opt.n_head);
    if (permute && base.ends_with(".attn_k")) B = permute_rows(B, opt.n_head_kv);
    w.add_tensor(base + ".weight.lora_a", l.A.to(opt.dtype));
    w.add_tensor(base + ".weight.lora_b", B.to(opt.dtype));
  }
  w.write(path);
}

}  // namespace qlora::io

#include "trainer/io/gguf.h"

#include <ATen/ATen.h>

#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <regex>

#include "trainer/common/error.h"
#include "trainer/common/fs.h"

namespace qlora::io {

namespace {
enum : uint32_t { kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7, kString = 8, kArray = 9 };
enum : uint32_t { kGgmlF32 = 0, kGgmlF16 = 1, kGgmlBF16 = 30 };
constexpr uint64_t kAlignment = 32;
constexpr int64_t kQ8Block = 32;

template <class T>
void put(std::string& s, T v) {
  s.append(reinterpret_cast<const char*>(&v), sizeof v);
}
void put_str(std::string& s, const std::string& v) {
  put<uint64_t>(s, v.size());
  s += v;
}
uint64_t aligned(uint64_t n) { return (n + kAlignment - 1) / kAlignment * kAlignment; }

// "GGUF", version, counts, metadata, tensor infos (offsets packed and aligned), padding.
std::string encode_header(const GgufMetadata& meta, const std::vector<std::string>& names,
                          const std::vector<std::vector<int64_t>>& shapes, const std::vector<uint32_t>& types,
                          const std::vector<uint64_t>& nbytes) {
  std::string h;
  h += "GGUF";
  put<uint32_t>(h, 3);
  put<uint64_t>(h, names.size());
  put<uint64_t>(h, meta.count());
  h += meta.encode();
  uint64_t off = 0;
  for (size_t i = 0; i < names.size(); ++i) {
    TORCH_CHECK(names[i].size() < 64, "GGUF tensor name too long: ", names[i]);
    put_str(h, names[i]);
    put<uint32_t>(h, static_cast<uint32_t>(shapes[i].size()));
    for (auto d = shapes[i].rbegin(); d != shapes[i].rend(); ++d) put<uint64_t>(h, static_cast<uint64_t>(*d));
    put<uint32_t>(h, types[i]);
    put<uint64_t>(h, off);
    off += aligned(nbytes[i]);
  }
  h.resize(aligned(h.size()), '\0');
  return h;
}
}  // namespace

void GgufMetadata::key(const std::string& k, uint32_t type) {
  put_str(bytes_, k);
  put<uint32_t>(bytes_, type);
  ++count_;
}
void GgufMetadata::add_string(const std::string& k, const std::string& v) {
  key(k, kString);
  put_str(bytes_, v);
}
void GgufMetadata::add_u32(const std::string& k, uint32_t v) {
  key(k, kU32);
  put(bytes_, v);
}
void GgufMetadata::add_i32(const std::string& k, int32_t v) {
  key(k, kI32);
  put(bytes_, v);
}
void GgufMetadata::add_f32(const std::string& k, float v) {
  key(k, kF32);
  put(bytes_, v);
}
void GgufMetadata::add_bool(const std::string& k, bool v) {
  key(k, kBool);
  put<uint8_t>(bytes_, v ? 1 : 0);
}
void GgufMetadata::add_strings(const std::string& k, const std::vector<std::string>& v) {
  key(k, kArray);
  put<uint32_t>(bytes_, kString);
  put<uint64_t>(bytes_, v.size());
  for (const auto& x : v) put_str(bytes_, x);
}
void GgufMetadata::add_f32s(const std::string& k, const std::vector<float>& v) {
  key(k, kArray);
  put<uint32_t>(bytes_, kF32);
  put<uint64_t>(bytes_, v.size());
  bytes_.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}
void GgufMetadata::add_i32s(const std::string& k, const std::vector<int32_t>& v) {
  key(k, kArray);
  put<uint32_t>(bytes_, kI32);
  put<uint64_t>(bytes_, v.size());
  bytes_.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(int32_t));
}
std::string GgufMetadata::encode() const {
  std::string h;
  put_str(h, "general.alignment");
  put<uint32_t>(h, kU32);
  put<uint32_t>(h, static_cast<uint32_t>(kAlignment));
  return h + bytes_;
}

void GgufWriter::add_string(const std::string& key, const std::string& v) { meta_.add_string(key, v); }
void GgufWriter::add_u32(const std::string& key, uint32_t v) { meta_.add_u32(key, v); }
void GgufWriter::add_i32(const std::string& key, int32_t v) { meta_.add_i32(key, v); }
void GgufWriter::add_f32(const std::string& key, float v) { meta_.add_f32(key, v); }
void GgufWriter::add_bool(const std::string& key, bool v) { meta_.add_bool(key, v); }

void GgufWriter::add_tensor(const std::string& name, const at::Tensor& t) {
  TORCH_CHECK(name.size() < 64, "GGUF tensor name too long: ", name);
  const auto st = t.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kHalf || st == at::kBFloat16, "GGUF: unsupported dtype ", st);
  tensors_.emplace_back(name, t.detach().cpu().contiguous());
}

void GgufWriter::write(const std::filesystem::path& path) const {
  std::vector<std::string> names;
  std::vector<std::vector<int64_t>> shapes;
  std::vector<uint32_t> types;
  std::vector<uint64_t> nbytes;
  for (const auto& [name, t] : tensors_) {
    names.push_back(name);
    shapes.push_back(t.sizes().vec());
    const auto st = t.scalar_type();
    types.push_back(st == at::kFloat ? kGgmlF32 : st == at::kHalf ? kGgmlF16 : kGgmlBF16);
    nbytes.push_back(t.nbytes());
  }
  std::string out = encode_header(meta_, names, shapes, types, nbytes);
  for (const auto& [name, t] : tensors_) {
    out.append(static_cast<const char*>(t.data_ptr()), t.nbytes());
    out.resize(aligned(out.size()), '\0');
  }
  fs::write_file_atomic(path, out);
}

uint64_t gguf_tensor_bytes(GgufOutType type, const std::vector<int64_t>& shape) {
  uint64_t n = 1;
  for (int64_t d : shape) n *= static_cast<uint64_t>(d);
  switch (type) {
    case GgufOutType::F32: return n * 4;
    case GgufOutType::F16:
    case GgufOutType::BF16: return n * 2;
    case GgufOutType::Q8_0: return n / kQ8Block * (2 + kQ8Block);
  }
  return 0;
}

std::string quantize_q8_0(const at::Tensor& x) {
  const at::Tensor c = x.to(at::kFloat).contiguous();
  const int64_t n = c.numel();
  TORCH_CHECK(n % kQ8Block == 0, "Q8_0: ", n, " values are not whole blocks of 32");
  const float* p = c.const_data_ptr<float>();
  std::string out(static_cast<size_t>(n / kQ8Block * (2 + kQ8Block)), '\0');
  char* o = out.data();
  for (int64_t b = 0; b < n / kQ8Block; ++b, p += kQ8Block, o += 2 + kQ8Block) {
    float amax = 0;
    for (int64_t i = 0; i < kQ8Block; ++i) amax = std::max(amax, std::fabs(p[i]));
    const float d = amax / 127.0f;
    const float id = d == 0.0f ? 0.0f : 1.0f / d;
    const uint16_t dh = c10::Half(d).x;
    std::memcpy(o, &dh, 2);
    for (int64_t i = 0; i < kQ8Block; ++i) o[2 + i] = static_cast<char>(static_cast<int8_t>(std::round(p[i] * id)));
  }
  return out;
}

GgufStreamWriter::GgufStreamWriter(const std::filesystem::path& path, const GgufMetadata& meta,
                                   std::vector<Entry> entries)
    : entries_(std::move(entries)) {
  std::vector<std::string> names;
  std::vector<std::vector<int64_t>> shapes;
  std::vector<uint32_t> types;
  std::vector<uint64_t> nbytes;
  for (const Entry& e : entries_) {
    TORCH_CHECK(e.type != GgufOutType::Q8_0 || (!e.shape.empty() && e.shape.back() % kQ8Block == 0), "GGUF: ", e.name,
                ": rows are not whole Q8_0 blocks");
    names.push_back(e.name);
    shapes.push_back(e.shape);
    types.push_back(static_cast<uint32_t>(e.type));
    nbytes.push_back(gguf_tensor_bytes(e.type, e.shape));
  }
  const std::string h = encode_header(meta, names, shapes, types, nbytes);
  file_ = std::make_unique<fs::AtomicFile>(path);
  file_->write(h.data(), h.size());
}

GgufStreamWriter::~GgufStreamWriter() = default;

void GgufStreamWriter::add(const std::string& name, const at::Tensor& t) {
  TORCH_CHECK(next_ < entries_.size(), "GgufStreamWriter: more tensors than planned (", name, ")");
  const Entry& e = entries_[next_];
  TORCH_CHECK(e.name == name && t.sizes().vec() == e.shape, "GgufStreamWriter: expected ", e.name, " ",
              at::IntArrayRef(e.shape), ", got ", name, " ", t.sizes());
  // Converted a slice at a time (whole Q8_0 blocks), so the temporaries stay small whatever the
  // tensor's size; a tensor already in the stored dtype is written as it is.
  const at::Tensor x = t.detach().cpu().contiguous().reshape({-1});
  const int64_t total = x.numel();
  constexpr int64_t kSlice = int64_t{1} << 22;  // values (a multiple of 32)
  uint64_t n = 0;
  for (int64_t off = 0; off < total; off += kSlice) {
    const at::Tensor part = x.slice(0, off, std::min(total, off + kSlice));
    if (e.type == GgufOutType::Q8_0) {
      const std::string q = quantize_q8_0(part);
      file_->write(q.data(), q.size());
      n += q.size();
    } else {
      const at::ScalarType st = e.type == GgufOutType::F32   ? at::kFloat
                                : e.type == GgufOutType::F16 ? at::kHalf
                                                             : at::kBFloat16;
      const at::Tensor c = part.to(st).contiguous();
      file_->write(c.const_data_ptr(), c.nbytes());
      n += c.nbytes();
    }
  }
  static const char zeros[kAlignment] = {};
  file_->write(zeros, aligned(n) - n);
  data_bytes_ += n;
  ++next_;
}

void GgufStreamWriter::finish() {
  TORCH_CHECK(next_ == entries_.size(), "GgufStreamWriter: ", entries_.size() - next_, " tensors not written");
  file_->commit();
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

at::Tensor gguf_permute_rows(const at::Tensor& w, int64_t n_head) {
  const int64_t rows = w.size(0);
  TORCH_CHECK(n_head > 0 && rows % (2 * n_head) == 0, "gguf: cannot permute ", rows, " rows for ", n_head, " heads");
  std::vector<int64_t> s = {n_head, 2, rows / n_head / 2};
  for (int64_t d = 1; d < w.dim(); ++d) s.push_back(w.size(d));
  return w.reshape(s).transpose(1, 2).reshape(w.sizes()).contiguous();
}

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
    if (permute && base.ends_with(".attn_q")) B = gguf_permute_rows(B, opt.n_head);
    if (permute && base.ends_with(".attn_k")) B = gguf_permute_rows(B, opt.n_head_kv);
    w.add_tensor(base + ".weight.lora_a", l.A.to(opt.dtype));
    w.add_tensor(base + ".weight.lora_b", B.to(opt.dtype));
  }
  w.write(path);
}

}  // namespace qlora::io

#include "trainer/io/gguf_reader.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <bit>
#include <cerrno>
#include <cstring>
#include <fstream>

#include "trainer/common/error.h"

namespace qlora::io {

namespace {
constexpr uint64_t kMaxDims = 4;              // GGML_MAX_DIMS
constexpr uint64_t kMaxNesting = 4;           // arrays of arrays of ...
constexpr uint64_t kMaxNameBytes = 1u << 16;  // tensor names (llama.cpp allows 64)
constexpr int64_t kMaxElements = int64_t{1} << 50;

struct Type {
  uint32_t id;
  const char* name;
  uint32_t block, bytes;
};
constexpr Type kTypes[] = {
    {0, "F32", 1, 4},       {1, "F16", 1, 2},       {2, "Q4_0", 32, 18},    {3, "Q4_1", 32, 20},
    {6, "Q5_0", 32, 22},    {7, "Q5_1", 32, 24},    {8, "Q8_0", 32, 34},    {9, "Q8_1", 32, 36},
    {10, "Q2_K", 256, 84},  {11, "Q3_K", 256, 110}, {12, "Q4_K", 256, 144}, {13, "Q5_K", 256, 176},
    {14, "Q6_K", 256, 210}, {15, "Q8_K", 256, 292}, {24, "I8", 1, 1},       {25, "I16", 1, 2},
    {26, "I32", 1, 4},      {27, "I64", 1, 8},      {28, "F64", 1, 8},      {30, "BF16", 1, 2},
};

const char* value_type_name(uint32_t t) {
  static const char* names[] = {"u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
                                "bool", "string", "array", "u64", "i64", "f64"};
  return t < 13 ? names[t] : "unknown";
}
}  // namespace

std::string ggml_type_name(uint32_t type) {
  for (const Type& t : kTypes)
    if (t.id == type) return t.name;
  return "type " + std::to_string(type);
}

std::optional<std::pair<uint32_t, uint32_t>> ggml_block_layout(uint32_t type) {
  for (const Type& t : kTypes)
    if (t.id == type) return std::make_pair(t.block, t.bytes);
  return std::nullopt;
}

int64_t GgufTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  return n;
}

struct GgufFile::Entry {
  std::string key;
  uint32_t type = 0;
  std::optional<uint32_t> element_type;
  nlohmann::json value;
};

GgufFile::~GgufFile() = default;

namespace {
// A bounds-checked cursor over the mapped header.
class Cursor {
 public:
  Cursor(const std::string& path, const uint8_t* base, uint64_t size) : path_(path), base_(base), size_(size) {}
  uint64_t pos() const { return pos_; }
  uint64_t left() const { return size_ - pos_; }

  template <class T>
  T get(const std::string& what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, base_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string str(const std::string& what, uint64_t max = UINT64_MAX) {
    const uint64_t n = get<uint64_t>(what + " (string length)");
    if (n > left())
      user_error(path_, ": ", what, ": string length ", n, " runs past the end of the file (", left(), " bytes left)");
    if (n > max) user_error(path_, ": ", what, ": string length ", n, " exceeds the limit of ", max, " bytes");
    std::string s(reinterpret_cast<const char*>(base_ + pos_), n);
    pos_ += n;
    return s;
  }
  void need(uint64_t n, const std::string& what) {
    if (n > left()) user_error(path_, ": ", what, ": truncated (file ends at byte ", size_, ")");
  }

 private:
  const std::string& path_;
  const uint8_t* base_;
  uint64_t size_;
  uint64_t pos_ = 0;
};

uint64_t min_size(uint32_t t) {
  switch (t) {
    case 0:
    case 1:
    case 7: return 1;
    case 2:
    case 3: return 2;
    case 4:
    case 5:
    case 6: return 4;
    case 8: return 8;
    case 9: return 12;
    default: return 8;
  }
}

nlohmann::json read_value(Cursor& c, uint32_t type, const std::string& path, const std::string& key, int depth,
                          std::optional<uint32_t>* element_type) {
  switch (type) {
    case 0: return c.get<uint8_t>(key);
    case 1: return c.get<int8_t>(key);
    case 2: return c.get<uint16_t>(key);
    case 3: return c.get<int16_t>(key);
    case 4: return c.get<uint32_t>(key);
    case 5: return c.get<int32_t>(key);
    case 6: return c.get<float>(key);
    case 7: {
      const uint8_t b = c.get<uint8_t>(key);
      if (b > 1) user_error(path, ": ", key, ": bool value ", int(b), ", expected 0 or 1");
      return b == 1;
    }
    case 8: {
      std::string s = c.str(key);
      // Keep bytes as they are (token texts may hold invalid UTF-8): JSON strings carry bytes.
      return s;
    }
    case 9: {
      if (depth >= static_cast<int>(kMaxNesting)) user_error(path, ": ", key, ": arrays nested too deep");
      const uint32_t et = c.get<uint32_t>(key + " (array type)");
      if (et > 12) user_error(path, ": ", key, ": unknown array element type ", et);
      const uint64_t n = c.get<uint64_t>(key + " (array length)");
      if (n > c.left() / min_size(et))
        user_error(path, ": ", key, ": array of ", n, " ", value_type_name(et),
                   " elements runs past the end of the file");
      if (element_type) *element_type = et;
      nlohmann::json a = nlohmann::json::array();
      a.get_ref<nlohmann::json::array_t&>().reserve(n);
      for (uint64_t i = 0; i < n; ++i) a.push_back(read_value(c, et, path, key, depth + 1, nullptr));
      return a;
    }
    case 10: return c.get<uint64_t>(key);
    case 11: return c.get<int64_t>(key);
    case 12: return c.get<double>(key);
    default: user_error(path, ": ", key, ": unknown value type ", type);
  }
}
}  // namespace

GgufFile::GgufFile(const std::filesystem::path& path) : path_(path) {
  const std::string p = path.string();
  map_ = fs::map_file(path);
  const uint64_t fsize = map_->size;
  const uint8_t* base = map_->data;
  Cursor c(p, base, fsize);

  if (fsize < 4 || std::memcmp(base, "GGUF", 4) != 0) user_error(p, ": not a GGUF file (no \"GGUF\" magic)");
  c.get<uint32_t>("magic");
  version_ = c.get<uint32_t>("version");
  if (version_ != 2 && version_ != 3) user_error(p, ": version: expected GGUF version 2 or 3, got ", version_);
  const uint64_t n_tensors = c.get<uint64_t>("tensor_count");
  const uint64_t n_kv = c.get<uint64_t>("kv_count");
  // Each KV needs at least a key length, a type and a 1-byte value; each tensor info 8+4+4+8 bytes.
  if (n_kv > c.left() / 13) user_error(p, ": kv_count: ", n_kv, " metadata pairs cannot fit in the file");
  if (n_tensors > c.left() / 24) user_error(p, ": tensor_count: ", n_tensors, " tensors cannot fit in the file");

  for (uint64_t i = 0; i < n_kv; ++i) {
    auto e = std::make_unique<Entry>();
    e->key =
        c.str("metadata key " + std::to_string(i) + (kv_.empty() ? "" : " (after " + shorten(kv_.back()->key) + ")"),
              kMaxNameBytes);
    if (kv_index_.count(e->key)) user_error(p, ": ", e->key, ": duplicate metadata key");
    e->type = c.get<uint32_t>(e->key + " (value type)");
    if (e->type > 12) user_error(p, ": ", e->key, ": unknown value type ", e->type);
    e->value = read_value(c, e->type, p, e->key, 0, &e->element_type);
    kv_index_.emplace(e->key, kv_.size());
    kv_.push_back(std::move(e));
  }
  if (has("general.alignment")) {
    if (type_of("general.alignment") != GgufValueType::U32)
      user_error(p, ": general.alignment: expected a u32, got ",
                 value_type_name(static_cast<uint32_t>(type_of("general.alignment"))));
    const uint64_t a = value("general.alignment").get<uint64_t>();
    if (a == 0 || !std::has_single_bit(a) || a > (1u << 20))
      user_error(p, ": general.alignment: expected a power of two up to 1048576, got ", a);
    alignment_ = a;
  }

  tensors_.reserve(n_tensors);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo t;
    t.name = c.str("tensor info " + std::to_string(i) + " name" +
                       (tensors_.empty() ? "" : " (after " + shorten(tensors_.back().name) + ")"),
                   kMaxNameBytes);
    if (index_.count(t.name)) user_error(p, ": ", t.name, ": duplicate tensor name");
    const uint32_t nd = c.get<uint32_t>(t.name + " (n_dims)");
    if (nd == 0 || nd > kMaxDims) user_error(p, ": ", t.name, ": n_dims ", nd, ", expected 1 to ", kMaxDims);
    int64_t numel = 1;
    for (uint32_t d = 0; d < nd; ++d) {
      const uint64_t v = c.get<uint64_t>(t.name + " (dims)");
      if (v == 0 || v > static_cast<uint64_t>(kMaxElements) || numel > kMaxElements / static_cast<int64_t>(v))
        user_error(p, ": ", t.name, ": dimension ", d, " is ", v, " (expected 1 to ", kMaxElements,
                   " elements in all)");
      t.ne.push_back(static_cast<int64_t>(v));
      numel *= static_cast<int64_t>(v);
    }
    t.type = c.get<uint32_t>(t.name + " (type)");
    const auto layout = ggml_block_layout(t.type);
    if (!layout) user_error(p, ": ", t.name, ": unknown ggml tensor type ", t.type);
    if (t.ne[0] % layout->first)
      user_error(p, ": ", t.name, ": row length ", t.ne[0], " is not a multiple of the ", ggml_type_name(t.type),
                 " block size ", layout->first);
    t.nbytes = static_cast<uint64_t>(numel) / layout->first * layout->second;
    t.offset = c.get<uint64_t>(t.name + " (offset)");
    if (t.offset % alignment_)
      user_error(p, ": ", t.name, ": offset ", t.offset, " is not a multiple of the alignment ", alignment_);
    index_.emplace(t.name, tensors_.size());
    tensors_.push_back(std::move(t));
  }
  const uint64_t data_start = (c.pos() + alignment_ - 1) / alignment_ * alignment_;
  if (data_start > fsize && !tensors_.empty())
    user_error(p, ": tensor data: the file ends before the data section (byte ", data_start, ")");
  data_ = base + std::min(data_start, fsize);
  data_size_ = data_start > fsize ? 0 : fsize - data_start;
  for (const auto& t : tensors_) {
    if (t.offset > data_size_ || t.nbytes > data_size_ - t.offset)
      user_error(p, ": ", t.name, ": data [", t.offset, ", ", t.offset + t.nbytes, ") lies outside the file's ",
                 data_size_, "-byte data section");
  }
}

bool GgufFile::has(std::string_view key) const { return kv_index_.find(key) != kv_index_.end(); }

const nlohmann::json& GgufFile::value(std::string_view key) const {
  auto it = kv_index_.find(key);
  if (it == kv_index_.end()) user_error(path_.string(), ": ", key, ": missing from the GGUF metadata");
  return kv_[it->second]->value;
}

GgufValueType GgufFile::type_of(std::string_view key) const {
  value(key);
  return static_cast<GgufValueType>(kv_[kv_index_.find(key)->second]->type);
}

std::optional<GgufValueType> GgufFile::element_type_of(std::string_view key) const {
  value(key);
  const auto& e = *kv_[kv_index_.find(key)->second];
  if (!e.element_type) return std::nullopt;
  return static_cast<GgufValueType>(*e.element_type);
}

std::vector<std::string> GgufFile::keys() const {
  std::vector<std::string> k;
  for (const auto& e : kv_) k.push_back(e->key);
  return k;
}

std::string GgufFile::get_string(std::string_view key) const {
  const auto& v = value(key);
  if (!v.is_string()) user_error(path_.string(), ": ", key, ": expected a string");
  return v.get<std::string>();
}

int64_t GgufFile::get_int(std::string_view key) const {
  const auto& v = value(key);
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(INT64_MAX)) user_error(path_.string(), ": ", key, ": ", u, " is out of range");
    return static_cast<int64_t>(u);
  }
  if (!v.is_number_integer()) user_error(path_.string(), ": ", key, ": expected an integer");
  return v.get<int64_t>();
}

double GgufFile::get_float(std::string_view key) const {
  const auto& v = value(key);
  if (!v.is_number()) user_error(path_.string(), ": ", key, ": expected a number");
  return v.get<double>();
}

bool GgufFile::get_bool(std::string_view key) const {
  const auto& v = value(key);
  if (!v.is_boolean()) user_error(path_.string(), ": ", key, ": expected a bool");
  return v.get<bool>();
}

std::optional<int64_t> GgufFile::find_int(std::string_view key) const {
  return has(key) ? std::optional<int64_t>(get_int(key)) : std::nullopt;
}
std::optional<double> GgufFile::find_float(std::string_view key) const {
  return has(key) ? std::optional<double>(get_float(key)) : std::nullopt;
}
std::optional<std::string> GgufFile::find_string(std::string_view key) const {
  return has(key) ? std::optional<std::string>(get_string(key)) : std::nullopt;
}
std::optional<bool> GgufFile::find_bool(std::string_view key) const {
  return has(key) ? std::optional<bool>(get_bool(key)) : std::nullopt;
}

const GgufTensorInfo* GgufFile::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

std::span<const uint8_t> GgufFile::bytes(std::string_view name) const {
  const GgufTensorInfo* t = find(name);
  if (!t) user_error(path_.string(), ": ", name, ": no such tensor in the GGUF file");
  return {data_ + t->offset, t->nbytes};
}

bool is_gguf_file(const std::filesystem::path& p) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(p, ec)) return false;
  if (p.extension() == ".gguf") return true;
  std::ifstream f(p, std::ios::binary);
  char m[4] = {};
  f.read(m, 4);
  return f.gcount() == 4 && std::memcmp(m, "GGUF", 4) == 0;
}

}  // namespace qlora::io

#include "trainer/io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <set>
#include <tuple>

#include "trainer/common/error.h"
#include "trainer/common/fs.h"
#include "trainer/io/dtype.h"

namespace qlora::io {

namespace {
constexpr uint64_t kMaxHeader = 100'000'000;

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string o = "[";
  for (size_t i = 0; i < shape.size(); ++i) o += (i ? ", " : "") + std::to_string(shape[i]);
  return o + "]";
}
}  // namespace

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

SafetensorsFile::SafetensorsFile(const std::filesystem::path& path) : path_(path) {
  const std::string p = path.string();
  map_ = fs::map_file(path);
  const uint64_t fsize = map_->size;
  const uint8_t* base = map_->data;

  if (fsize < 8) user_error(p, ": not a safetensors file (", fsize, " bytes, shorter than the 8-byte header length)");
  uint64_t n = 0;
  std::memcpy(&n, base, 8);  // little-endian host
  if (n > kMaxHeader) user_error(p, ": safetensors header length ", n, " exceeds the 100000000-byte limit");
  if (8 + n > fsize)
    user_error(p, ": safetensors header length ", n, " runs past the end of the file (", fsize, " bytes)");
  if (n == 0 || base[8] != '{') user_error(p, ": safetensors header does not start with '{'");
  // Parse once; a callback sees every top-level key so duplicates (which nlohmann::json would
  // silently collapse) are rejected as the reference reader does.
  nlohmann::json h;
  std::set<std::string> seen;
  std::string dup;
  nlohmann::json::parser_callback_t cb = [&](int depth, nlohmann::json::parse_event_t ev, nlohmann::json& parsed) {
    if (depth == 1 && ev == nlohmann::json::parse_event_t::key && dup.empty()) {
      std::string k = parsed.get<std::string>();
      if (!seen.insert(k).second) dup = k;
    }
    return true;
  };
  try {
    h = nlohmann::json::parse(reinterpret_cast<const char*>(base + 8), reinterpret_cast<const char*>(base + 8 + n), cb);
  } catch (const nlohmann::json::exception& e) {
    user_error(p, ": safetensors header is not valid JSON: ", json_error_text(e));
  }
  if (!dup.empty()) user_error(p, ": duplicate tensor name \"", shorten(dup), "\" in the safetensors header");
  if (!h.is_object()) user_error(p, ": safetensors header is not a JSON object");
  for (auto it = h.begin(); it != h.end(); ++it) {
    const std::string& key = it.key();
    const auto& v = it.value();
    if (key == "__metadata__") {
      if (!v.is_object()) user_error(p, ": __metadata__ must be an object of strings");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) user_error(p, ": __metadata__.", shorten(m.key()), ": expected a string");
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    TensorInfo t;
    t.name = key;
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets"))
      user_error(p, ": tensor \"", shorten(key), "\": expected {dtype, shape, data_offsets}");
    if (!v["dtype"].is_string()) user_error(p, ": tensor \"", shorten(key), "\": dtype must be a string");
    t.dtype = v["dtype"].get<std::string>();
    const int64_t isz = safetensors_itemsize(t.dtype);
    if (isz == 0) user_error(p, ": tensor \"", shorten(key), "\": unknown dtype \"", shorten(t.dtype), "\"");
    if (!v["shape"].is_array()) user_error(p, ": tensor \"", shorten(key), "\": shape must be an array");
    for (const auto& d : v["shape"]) {
      if (!d.is_number_unsigned() || d.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
        user_error(p, ": tensor \"", shorten(key), "\": shape entries must be non-negative integers, got ",
                   d.dump().substr(0, 40));
      t.shape.push_back(d.get<int64_t>());
    }
    const auto& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      user_error(p, ": tensor \"", shorten(key), "\": data_offsets must be [begin, end]");
    t.begin = off[0].get<uint64_t>();
    t.end = off[1].get<uint64_t>();
    if (t.end < t.begin) user_error(p, ": tensor \"", shorten(key), "\": data_offsets end < begin");
    if (t.end > fsize - 8 - n)
      user_error(p, ": tensor \"", shorten(key), "\": data_offsets [", t.begin, ", ", t.end, "] run past the ",
                 fsize - 8 - n, "-byte data buffer");
    // Elements and bytes must be addressable (no dimension product or byte size past int64, even
    // beside a zero dimension) before they are compared with the offsets.
    int64_t elems = 1;
    for (int64_t s : t.shape)
      if (s != 0 && __builtin_mul_overflow(elems, s, &elems))
        user_error(p, ": tensor \"", shorten(key), "\": shape ", shape_text(t.shape), " has too many elements");
    int64_t nbytes = 0;
    if (__builtin_mul_overflow(elems, isz, &nbytes))
      user_error(p, ": tensor \"", shorten(key), "\": shape ", shape_text(t.shape), " of ", t.dtype,
                 " overflows a 64-bit byte size");
    if (t.numel() == 0) nbytes = 0;
    if (static_cast<uint64_t>(nbytes) != t.end - t.begin)
      user_error(p, ": tensor \"", shorten(key), "\": ", t.end - t.begin, " bytes for shape ", shape_text(t.shape),
                 " and dtype ", t.dtype, " that need ", nbytes);
    tensors_.push_back(std::move(t));
  }
  std::sort(tensors_.begin(), tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t pos = 0;
  for (const auto& t : tensors_) {
    if (t.begin != pos)
      user_error(p, ": tensor \"", shorten(t.name), "\" starts at byte ", t.begin, " of the data buffer, expected ",
                 pos, t.begin > pos ? " (hole)" : " (overlap)");
    pos = t.end;
  }
  if (pos != fsize - 8 - n)
    user_error(p, ": file is ", fsize, " bytes but the header describes ", 8 + n + pos,
               " (truncated or trailing data)");
  data_ = base + 8 + n;
  for (size_t i = 0; i < tensors_.size(); ++i) index_[tensors_[i].name] = i;
}

const TensorInfo* SafetensorsFile::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

std::span<const uint8_t> SafetensorsFile::bytes(std::string_view name) const {
  const TensorInfo* t = find(name);
  if (!t) user_error(path_.string(), ": no tensor named \"", name, "\"");
  return {data_ + t->begin, t->end - t->begin};
}

at::Tensor SafetensorsFile::tensor(std::string_view name) const {
  const TensorInfo* t = find(name);
  if (!t) user_error(path_.string(), ": no tensor named \"", name, "\"");
  const at::ScalarType st = scalar_type_from_safetensors(t->dtype, path_.string() + ": tensor \"" + t->name + "\"");
  const auto opts = at::TensorOptions().dtype(st).device(at::kCPU);
  const uint8_t* ptr = data_ + t->begin;
  const int64_t isz = safetensors_itemsize(t->dtype);
  if (t->nbytes() == 0) return at::empty(t->shape, opts);
  if (reinterpret_cast<uintptr_t>(ptr) % isz != 0) {
    // Unaligned in the file: copy into an owned, aligned tensor.
    at::Tensor out = at::empty(t->shape, opts);
    std::memcpy(out.data_ptr(), ptr, t->nbytes());
    return out;
  }
  auto keep = map_;
  return at::from_blob(
      const_cast<uint8_t*>(ptr), t->shape, [keep](void*) {}, opts);
}

namespace {
// Element i's exponent bits all set (NaN or infinity); the mantissa tells which.
template <class U, U kExp, U kMant>
std::optional<std::string> scan_nonfinite(const uint8_t* data, int64_t n) {
  std::atomic<int64_t> first{n};
  at::parallel_for(0, n, int64_t{1} << 20, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e && i < first.load(std::memory_order_relaxed); ++i) {
      U v;
      std::memcpy(&v, data + i * sizeof(U), sizeof(U));
      if ((v & kExp) == kExp) {
        int64_t cur = first.load();
        while (i < cur && !first.compare_exchange_weak(cur, i)) {}
        return;
      }
    }
  });
  const int64_t i = first.load();
  if (i == n) return std::nullopt;
  U v;
  std::memcpy(&v, data + i * sizeof(U), sizeof(U));
  return std::string((v & kMant) ? "NaN" : "Inf") + " at element " + std::to_string(i);
}
}  // namespace

std::optional<std::string> find_nonfinite(std::string_view dtype, std::span<const uint8_t> bytes) {
  const uint8_t* d = bytes.data();
  if (dtype == "F32") return scan_nonfinite<uint32_t, 0x7f800000u, 0x007fffffu>(d, bytes.size() / 4);
  if (dtype == "BF16") return scan_nonfinite<uint16_t, 0x7f80, 0x007f>(d, bytes.size() / 2);
  if (dtype == "F16") return scan_nonfinite<uint16_t, 0x7c00, 0x03ff>(d, bytes.size() / 2);
  if (dtype == "F64")
    return scan_nonfinite<uint64_t, 0x7ff0000000000000ull, 0x000fffffffffffffull>(d, bytes.size() / 8);
  if (dtype == "F8_E5M2") return scan_nonfinite<uint8_t, 0x7c, 0x03>(d, bytes.size());
  // E4M3 (fn) has no infinity; its only NaN is S.1111.111.
  if (dtype == "F8_E4M3") return scan_nonfinite<uint8_t, 0x7f, 0x7f>(d, bytes.size());
  return std::nullopt;
}

void release_mapped_pages(std::span<const uint8_t> bytes) {
  static const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  uintptr_t b = reinterpret_cast<uintptr_t>(bytes.data());
  uintptr_t e = b + bytes.size();
  b = (b + page - 1) / page * page;
  e = e / page * page;
  if (e > b) ::madvise(reinterpret_cast<void*>(b), e - b, MADV_DONTNEED);
}

SafetensorsWriter::SafetensorsWriter() { metadata_["format"] = "pt"; }

void SafetensorsWriter::add(const std::string& name, const at::Tensor& t) {
  for (const auto& e : entries_) TORCH_CHECK(e.first != name, "SafetensorsWriter: duplicate tensor ", name);
  at::Tensor c = t.detach().cpu().contiguous();
  data_bytes_ += c.nbytes();
  entries_.emplace_back(name, std::move(c));
}

namespace {
// Header JSON (padded with spaces to a multiple of 8): __metadata__ first, then the tensors in
// the given order with consecutive data offsets.
std::string make_header(const std::map<std::string, std::string>& metadata,
                        const std::vector<std::tuple<std::string, std::string, std::vector<int64_t>, uint64_t>>& ts) {
  std::string header = "{";
  bool first = true;
  if (!metadata.empty()) {
    header += "\"__metadata__\":" + nlohmann::json(metadata).dump();
    first = false;
  }
  uint64_t off = 0;
  for (const auto& [name, dtype, shape, nbytes] : ts) {
    nlohmann::json e;
    e["dtype"] = dtype;
    e["shape"] = shape;
    e["data_offsets"] = {off, off + nbytes};
    off += nbytes;
    if (!first) header += ",";
    header += nlohmann::json(name).dump() + ":" + e.dump();
    first = false;
  }
  header += "}";
  while (header.size() % 8 != 0) header += ' ';
  return header;
}
}  // namespace

void SafetensorsWriter::write(const std::filesystem::path& path) const {
  std::vector<std::tuple<std::string, std::string, std::vector<int64_t>, uint64_t>> ts;
  for (const auto& [name, t] : entries_)
    ts.emplace_back(name, safetensors_dtype_name(t.scalar_type()), t.sizes().vec(), t.nbytes());
  const std::string header = make_header(metadata_, ts);

  fs::AtomicFile f(path);
  const uint64_t hlen = header.size();
  f.write(&hlen, 8);
  f.write(header.data(), header.size());
  for (const auto& [name, t] : entries_) f.write(t.data_ptr(), t.nbytes());
  f.commit();
}

uint64_t SafetensorsStreamWriter::Entry::nbytes() const {
  uint64_t n = static_cast<uint64_t>(c10::elementSize(dtype));
  for (int64_t d : shape) n *= static_cast<uint64_t>(d);
  return n;
}

SafetensorsStreamWriter::SafetensorsStreamWriter(std::filesystem::path path, std::vector<Entry> entries)
    : file_(std::move(path)), entries_(std::move(entries)) {
  std::vector<std::tuple<std::string, std::string, std::vector<int64_t>, uint64_t>> ts;
  for (const Entry& e : entries_) ts.emplace_back(e.name, safetensors_dtype_name(e.dtype), e.shape, e.nbytes());
  const std::string header = make_header({{"format", "pt"}}, ts);
  const uint64_t hlen = header.size();
  file_.write(&hlen, 8);
  file_.write(header.data(), header.size());
}

void SafetensorsStreamWriter::add(const std::string& name, const at::Tensor& t) {
  TORCH_CHECK(next_ < entries_.size(), "SafetensorsStreamWriter: more tensors than planned (", name, ")");
  const Entry& e = entries_[next_];
  TORCH_CHECK(e.name == name && e.dtype == t.scalar_type() && t.sizes().vec() == e.shape,
              "SafetensorsStreamWriter: expected ", e.name, " ", e.dtype, " ", at::IntArrayRef(e.shape), ", got ", name,
              " ", t.scalar_type(), " ", t.sizes());
  at::Tensor c = t.detach().cpu().contiguous();
  file_.write(c.data_ptr(), c.nbytes());
  ++next_;
}

void SafetensorsStreamWriter::finish() {
  TORCH_CHECK(next_ == entries_.size(), "SafetensorsStreamWriter: ", entries_.size() - next_, " tensors not written");
  file_.commit();
}

}  // namespace qlora::io

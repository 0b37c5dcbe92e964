// safetensors files: a validating, zero-copy (mmap) reader and an atomic writer.
//
// Format (docs/formats.md §3): u64 little-endian header length N, N bytes of UTF-8 JSON
// {"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}},
// then the data buffer. Validated as the reference reader does: header ≤ 100,000,000 bytes,
// no duplicate names, offsets tile the buffer with no holes or overlaps,
// end - begin == numel * itemsize, 8 + N + last_end == file size.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "trainer/common/fs.h"
#include "trainer/common/mapped_file.h"

namespace qlora::io {

struct TensorInfo {
  std::string name;
  std::string dtype;  // "F32", "BF16", "U8", ... as written in the file
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte offsets into the data buffer, end exclusive
  int64_t numel() const;
  uint64_t nbytes() const { return end - begin; }
};

// Drops the pages of a span of mapped file bytes from this process's resident set once they are
// consumed (whole pages inside the span only; the page cache keeps them, a later read faults them
// back in), so streaming through a checkpoint does not grow the RSS by the whole file.
void release_mapped_pages(std::span<const uint8_t> bytes);

// The first NaN or infinity in `bytes`, tensor data of safetensors dtype `dtype` ("F32", "BF16",
// "F16", "F64", "F8_E4M3", "F8_E5M2"), as "NaN at element 17"; nullopt when every element is
// finite or the dtype is not a float. One pass over the bytes (threads share it), no copy.
std::optional<std::string> find_nonfinite(std::string_view dtype, std::span<const uint8_t> bytes);

class SafetensorsFile {
 public:
  // Maps and validates the file; UserError "PATH: what is wrong" for any malformed input.
  explicit SafetensorsFile(const std::filesystem::path& path);

  const std::filesystem::path& path() const { return path_; }
  // Tensors in the order of their data offsets.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find(std::string_view name) const;
  bool contains(std::string_view name) const { return find(name) != nullptr; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // The tensor's raw bytes inside the mapping.
  std::span<const uint8_t> bytes(std::string_view name) const;
  // A CPU tensor viewing the mapping (read-only memory: never write into it; clone() to own).
  // The tensor keeps the mapping alive. UserError if the name is missing.
  at::Tensor tensor(std::string_view name) const;

 private:
  std::filesystem::path path_;
  std::shared_ptr<const fs::MappedFile> map_;
  const uint8_t* data_ = nullptr;  // start of the data buffer
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> index_;
  std::map<std::string, std::string> metadata_;
};

// Collects tensors and writes one safetensors file atomically (temp, fsync, rename).
// Metadata defaults to {"format": "pt"} (transformers rejects files without it).
class SafetensorsWriter {
 public:
  SafetensorsWriter();
  // Adds a tensor (made contiguous on the CPU; the writer keeps a reference, not a copy,
  // when it already is). Duplicate names are a logic error.
  void add(const std::string& name, const at::Tensor& t);
  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }
  size_t size() const { return entries_.size(); }
  uint64_t data_bytes() const { return data_bytes_; }
  void write(const std::filesystem::path& path) const;

 private:
  std::vector<std::pair<std::string, at::Tensor>> entries_;
  std::map<std::string, std::string> metadata_;
  uint64_t data_bytes_ = 0;
};

// Writes one safetensors file whose tensors are known up front (name, dtype, shape) but are
// produced one at a time: the header goes out first, then each tensor's bytes as it is added,
// so memory holds one tensor, never the whole file. Tensors must be added in the order given.
// finish() checks every entry was written, fsyncs and renames the temporary file into place;
// without finish() the temporary file is removed. Metadata {"format": "pt"}.
class SafetensorsStreamWriter {
 public:
  struct Entry {
    std::string name;
    at::ScalarType dtype;
    std::vector<int64_t> shape;
    uint64_t nbytes() const;
  };
  SafetensorsStreamWriter(std::filesystem::path path, std::vector<Entry> entries);
  SafetensorsStreamWriter(const SafetensorsStreamWriter&) = delete;
  SafetensorsStreamWriter& operator=(const SafetensorsStreamWriter&) = delete;
  // The next entry's tensor (same name, dtype and shape; logic error otherwise).
  void add(const std::string& name, const at::Tensor& t);
  void finish();

 private:
  fs::AtomicFile file_;
  std::vector<Entry> entries_;
  size_t next_ = 0;
};

}  // namespace qlora::io

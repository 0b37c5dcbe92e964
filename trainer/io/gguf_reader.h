// GGUF reader (llama.cpp's model file, versions 2 and 3), validating and zero-copy (mmap).
//
// Layout (docs/formats.md §6): "GGUF", u32 version, u64 tensor_count, u64 kv_count; kv_count
// metadata pairs (string key, u32 value type, value; arrays are u32 element type, u64 count,
// elements); tensor_count tensor infos (string name, u32 n_dims, n_dims u64 dims in ggml "ne"
// order (fastest first), u32 ggml type, u64 offset into the data section); padding to
// general.alignment (default 32); the data section. Strings are u64 length + bytes, all little
// endian. Every malformed input is a UserError naming the file and the key or tensor.
#pragma once
#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "trainer/common/mapped_file.h"

namespace qlora::io {

// ggml tensor types (ggml.h numbering). Only the ones whose block layout is known are accepted.
enum class GgmlType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  BF16 = 30,
};

// "Q4_K", "F16", ...; "type 17" for a number outside the table.
std::string ggml_type_name(uint32_t type);
// Elements per block and bytes per block; nullopt for a type this reader does not know.
std::optional<std::pair<uint32_t, uint32_t>> ggml_block_layout(uint32_t type);

// GGUF metadata value types.
enum class GgufValueType : uint32_t {
  U8 = 0,
  I8 = 1,
  U16 = 2,
  I16 = 3,
  U32 = 4,
  I32 = 5,
  F32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  U64 = 10,
  I64 = 11,
  F64 = 12,
};

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> ne;  // ggml order: ne[0] is the contiguous (innermost) dimension
  uint32_t type = 0;        // GgmlType
  uint64_t offset = 0;      // into the data section
  uint64_t nbytes = 0;
  // Row-major (torch) shape: ne reversed.
  std::vector<int64_t> shape() const { return {ne.rbegin(), ne.rend()}; }
  int64_t numel() const;
};

class GgufFile {
 public:
  // Maps and validates the file; UserError "PATH: KEY-OR-TENSOR: what is wrong" for any
  // malformed input.
  explicit GgufFile(const std::filesystem::path& path);
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::filesystem::path& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }

  // Metadata, in file order. Values are JSON: numbers, booleans, strings, arrays of them.
  bool has(std::string_view key) const;
  const nlohmann::json& value(std::string_view key) const;  // UserError if missing
  GgufValueType type_of(std::string_view key) const;
  // For arrays: the element type.
  std::optional<GgufValueType> element_type_of(std::string_view key) const;
  std::vector<std::string> keys() const;

  // Typed access, UserError "PATH: KEY: expected ..." when missing or of another type.
  std::string get_string(std::string_view key) const;
  int64_t get_int(std::string_view key) const;   // any integer type
  double get_float(std::string_view key) const;  // any number
  bool get_bool(std::string_view key) const;
  std::optional<int64_t> find_int(std::string_view key) const;
  std::optional<double> find_float(std::string_view key) const;
  std::optional<std::string> find_string(std::string_view key) const;
  std::optional<bool> find_bool(std::string_view key) const;

  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find(std::string_view name) const;
  bool contains(std::string_view name) const { return find(name) != nullptr; }
  // The tensor's raw bytes inside the mapping. UserError if the name is missing.
  std::span<const uint8_t> bytes(std::string_view name) const;

 private:
  struct Entry;
  std::filesystem::path path_;
  std::shared_ptr<const fs::MappedFile> map_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  const uint8_t* data_ = nullptr;
  uint64_t data_size_ = 0;
  std::vector<std::unique_ptr<Entry>> kv_;
  std::map<std::string, size_t, std::less<>> kv_index_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> index_;
};

// Whether `p` names a GGUF file (a regular file ending in .gguf, or starting with "GGUF").
bool is_gguf_file(const std::filesystem::path& p);

}  // namespace qlora::io

// A whole file mapped read-only, for the readers of weight files (safetensors, GGUF).
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>

namespace qlora::fs {

// A private read-only mapping of a whole file, unmapped when the last reference goes.
struct MappedFile {
  const uint8_t* data = nullptr;  // nullptr for an empty file
  uint64_t size = 0;
  MappedFile() = default;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();
};

// Maps `path`; UserError "PATH: cannot open / stat / mmap: reason" when that fails.
std::shared_ptr<const MappedFile> map_file(const std::filesystem::path& path);

}  // namespace qlora::fs

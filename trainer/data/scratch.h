// Scratch files for data larger than memory. A scratch file is created in a directory and
// unlinked at once, so nothing is left behind whatever becomes of the process; it is written
// sequentially (buffered), then read back with pread or mapped read-only.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace qlora::data {

class ScratchFile {
 public:
  // `what` names the data in messages ("tokenized samples"). UserError naming `dir` when the
  // file cannot be created.
  ScratchFile(const std::filesystem::path& dir, std::string what);
  ~ScratchFile();
  ScratchFile(const ScratchFile&) = delete;
  ScratchFile& operator=(const ScratchFile&) = delete;

  // UserError naming the directory when the disk refuses (full, quota).
  void append(const void* data, size_t n);
  uint64_t size() const { return size_; }
  // Reads [offset, offset + n) of what was appended (flushing the buffer first when needed).
  void read_at(uint64_t offset, void* dst, size_t n);
  // The whole file mapped read-only (after the last append); the mapping keeps the file alive
  // after this object is gone. Null for an empty file.
  std::shared_ptr<const void> map();

 private:
  void flush();
  std::filesystem::path dir_;
  std::string what_;
  int fd_ = -1;
  uint64_t size_ = 0, flushed_ = 0;
  std::vector<char> buf_;
};

// The directory scratch files go to when the configuration names none: $TMPDIR, else /tmp.
std::filesystem::path default_scratch_dir();

}  // namespace qlora::data

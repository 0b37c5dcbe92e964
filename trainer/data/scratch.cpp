#include "trainer/data/scratch.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "trainer/common/error.h"

namespace qlora::data {

namespace {
constexpr size_t kBufferBytes = size_t{4} << 20;
}

ScratchFile::ScratchFile(const std::filesystem::path& dir, std::string what) : dir_(dir), what_(std::move(what)) {
  std::error_code ec;
  std::filesystem::create_directories(dir_, ec);
  std::string tmpl = (dir_ / ".qlora-scratch-XXXXXX").string();
  fd_ = ::mkostemp(tmpl.data(), O_CLOEXEC);
  if (fd_ < 0)
    user_error(dir_.string(), ": cannot create a scratch file for the ", what_, ": ", std::strerror(errno),
               " (set dataset_prepared_path or TMPDIR to a writable directory with room)");
  ::unlink(tmpl.c_str());
  buf_.reserve(kBufferBytes);
}

ScratchFile::~ScratchFile() {
  if (fd_ >= 0) ::close(fd_);
}

void ScratchFile::flush() {
  const char* p = buf_.data();
  size_t left = buf_.size();
  while (left > 0) {
    const ssize_t n = ::pwrite(fd_, p, left, static_cast<off_t>(flushed_));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      user_error(dir_.string(), ": cannot write the ", what_,
                 " to a scratch file: ", n < 0 ? std::strerror(errno) : "no progress",
                 " (streaming needs free disk space about twice the tokenized data; set dataset_prepared_path or "
                 "TMPDIR to a directory with room)");
    p += n;
    left -= static_cast<size_t>(n);
    flushed_ += static_cast<uint64_t>(n);
  }
  buf_.clear();
}

void ScratchFile::append(const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    if (buf_.size() == kBufferBytes) flush();
    const size_t take = std::min(n, kBufferBytes - buf_.size());
    buf_.insert(buf_.end(), p, p + take);
    p += take;
    n -= take;
    size_ += take;
  }
}

void ScratchFile::read_at(uint64_t offset, void* dst, size_t n) {
  if (offset + n > flushed_) flush();
  char* d = static_cast<char*>(dst);
  while (n > 0) {
    const ssize_t got = ::pread(fd_, d, n, static_cast<off_t>(offset));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0)
      user_error(dir_.string(), ": cannot read back the ", what_,
                 " from a scratch file: ", got < 0 ? std::strerror(errno) : "short read");
    d += got;
    n -= static_cast<size_t>(got);
    offset += static_cast<uint64_t>(got);
  }
}

std::shared_ptr<const void> ScratchFile::map() {
  flush();
  if (size_ == 0) return nullptr;
  void* a = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd_, 0);
  if (a == MAP_FAILED) user_error(dir_.string(), ": cannot map the ", what_, ": ", std::strerror(errno));
  const size_t bytes = size_;
  return std::shared_ptr<const void>(a, [bytes](const void* p) { ::munmap(const_cast<void*>(p), bytes); });
}

std::filesystem::path default_scratch_dir() {
  if (const char* t = std::getenv("TMPDIR"); t && *t) return t;
  return "/tmp";
}

}  // namespace qlora::data

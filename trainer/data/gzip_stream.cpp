#include "trainer/data/gzip_stream.h"

#include <zlib.h>

#include <array>
#include <cstdio>
#include <streambuf>
#include <string>

#include "trainer/common/error.h"

namespace qlora::data {

namespace {

class GzipBuf : public std::streambuf {
 public:
  explicit GzipBuf(const std::filesystem::path& path) : name_(path.string()) {
    // zlib passes plain files through unchanged: check the magic bytes first.
    unsigned char magic[2] = {0, 0};
    std::FILE* f = std::fopen(name_.c_str(), "rb");
    if (!f) user_error(name_, ": cannot open dataset file");
    const size_t n = std::fread(magic, 1, 2, f);
    std::fclose(f);
    if (n == 0) return;  // empty: no records
    if (n < 2 || magic[0] != 0x1f || magic[1] != 0x8b)
      user_error(name_, ": not a gzip file (a .gz dataset must be gzip-compressed JSON)");
    gz_ = gzopen(name_.c_str(), "rb");
    if (!gz_) user_error(name_, ": cannot open dataset file");
  }
  ~GzipBuf() override {
    if (gz_) gzclose(gz_);
  }
  GzipBuf(const GzipBuf&) = delete;
  GzipBuf& operator=(const GzipBuf&) = delete;

 protected:
  int_type underflow() override {
    if (gptr() < egptr()) return traits_type::to_int_type(*gptr());
    if (!gz_) return traits_type::eof();
    const int n = gzread(gz_, buf_.data(), static_cast<unsigned>(buf_.size()));
    int err = Z_OK;
    const char* msg = gzerror(gz_, &err);
    if (n < 0 || (err != Z_OK && err != Z_STREAM_END)) {
      const bool truncated = err == Z_BUF_ERROR;
      std::string what = msg ? msg : "unknown error";
      if (what.starts_with(name_ + ": ")) what.erase(0, name_.size() + 2);  // zlib names the file too
      user_error(name_, ": ", truncated ? "truncated gzip file" : "corrupt gzip file", " (zlib: ", what, ")");
    }
    if (n == 0) return traits_type::eof();
    setg(buf_.data(), buf_.data(), buf_.data() + n);
    return traits_type::to_int_type(*gptr());
  }

 private:
  std::string name_;
  gzFile gz_ = nullptr;
  std::array<char, 1 << 16> buf_{};
};

class GzipStream : public std::istream {
 public:
  explicit GzipStream(const std::filesystem::path& path) : std::istream(nullptr), buf_(path) {
    rdbuf(&buf_);
    exceptions(std::ios::badbit);  // a UserError from the buffer reaches the reader
  }

 private:
  GzipBuf buf_;
};

}  // namespace

std::unique_ptr<std::istream> open_gzip(const std::filesystem::path& path) {
  return std::make_unique<GzipStream>(path);
}

}  // namespace qlora::data

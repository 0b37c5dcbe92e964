#include "trainer/common/fs.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <system_error>

#include "trainer/common/error.h"

namespace qlora::fs {

std::string read_file(const stdfs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) user_error(path.string(), ": cannot open for reading: ", std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) user_error(path.string(), ": read error");
  return ss.str();
}

void fsync_path(const stdfs::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw std::system_error(errno, std::generic_category(), "open " + path.string());
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  // Some file systems refuse fsync on directories (EINVAL); that is not a data-loss risk.
  if (rc != 0 && err != EINVAL) throw std::system_error(err, std::generic_category(), "fsync " + path.string());
}

stdfs::path temp_sibling(const stdfs::path& final_path) {
  static std::atomic<uint64_t> counter{0};
  stdfs::path dir = final_path.parent_path();
  if (dir.empty()) dir = ".";
  std::string name =
      "." + final_path.filename().string() + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
  return dir / name;
}

namespace {
// ".<name>.tmp-<pid>-<n>" -> "<name>"; any other component unchanged.
std::string public_component(const std::string& c) {
  const size_t t = c.rfind(".tmp-");
  if (c.size() < 2 || c[0] != '.' || t == std::string::npos || t < 2) return c;
  size_t i = t + 5, digits = 0, dashes = 0;
  for (; i < c.size(); ++i) {
    if (c[i] >= '0' && c[i] <= '9') {
      ++digits;
    } else if (c[i] == '-' && digits > 0 && dashes == 0) {
      ++dashes;
      digits = 0;
    } else {
      return c;
    }
  }
  return (dashes == 1 && digits > 0) ? c.substr(1, t - 1) : c;
}
}  // namespace

stdfs::path public_path(const stdfs::path& path) {
  stdfs::path out;
  for (const auto& c : path) out /= public_component(c.string());
  return out;
}

AtomicFile::AtomicFile(stdfs::path path) : path_(std::move(path)), tmp_(temp_sibling(path_)) {
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) user_error(public_path(path_).string(), ": cannot write: ", std::strerror(errno));
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(tmp_.c_str());
  }
}

void AtomicFile::write(const void* data, size_t n) {
  const char* c = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd_, c, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      user_error(public_path(path_).string(), ": write failed: ", std::strerror(errno));  // the destructor unlinks
    }
    c += w;
    n -= static_cast<size_t>(w);
  }
}

void AtomicFile::commit() {
  const int fd = fd_;
  fd_ = -1;
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp_.c_str());
    user_error(public_path(path_).string(), ": write failed: ", std::strerror(err));
  }
  std::error_code ec;
  stdfs::rename(tmp_, path_, ec);
  if (ec) {
    ::unlink(tmp_.c_str());
    user_error(public_path(path_).string(), ": cannot rename into place: ", ec.message());
  }
  const stdfs::path dir = path_.parent_path();
  try {
    fsync_path(dir.empty() ? stdfs::path(".") : dir);
  } catch (const std::system_error& e) {
    user_error(public_path(path_).string(), ": write failed: ", e.code().message());
  }
}

void write_file_atomic(const stdfs::path& path, std::string_view bytes) {
  AtomicFile f(path);
  f.write(bytes.data(), bytes.size());
  f.commit();
}

StagedDir::StagedDir(stdfs::path final_dir, bool replace_existing)
    : final_(std::move(final_dir)), replace_(replace_existing) {
  stdfs::path parent = final_.parent_path();
  if (!parent.empty()) {
    std::error_code ec;
    stdfs::create_directories(parent, ec);
    if (ec) user_error(parent.string(), ": cannot create directory: ", ec.message());
  }
  tmp_ = temp_sibling(final_);
  std::error_code ec;
  stdfs::create_directory(tmp_, ec);
  if (ec) user_error(public_path(final_).string(), ": cannot create directory: ", ec.message());
}

StagedDir::~StagedDir() {
  if (!done_) {
    std::error_code ec;
    stdfs::remove_all(tmp_, ec);
  }
}

void StagedDir::commit() {
  try {
    for (const auto& e : stdfs::recursive_directory_iterator(tmp_)) {
      if (e.is_regular_file()) fsync_path(e.path());
    }
    fsync_path(tmp_);
  } catch (const std::system_error& e) {  // filesystem_error too
    user_error(public_path(final_).string(), ": write failed: ", e.code().message());
  }
  std::error_code ec;
  if (stdfs::exists(final_)) {
    if (!replace_) user_error(final_.string(), ": already exists");
    // Move the old one aside first so a crash never leaves neither.
    stdfs::path old = temp_sibling(final_);
    stdfs::rename(final_, old, ec);
    if (ec) user_error(final_.string(), ": cannot replace: ", ec.message());
    stdfs::rename(tmp_, final_, ec);
    if (ec) {
      stdfs::rename(old, final_);
      user_error(final_.string(), ": cannot rename into place: ", ec.message());
    }
    stdfs::remove_all(old, ec);
  } else {
    stdfs::rename(tmp_, final_, ec);
    if (ec) user_error(final_.string(), ": cannot rename into place: ", ec.message());
  }
  stdfs::path parent = final_.parent_path();
  fsync_path(parent.empty() ? stdfs::path(".") : parent);
  done_ = true;
}

std::string format_bytes(uint64_t bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024.0 && u < 4) {
    v /= 1024.0;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", v, units[u]);
  return buf;
}

uint64_t proc_status_bytes(const char* key) {
  std::ifstream in("/proc/self/status");
  const std::string_view k(key);
  std::string line;
  while (std::getline(in, line)) {
    if (line.compare(0, k.size(), k) == 0) {
      std::istringstream ss(line.substr(k.size()));
      uint64_t kb = 0;
      ss >> kb;
      return kb * 1024;
    }
  }
  return 0;
}

uint64_t peak_rss_bytes() { return proc_status_bytes("VmHWM:"); }

}  // namespace qlora::fs

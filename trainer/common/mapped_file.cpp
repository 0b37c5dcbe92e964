#include "trainer/common/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "trainer/common/error.h"

namespace qlora::fs {

MappedFile::~MappedFile() {
  if (data && size) ::munmap(const_cast<uint8_t*>(data), size);
}

std::shared_ptr<const MappedFile> map_file(const std::filesystem::path& path) {
  const std::string p = path.string();
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) user_error(p, ": cannot open: ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int e = errno;
    ::close(fd);
    user_error(p, ": cannot stat: ", std::strerror(e));
  }
  auto m = std::make_shared<MappedFile>();
  const auto size = static_cast<uint64_t>(st.st_size);
  if (size > 0) {
    void* a = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (a == MAP_FAILED) {
      const int e = errno;
      ::close(fd);
      user_error(p, ": cannot mmap: ", std::strerror(e));
    }
    m->data = static_cast<const uint8_t*>(a);
    m->size = size;
  }
  ::close(fd);
  return m;
}

}  // namespace qlora::fs

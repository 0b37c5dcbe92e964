#include "trainer/common/memory.h"

#include <sys/resource.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <string_view>

#include "trainer/common/numbers.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define QLORA_SANITIZER_SHADOW 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || __has_feature(memory_sanitizer)
#define QLORA_SANITIZER_SHADOW 1
#endif
#endif

namespace qlora {

void trim_heap() {
#if defined(__GLIBC__)
  ::malloc_trim(0);
#endif
}

void use_returning_heap() {
#if defined(__GLIBC__)
  if (std::getenv("MALLOC_MMAP_THRESHOLD_") == nullptr) ::mallopt(M_MMAP_THRESHOLD, 256 * 1024);
#endif
}

namespace {

// The first line of a file as a byte count; nullopt for "max", a missing file or other text.
std::optional<uint64_t> read_bytes_file(const char* path) {
  std::ifstream in(path);
  std::string line;
  if (!in || !std::getline(in, line)) return std::nullopt;
  const std::optional<int64_t> v = parse_c_int(line);
  if (!v || *v < 0) return std::nullopt;
  return static_cast<uint64_t>(*v);
}

// "KEY:   123 kB" lines of /proc/meminfo or /proc/self/status, in bytes.
std::optional<uint64_t> read_kb_line(const char* path, std::string_view key) {
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line)) {
    if (line.compare(0, key.size(), key) != 0) continue;
    size_t used = 0;
    const std::optional<int64_t> kb = parse_c_int(std::string_view(line).substr(key.size()), &used);
    if (!kb || *kb < 0) return std::nullopt;
    return static_cast<uint64_t>(*kb) * 1024;
  }
  return std::nullopt;
}

std::optional<rlimit> g_saved_limit;

}  // namespace

std::optional<HostMemory> host_memory_available() {
  std::optional<HostMemory> out;
  if (auto avail = read_kb_line("/proc/meminfo", "MemAvailable:")) out = HostMemory{*avail, "MemAvailable"};
  // cgroup v2, then v1; a v1 "no limit" reads as a huge number, which the min below ignores
  std::optional<uint64_t> limit = read_bytes_file("/sys/fs/cgroup/memory.max");
  std::optional<uint64_t> usage = read_bytes_file("/sys/fs/cgroup/memory.current");
  if (!limit) {
    limit = read_bytes_file("/sys/fs/cgroup/memory/memory.limit_in_bytes");
    usage = read_bytes_file("/sys/fs/cgroup/memory/memory.usage_in_bytes");
  }
  if (limit && usage) {
    const uint64_t room = *limit > *usage ? *limit - *usage : 0;
    if (!out || room < out->available) out = HostMemory{room, "cgroup memory limit"};
  }
  return out;
}

uint64_t swap_free_bytes() { return read_kb_line("/proc/meminfo", "SwapFree:").value_or(0); }

bool limit_process_memory(uint64_t bytes) {
#if defined(QLORA_SANITIZER_SHADOW)
  (void)bytes;
  return false;
#else
  const uint64_t used = read_kb_line("/proc/self/status", "VmData:").value_or(0);
  rlimit rl{};
  if (getrlimit(RLIMIT_DATA, &rl) != 0) return false;
  rlim_t want = static_cast<rlim_t>(std::min<uint64_t>(used + bytes, RLIM_INFINITY - 1));
  if (rl.rlim_max != RLIM_INFINITY) want = std::min(want, rl.rlim_max);
  const rlimit saved = rl;
  rl.rlim_cur = want;
  if (setrlimit(RLIMIT_DATA, &rl) != 0) return false;
  if (!g_saved_limit) g_saved_limit = saved;
  return true;
#endif
}

void lift_process_memory_limit() {
  if (g_saved_limit) setrlimit(RLIMIT_DATA, &*g_saved_limit);
}

}  // namespace qlora

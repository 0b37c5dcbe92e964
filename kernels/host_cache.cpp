#include "kernels/host_cache.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <map>
#include <mutex>
#include <vector>

namespace qlora::kernels {

namespace {

struct Block {
  void* ptr;
  size_t size;  // the class size
};

class HostCache final : public c10::Allocator {
 public:
  static HostCache& instance() {
    static HostCache* c = new HostCache();  // never destroyed: tensors may outlive static destructors
    return *c;
  }

  c10::DataPtr allocate(size_t n) override {
    if (n < kMinCachedBytes) return c10::GetDefaultCPUAllocator()->allocate(n);
    const size_t size = host_cache_class_size(n);
    void* ptr = nullptr;
    std::vector<void*> drop;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.find(size);
      if (it != free_.end() && !it->second.empty()) {
        ptr = it->second.back();
        it->second.pop_back();
        cached_ -= size;
        ++hits_;
      } else {
        ++misses_;
        take_back(size, &drop);
      }
      in_use_ += size;
    }
    for (void* p : drop) c10::free_cpu(p);
    if (ptr == nullptr) {
      try {
        ptr = c10::alloc_cpu(size);
      } catch (...) {
        // Out of memory: give the free lists back and try once more before failing.
        release();
        try {
          ptr = c10::alloc_cpu(size);
        } catch (...) {
          std::lock_guard<std::mutex> lock(mu_);
          in_use_ -= size;
          throw;
        }
      }
    }
    return {ptr, new Block{ptr, size}, &HostCache::deleter, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return nullptr; }  // blocks carry a context

  void copy_data(void* dest, const void* src, size_t count) const override { std::memcpy(dest, src, count); }

  void give_back(Block* b) {
    bool keep = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      in_use_ -= b->size;
      if (enabled_.load(std::memory_order_relaxed) && cached_ + b->size <= limit_) {
        free_[b->size].push_back(b->ptr);
        cached_ += b->size;
        keep = true;
      }
    }
    if (!keep) c10::free_cpu(b->ptr);
    delete b;
  }

  void release() {
    std::map<size_t, std::vector<void*>> drop;
    {
      std::lock_guard<std::mutex> lock(mu_);
      drop.swap(free_);
      cached_ = 0;
    }
    for (auto& [size, ptrs] : drop)
      for (void* p : ptrs) c10::free_cpu(p);
  }

  HostCacheStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return {hits_, misses_, cached_, in_use_, limit_};
  }

  void set_limit(uint64_t limit) {
    std::lock_guard<std::mutex> lock(mu_);
    limit_ = limit;
  }

  void reset_counters() {
    std::lock_guard<std::mutex> lock(mu_);
    hits_ = misses_ = 0;
  }

  std::atomic<bool> enabled_{false};

 private:
  // Before new memory is taken for a miss of `size` bytes, free blocks of at least as many bytes
  // (largest classes first) are handed back, so live + cached bytes, the resident memory, grows
  // only when the bytes in use exceed what the process held before: the peak is the no-cache
  // peak, while a step that repeats its sizes still finds its blocks. Called with mu_ held.
  void take_back(size_t size, std::vector<void*>* drop) {
    size_t freed = 0;
    for (auto it = free_.rbegin(); it != free_.rend() && freed < size && cached_ > 0;) {
      std::vector<void*>& list = it->second;
      while (!list.empty() && freed < size) {
        drop->push_back(list.back());
        list.pop_back();
        freed += it->first;
        cached_ -= it->first;
      }
      ++it;
    }
  }

  static void deleter(void* ctx) { instance().give_back(static_cast<Block*>(ctx)); }

  std::mutex mu_;
  std::map<size_t, std::vector<void*>> free_;
  uint64_t cached_ = 0, in_use_ = 0, hits_ = 0, misses_ = 0, limit_ = 0;
};

uint64_t default_limit() {
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  const uint64_t phys = pages > 0 && page > 0 ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(page) : 0;
  const uint64_t gib = uint64_t{1} << 30;
  return phys ? std::min(gib, phys / 8) : gib;
}

}  // namespace

size_t host_cache_class_size(size_t n) {
  if (n <= kMinCachedBytes) return kMinCachedBytes;
  // Four classes per power of two: 2^k * {4, 5, 6, 7} / 4.
  int k = 63 - __builtin_clzll(static_cast<unsigned long long>(n));  // 2^k <= n
  const size_t quarter = size_t{1} << (k - 2);
  return (n + quarter - 1) / quarter * quarter;
}

void enable_host_cache(uint64_t limit_bytes) {
  HostCache& c = HostCache::instance();
  c.set_limit(limit_bytes ? limit_bytes : default_limit());
  if (!c.enabled_.exchange(true)) {
    c.reset_counters();
    c10::SetCPUAllocator(&c, /*priority=*/1);
  }
}

void release_host_cache() { HostCache::instance().release(); }

void disable_host_cache() {
  HostCache& c = HostCache::instance();
  if (c.enabled_.exchange(false)) c10::SetCPUAllocator(c10::GetDefaultCPUAllocator(), /*priority=*/1);
  c.release();
}

bool host_cache_enabled() { return HostCache::instance().enabled_.load(); }

HostCacheStats host_cache_stats() { return HostCache::instance().stats(); }

}  // namespace qlora::kernels

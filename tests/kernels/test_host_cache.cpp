// The CPU tensors' caching allocator (kernels/host_cache.h): size classes, reuse of freed blocks,
// the bound on what it keeps, handing blocks back before taking new memory, threads, and turning
// it off with tensors still alive.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <thread>
#include <vector>

#include "kernels/host_cache.h"

using namespace qlora::kernels;

namespace {

// Enables the cache for one test and leaves the process as it found it.
struct CacheOn {
  explicit CacheOn(uint64_t limit = 0) {
    disable_host_cache();
    enable_host_cache(limit);
  }
  ~CacheOn() { disable_host_cache(); }
};

at::Tensor bytes(int64_t n) { return at::empty({n}, at::kByte); }

}  // namespace

TEST(HostCache, ClassesCoverTheRequestWithinAQuarter) {
  EXPECT_EQ(host_cache_class_size(kMinCachedBytes), kMinCachedBytes);
  size_t prev = 0;
  for (size_t n = kMinCachedBytes; n < (size_t{1} << 34); n = n + n / 7 + 4093) {
    const size_t c = host_cache_class_size(n);
    EXPECT_GE(c, n);
    EXPECT_LE(c, n + n / 4) << n;
    EXPECT_GE(c, prev) << n;  // monotone
    EXPECT_EQ(host_cache_class_size(c), c) << "a class size is its own class";
    prev = c;
  }
  // Four classes per power of two.
  const size_t p = size_t{1} << 22;
  EXPECT_EQ(host_cache_class_size(p + 1), p + p / 4);
  EXPECT_EQ(host_cache_class_size(p + p / 4 + 1), p + p / 2);
  EXPECT_EQ(host_cache_class_size(p + p / 2 + 1), p + 3 * p / 4);
  EXPECT_EQ(host_cache_class_size(p + 3 * p / 4 + 1), 2 * p);
}

TEST(HostCache, AFreedBlockServesTheNextRequestOfItsClass) {
  CacheOn on;
  const int64_t n = 3 << 20;
  void* first = nullptr;
  {
    at::Tensor t = bytes(n);
    first = t.data_ptr();
    t.fill_(7);
  }
  HostCacheStats s = host_cache_stats();
  EXPECT_EQ(s.misses, 1u);
  EXPECT_EQ(s.cached_bytes, host_cache_class_size(n));
  EXPECT_EQ(s.in_use_bytes, 0u);
  {
    at::Tensor t = bytes(n - 1000);  // same class
    EXPECT_EQ(t.data_ptr(), first);
    EXPECT_EQ(host_cache_stats().hits, 1u);
    EXPECT_EQ(host_cache_stats().in_use_bytes, host_cache_class_size(n));
  }
  // Small tensors are not the cache's.
  at::Tensor small = bytes(1000);
  s = host_cache_stats();
  EXPECT_EQ(s.hits + s.misses, 2u);
  // Float tensors are aligned for vector loads.
  at::Tensor f = at::empty({1 << 20}, at::kFloat);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(f.data_ptr()) % 64, 0u);
}

TEST(HostCache, AMissHandsBackIdleBlocksBeforeTakingMemory) {
  CacheOn on;
  { at::Tensor a = bytes(8 << 20), b = bytes(1 << 20); }
  EXPECT_EQ(host_cache_stats().cached_bytes, size_t{9} << 20);
  // A request of another class: at least its size in idle blocks goes back first, largest first,
  // so the 8 MiB block is released and the 1 MiB one kept.
  at::Tensor c = bytes(5 << 20);
  HostCacheStats s = host_cache_stats();
  EXPECT_EQ(s.cached_bytes, size_t{1} << 20);
  EXPECT_EQ(s.in_use_bytes, host_cache_class_size(5 << 20));
}

TEST(HostCache, KeepsNoMoreThanItsLimit) {
  CacheOn on(/*limit=*/size_t{3} << 20);
  {
    at::Tensor a = bytes(2 << 20), b = bytes(2 << 20);
  }  // the second freed block would take the cache past 3 MiB: handed back
  EXPECT_EQ(host_cache_stats().cached_bytes, size_t{2} << 20);
  release_host_cache();
  EXPECT_EQ(host_cache_stats().cached_bytes, 0u);
}

TEST(HostCache, ThreadsAllocateAndFreeSideBySide) {
  CacheOn on;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([t] {
      for (int i = 0; i < 200; ++i) {
        at::Tensor x = at::full({(1 << 18) + 1024 * ((i + t) % 5)}, static_cast<float>(t), at::kFloat);
        at::Tensor y = x * 2;
        ASSERT_EQ(y[7].item<float>(), 2.0f * t);
      }
    });
  for (std::thread& th : threads) th.join();
  const HostCacheStats s = host_cache_stats();
  EXPECT_EQ(s.in_use_bytes, 0u);
  EXPECT_GT(s.hits, s.misses);
}

TEST(HostCache, TensorsOutliveTheCacheBeingTurnedOff) {
  at::Tensor kept;
  {
    CacheOn on;
    kept = at::arange(1 << 20, at::kFloat);
    { at::Tensor idle = bytes(2 << 20); }
  }  // disabled: idle blocks released, the live one stays valid
  EXPECT_FALSE(host_cache_enabled());
  EXPECT_EQ(host_cache_stats().cached_bytes, 0u);
  EXPECT_EQ(kept[12345].item<float>(), 12345.0f);
  kept = at::Tensor();  // freed straight to the system now
  EXPECT_EQ(host_cache_stats().cached_bytes, 0u);
  EXPECT_EQ(host_cache_stats().in_use_bytes, 0u);
  // New tensors come from the default allocator again.
  const uint64_t before = host_cache_stats().misses;
  at::Tensor t = bytes(4 << 20);
  EXPECT_EQ(host_cache_stats().misses, before);
}

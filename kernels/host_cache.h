// A caching allocator for CPU tensors: the memory of a training step's large temporaries is
// reused from step to step instead of being handed back to the system and faulted in again.
//
// Without it, every CPU tensor of 256 KiB or more comes from mmap and goes back on free
// (trainer/common/memory.h `use_returning_heap`), so each step faults in, zeroes and unmaps its
// activations and gradients again: measured on a 125M-parameter Llama (batch 4 x 128, 2 threads),
// a third of the step was kernel time (page faults, page clearing, unmapping). glibc's own
// alternative (a large mmap threshold) keeps the pages but lets the heap fragment, so the peak
// grows from step to step.
//
// How it works: a block of `kMinCachedBytes` or more is rounded up to a size class (four per power
// of two, so at most 25% over, and pages of the tail that are never touched are never resident);
// on free it goes onto its class's free list, and the next request of that class takes it. A
// step allocates the same sizes every step, so after the first step nearly every request is a
// hit. A request that finds its list empty first hands back at least as many idle bytes (largest
// classes first), so the resident memory (bytes in use + cached) rises only when the bytes in use
// pass what the process already held: the peak stays the peak without the cache, also when
// shapes change (variable-length batches, evaluation). Freed bytes beyond `limit` are handed back
// at once. Smaller blocks go to the default CPU allocator. Thread-safe (row shards allocate side by side); no effect on numerics:
// a tensor from `at::empty` was never promised to be zeroed.
#pragma once
#include <cstddef>
#include <cstdint>

namespace qlora::kernels {

struct HostCacheStats {
  uint64_t hits = 0;          // requests served from a free list (since enabled)
  uint64_t misses = 0;        // requests that allocated (since enabled)
  uint64_t cached_bytes = 0;  // bytes on the free lists now
  uint64_t in_use_bytes = 0;  // bytes of cached-size blocks handed out and not yet freed
  uint64_t limit = 0;         // most bytes kept on the free lists
};

// Smallest block the cache handles (smaller ones go to the default allocator).
constexpr size_t kMinCachedBytes = size_t{256} << 10;

// Makes the cache the CPU allocator of every later CPU tensor (c10::SetCPUAllocator); idempotent.
// `limit_bytes` bounds the free bytes it keeps (0: the default, 1 GiB or an eighth of physical
// memory, whichever is smaller). Tensors allocated before stay with their allocator.
void enable_host_cache(uint64_t limit_bytes = 0);

// Hands every free cached block back to the system (blocks in use are unaffected and are
// released on free while the cache is disabled).
void release_host_cache();

// Puts the default CPU allocator back and releases the free blocks; blocks still in use are freed
// to the system when their tensors die.
void disable_host_cache();

bool host_cache_enabled();
HostCacheStats host_cache_stats();

// The size class a request of n bytes (n >= kMinCachedBytes) is rounded up to (exposed for tests).
size_t host_cache_class_size(size_t n);

}  // namespace qlora::kernels

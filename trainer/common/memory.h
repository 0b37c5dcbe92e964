// Process memory: handing freed heap pages back to the system, how much memory the machine can
// still give this process, and a limit on how much it may take.
#pragma once
#include <cstdint>
#include <optional>
#include <string>

namespace qlora {

// Hands the pages of freed temporaries back to the system (glibc's malloc_trim; nothing
// elsewhere). glibc raises its mmap threshold as large blocks are freed, so later multi-MB
// temporaries (the float32 copy of a weight being quantized or merged) come from the heap, and the
// heap keeps their pages after free: measured on an 8-layer model, 220 MB of anonymous memory
// stayed resident beyond the final model without this. Called after each such tensor while a
// checkpoint streams through.
void trim_heap();

// Makes glibc serve every block of 256 KiB or more straight from mmap and unmap it on free, so the
// process's resident memory follows the bytes in use. glibc's default raises that threshold to
// the size of each large block freed (up to 32 MiB), after which a training step's activations
// come from the heap, whose freed pages stay resident: measured with `qlora train` on the CPU,
// the peak RSS of a step was 1.5x the bytes in use (1697 against 1142 MiB on a 50M-parameter
// model, batch 4 x 512), and it grew from step to step. Leaves a threshold the user set with
// MALLOC_MMAP_THRESHOLD_ alone; nothing elsewhere than glibc.
void use_returning_heap();

// Host memory this process can still take without the kernel reclaiming memory it cannot
// reclaim: MemAvailable of /proc/meminfo, lowered to the room left under the cgroup's memory
// limit when one is set (cgroup v2 memory.max - memory.current, or v1 memory.limit_in_bytes -
// memory.usage_in_bytes). `source` says which bound applied. nullopt where neither can be read.
struct HostMemory {
  uint64_t available = 0;
  std::string source;  // "MemAvailable" or "cgroup memory limit"
};
std::optional<HostMemory> host_memory_available();

// Free swap (SwapFree of /proc/meminfo), 0 where it cannot be read.
uint64_t swap_free_bytes();

// Caps the process's data segment (RLIMIT_DATA: heap and private writable mappings) at `bytes`
// beyond what it uses now, so that an allocation past it fails with an error the program can
// report instead of the kernel's OOM killer ending the process with SIGKILL. False (and no
// change) where the limit cannot be set or a sanitizer that reserves shadow memory is built in.
bool limit_process_memory(uint64_t bytes);

// Puts back the limit limit_process_memory replaced (so the error report can allocate).
void lift_process_memory_limit();

}  // namespace qlora

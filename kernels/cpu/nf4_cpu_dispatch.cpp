// Run-time choice of the NF4 CPU kernel table (scalar / avx2 / avx512).
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "kernels/cpu/nf4_cpu_isa.h"

namespace qlora::kernels::cpu {

bool nf4_isa_supported(const char* name) {
  __builtin_cpu_init();
  if (std::strcmp(name, "scalar") == 0) return true;
  if (std::strcmp(name, "avx2") == 0)
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  if (std::strcmp(name, "avx512") == 0)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
  return false;
}

namespace {

// Only called for a supported name: the avx tables' code must never run on a CPU without it.
const Nf4Isa* table_of(const char* name) {
  if (std::strcmp(name, "avx512") == 0) return &nf4_isa_avx512();
  if (std::strcmp(name, "avx2") == 0) return &nf4_isa_avx2();
  return &nf4_isa_scalar();
}

const Nf4Isa* pick_default() {
  if (const char* env = std::getenv("QLORA_CPU_ISA"); env && *env && nf4_isa_supported(env)) return table_of(env);
  for (const char* name : {"avx512", "avx2"})
    if (nf4_isa_supported(name)) return table_of(name);
  return &nf4_isa_scalar();
}

std::atomic<const Nf4Isa*> g_isa{nullptr};

}  // namespace

const Nf4Isa& nf4_isa() {
  const Nf4Isa* p = g_isa.load(std::memory_order_acquire);
  if (!p) {
    p = pick_default();
    g_isa.store(p, std::memory_order_release);
  }
  return *p;
}

bool nf4_isa_select(const char* name) {
  if (!nf4_isa_supported(name)) return false;
  g_isa.store(table_of(name), std::memory_order_release);
  return true;
}

}  // namespace qlora::kernels::cpu

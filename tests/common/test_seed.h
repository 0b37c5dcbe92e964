// A fresh random seed per test process, printed once (with `tag`) so that a failure can be
// replayed: QLORA_TEST_SEED=<seed>. Header-only, no GoogleTest: tests/gpu builds it against
// tests/gpu/minitest too.
#pragma once
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>

namespace qlora::test {

inline uint64_t test_seed(const char* tag) {
  static const uint64_t seed = [tag] {
    uint64_t s;
    if (const char* e = std::getenv("QLORA_TEST_SEED")) {
      s = std::stoull(e);
    } else {
      s = static_cast<uint64_t>(std::random_device{}()) << 32 | std::random_device{}();
    }
    std::printf("[%s] QLORA_TEST_SEED=%llu\n", tag, static_cast<unsigned long long>(s));
    return s;
  }();
  return seed;
}

}  // namespace qlora::test

// main() of the GPU-check test runner (tests/gpu/minitest/gtest/gtest.h).
// Usage: test_gpu [--gtest_filter=SUBSTRING] ; exit code 1 if any test failed.
#include <cstring>

#include "gtest/gtest.h"

int main(int argc, char** argv) {
  std::string filter;
  for (int i = 1; i < argc; ++i)
    if (std::strncmp(argv[i], "--gtest_filter=", 15) == 0) filter = argv[i] + 15;
  int passed = 0, failed = 0, skipped = 0;
  for (const minitest::TestCase& t : minitest::registry()) {
    if (!filter.empty() && t.name.find(filter) == std::string::npos) continue;
    minitest::state() = minitest::State{};
    std::printf("[ RUN      ] %s\n", t.name.c_str());
    std::fflush(stdout);
    try {
      t.fn();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "uncaught exception: %s\n", e.what());
      minitest::state().failed = true;
    }
    if (minitest::state().failed) {
      ++failed;
      std::printf("[  FAILED  ] %s\n", t.name.c_str());
    } else if (minitest::state().skipped) {
      ++skipped;
      std::printf("[  SKIPPED ] %s\n", t.name.c_str());
    } else {
      ++passed;
      std::printf("[       OK ] %s\n", t.name.c_str());
    }
    std::fflush(stdout);
  }
  std::printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
  return failed ? 1 : 0;
}

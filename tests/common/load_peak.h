// Peak resident memory of load_model measured in a child process: the test binary runs itself
// again with an environment variable naming the model, so the peak is the load's own and not the
// test process's history.
#pragma once
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "tests/common/harness.h"
#include "trainer/common/fs.h"
#include "trainer/model/model.h"

namespace qlora::test {

struct LoadPeak {
  uint64_t baseline = 0;    // VmRSS before loading
  uint64_t peak = 0;        // VmHWM after loading
  int64_t model_bytes = 0;  // Model::base_nbytes()
};

// Whether a process's peak RSS is its own program's: not under AddressSanitizer, whose quarantine
// keeps freed memory resident (a load's temporaries would count as held).
inline bool rss_is_measurable() {
#if defined(__SANITIZE_ADDRESS__)
  return false;
#else
  return true;
#endif
}

// Child side: when `env` is set, loads the model it names (NF4, the rest bf16), prints the
// result line for load_peak_in_child and returns true; the test then ends.
inline bool report_load_peak_if_child(const char* env) {
  const char* model = std::getenv(env);
  if (!model) return false;
  at::zeros({1});  // LibTorch's lazy start-up belongs to the baseline
  const uint64_t baseline = fs::proc_status_bytes("VmRSS:");
  model::ModelLoadOptions o;
  o.compute_dtype = at::kBFloat16;
  model::Model m = model::load_model(model, o);
  std::printf("RESULT %llu %llu %lld\n", static_cast<unsigned long long>(baseline),
              static_cast<unsigned long long>(fs::proc_status_bytes("VmHWM:")),
              static_cast<long long>(m.base_nbytes()));
  return true;
}

// Parent side: runs this binary's test `gtest_filter` with `env` = `model` and reads its result
// (ADD_FAILURE when the child fails or prints none).
inline LoadPeak load_peak_in_child(const char* env, const std::filesystem::path& model,
                                   const std::string& gtest_filter) {
  LoadPeak p;
  ProcResult r =
      run(std::string(env) + "=" + quote(model.string()) + " OMP_NUM_THREADS=2 " +
          quote(std::filesystem::read_symlink("/proc/self/exe").string()) + " --gtest_filter=" + gtest_filter);
  const auto pos = r.output.find("RESULT ");
  unsigned long long baseline = 0, peak = 0;
  long long bytes = 0;
  if (r.code != 0 || pos == std::string::npos ||
      std::sscanf(r.output.c_str() + pos, "RESULT %llu %llu %lld", &baseline, &peak, &bytes) != 3) {
    ADD_FAILURE() << "the load-memory child failed:\n" << r.output;
    return p;
  }
  p.baseline = baseline;
  p.peak = peak;
  p.model_bytes = bytes;
  return p;
}

}  // namespace qlora::test

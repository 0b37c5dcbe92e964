// CPU benchmarks of the NF4 kernels, side by side with their natural baselines in one run:
//   dequantize   GB/s of output written by nf4_dequantize_into (DQ statistics, blocksize 64) next
//                to memcpy of the same output bytes (single thread, and split over the same threads);
//                also nf4_dequantize, which allocates (and page-faults in) its output every call
//   linear       nf4_linear (x fp32 [M, K] @ W^T, W NF4+DQ) next to dense fp32 at::matmul on the
//                pre-dequantized weight; M in {1, 16, 512}, (N, K) in {(2048, 2048), (11008, 4096)};
//                likewise nf4_linear_grad_input vs at::matmul(dy, W)
// Plain timer loops (median of repeats after warm-up), JSON to --out (scripts/bench-nf4.sh adds
// the bitsandbytes peer and the machine description). Usage: bench_nf4 [--out FILE] [--quick]
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "kernels/ops.h"

using namespace qlora::kernels;

namespace {

// Median seconds per call over `reps` timed calls (after 2 warm-up calls), each timed call
// repeated until it lasts >= 20 ms.
double median_seconds(const std::function<void()>& fn, int reps) {
  fn();
  fn();
  using clk = std::chrono::steady_clock;
  int inner = 1;
  for (;;) {
    auto t0 = clk::now();
    for (int i = 0; i < inner; ++i) fn();
    const double s = std::chrono::duration<double>(clk::now() - t0).count();
    if (s >= 0.02 || inner >= 1 << 20) break;
    inner *= 2;
  }
  std::vector<double> v;
  for (int r = 0; r < reps; ++r) {
    auto t0 = clk::now();
    for (int i = 0; i < inner; ++i) fn();
    v.push_back(std::chrono::duration<double>(clk::now() - t0).count() / inner);
  }
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  std::string out_path;
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--out") && i + 1 < argc) out_path = argv[++i];
    if (!std::strcmp(argv[i], "--quick")) quick = true;
  }
  const int reps = quick ? 3 : 7;
  at::manual_seed(0);
  const int threads = at::get_num_threads();
  std::string json = "{\n  \"threads\": " + std::to_string(threads) + ",\n  \"cpu_isa\": \"" + cpu_isa_name() +
                     "\",\n  \"dequantize\": [\n";
  std::printf("threads %d, isa %s\n\n%-12s %-5s %9s %9s %12s %12s %7s\n", threads, cpu_isa_name(), "dequantize", "out",
              "ms", "GB/s", "memcpy GB/s", "memcpy(par)", "ratio");
  bool first = true;
  for (auto [rows, cols] : std::vector<std::pair<int64_t, int64_t>>{{4096, 4096}, {11008, 4096}}) {
    NF4Tensor w = nf4_quantize(at::randn({rows, cols}) * 0.02, 64, true);
    for (at::ScalarType t : {at::kFloat, at::kBFloat16, at::kHalf}) {
      at::Tensor out = at::empty({rows, cols}, t).fill_(0);  // pages touched before timing
      at::Tensor src = at::empty({rows, cols}, t).fill_(1);
      const int64_t bytes = out.nbytes();
      const double s_dq = median_seconds([&] { nf4_dequantize_into(w, out); }, reps);
      const double s_alloc = median_seconds([&] { (void)nf4_dequantize(w, t); }, reps);
      char* d = static_cast<char*>(out.data_ptr());
      const char* sp = static_cast<const char*>(src.data_ptr());
      const double s_cp = median_seconds([&] { std::memcpy(d, sp, bytes); }, reps);
      const double s_cpp = median_seconds(
          [&] {
            at::parallel_for(0, bytes, 1 << 20, [&](int64_t a, int64_t b) { std::memcpy(d + a, sp + a, b - a); });
          },
          reps);
      const double bw = bytes / s_dq / 1e9, bw_cp = bytes / s_cp / 1e9, bw_cpp = bytes / s_cpp / 1e9;
      const double best = std::max(bw_cp, bw_cpp);
      const char* tn = t == at::kFloat ? "f32" : t == at::kBFloat16 ? "bf16" : "f16";
      std::printf("%5lldx%-6lld %-5s %9.2f %9.2f %12.2f %12.2f %7.2f\n", (long long)rows, (long long)cols, tn,
                  s_dq * 1e3, bw, bw_cp, bw_cpp, bw / best);
      char buf[512];
      std::snprintf(buf, sizeof buf,
                    "%s    {\"rows\": %lld, \"cols\": %lld, \"out\": \"%s\", \"ms\": %.3f, \"out_GBps\": %.2f, "
                    "\"memcpy_GBps\": %.2f, \"memcpy_parallel_GBps\": %.2f, \"ratio_vs_best_memcpy\": %.3f, "
                    "\"alloc_ms\": %.3f}",
                    first ? "" : ",\n", (long long)rows, (long long)cols, tn, s_dq * 1e3, bw, bw_cp, bw_cpp, bw / best,
                    s_alloc * 1e3);
      json += buf;
      first = false;
    }
  }
  json += "\n  ],\n  \"linear\": [\n";
  std::printf("\n%-18s %10s %10s %7s %10s %10s %7s\n", "linear M,N,K", "nf4 ms", "dense ms", "ratio", "bwd ms",
              "dense ms", "ratio");
  first = true;
  for (auto [N, K] : std::vector<std::pair<int64_t, int64_t>>{{2048, 2048}, {11008, 4096}}) {
    NF4Tensor w = nf4_quantize(at::randn({N, K}) * 0.02, 64, true);
    at::Tensor W = nf4_dequantize(w, at::kFloat);
    for (int64_t M : {1, 16, 512}) {
      at::Tensor x = at::randn({M, K}), dy = at::randn({M, N});
      const double s_f = median_seconds([&] { (void)nf4_linear(x, w); }, reps);
      const double s_fd = median_seconds([&] { (void)at::matmul(x, W.t()); }, reps);
      const double s_b = median_seconds([&] { (void)nf4_linear_grad_input(dy, w); }, reps);
      const double s_bd = median_seconds([&] { (void)at::matmul(dy, W); }, reps);
      std::printf("%4lld,%6lld,%5lld  %10.3f %10.3f %7.2f %10.3f %10.3f %7.2f\n", (long long)M, (long long)N,
                  (long long)K, s_f * 1e3, s_fd * 1e3, s_f / s_fd, s_b * 1e3, s_bd * 1e3, s_b / s_bd);
      char buf[512];
      std::snprintf(buf, sizeof buf,
                    "%s    {\"M\": %lld, \"N\": %lld, \"K\": %lld, \"nf4_ms\": %.4f, \"dense_fp32_ms\": %.4f, "
                    "\"time_ratio\": %.3f, \"nf4_grad_input_ms\": %.4f, \"dense_grad_input_ms\": %.4f, "
                    "\"grad_time_ratio\": %.3f, \"nf4_gflops\": %.1f}",
                    first ? "" : ",\n", (long long)M, (long long)N, (long long)K, s_f * 1e3, s_fd * 1e3, s_f / s_fd,
                    s_b * 1e3, s_bd * 1e3, s_b / s_bd, 2.0 * M * N * K / s_f / 1e9);
      json += buf;
      first = false;
    }
  }
  json += "\n  ]\n}\n";
  if (!out_path.empty()) {
    FILE* f = std::fopen(out_path.c_str(), "w");
    if (!f) return 1;
    std::fputs(json.c_str(), f);
    std::fclose(f);
  }
  return 0;
}

// CPU benchmarks of the NF4 kernels, side by side with their natural baselines in one run:
//   dequantize   GB/s of output written by nf4_dequantize_into (DQ statistics, blocksize 64) next
//                to memcpy of the same output bytes (single thread, and split over the same threads);
//                also nf4_dequantize, which allocates (and page-faults in) its output every call
//   linear       nf4_linear (x fp32 [M, K] @ W^T, W NF4+DQ) next to dense fp32 at::matmul on the
//                pre-dequantized weight; M in {1, 16, 512}, (N, K) in {(2048, 2048), (11008, 4096)};
//                likewise nf4_linear_grad_input vs at::matmul(dy, W)
//   lora_r8      LoRA's four rank-8 products per linear (x A^T, dy B, dy^T h, g^T x) through
//                skinny_mm next to at::mm, on the linear shapes
// Plain timer loops (median of repeats after warm-up), JSON to --out (scripts/bench-nf4.sh adds
// the bitsandbytes peer and the machine description).
// Usage: bench_nf4 [--out FILE] [--quick] [--threads T] [--shape M,N,K ...]
//   --shape (repeatable) runs only the linear and lora_r8 comparisons, on the given shapes (for
//   example the per-shard shapes of a training step: M = rows per shard, N = out_features,
//   K = in_features).
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
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
  std::vector<std::array<int64_t, 3>> shapes;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--out") && i + 1 < argc) out_path = argv[++i];
    if (!std::strcmp(argv[i], "--quick")) quick = true;
    if (!std::strcmp(argv[i], "--threads") && i + 1 < argc) at::set_num_threads(std::atoi(argv[++i]));
    if (!std::strcmp(argv[i], "--shape") && i + 1 < argc) {
      long long m = 0, n = 0, k = 0;
      if (std::sscanf(argv[++i], "%lld,%lld,%lld", &m, &n, &k) != 3 || m < 1 || n < 1 || k < 1) {
        std::fprintf(stderr, "bench_nf4: --shape expects M,N,K (positive integers), got '%s'\n", argv[i]);
        return 2;
      }
      shapes.push_back({m, n, k});
    }
  }
  const bool only_linear = !shapes.empty();
  if (shapes.empty())
    for (int64_t M : {1, 16, 512})
      for (auto [N, K] : std::vector<std::pair<int64_t, int64_t>>{{2048, 2048}, {11008, 4096}})
        shapes.push_back({M, N, K});
  const int reps = quick ? 3 : 7;
  at::manual_seed(0);
  const int threads = at::get_num_threads();
  std::string json = "{\n  \"threads\": " + std::to_string(threads) + ",\n  \"cpu_isa\": \"" + cpu_isa_name() +
                     "\",\n  \"dequantize\": [\n";
  std::printf("threads %d, isa %s\n\n%-12s %-5s %9s %9s %12s %12s %7s\n", threads, cpu_isa_name(), "dequantize", "out",
              "ms", "GB/s", "memcpy GB/s", "memcpy(par)", "ratio");
  bool first = true;
  for (auto [rows, cols] : only_linear ? std::vector<std::pair<int64_t, int64_t>>{}
                                       : std::vector<std::pair<int64_t, int64_t>>{{4096, 4096}, {11008, 4096}}) {
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
  std::printf("\n%-18s %10s %10s %7s %10s %10s %7s %8s\n", "linear M,N,K", "nf4 ms", "dense ms", "ratio", "bwd ms",
              "dense ms", "ratio", "GFLOP/s");
  first = true;
  for (auto [M, N, K] : shapes) {
    NF4Tensor w = nf4_quantize(at::randn({N, K}) * 0.02, 64, true);
    at::Tensor W = nf4_dequantize(w, at::kFloat);
    at::Tensor x = at::randn({M, K}), dy = at::randn({M, N});
    const double s_f = median_seconds([&] { (void)nf4_linear(x, w); }, reps);
    const double s_fd = median_seconds([&] { (void)at::matmul(x, W.t()); }, reps);
    const double s_b = median_seconds([&] { (void)nf4_linear_grad_input(dy, w); }, reps);
    const double s_bd = median_seconds([&] { (void)at::matmul(dy, W); }, reps);
    std::printf("%4lld,%6lld,%5lld  %10.3f %10.3f %7.2f %10.3f %10.3f %7.2f %8.1f\n", (long long)M, (long long)N,
                (long long)K, s_f * 1e3, s_fd * 1e3, s_f / s_fd, s_b * 1e3, s_bd * 1e3, s_b / s_bd,
                4.0 * M * N * K / (s_f + s_b) / 1e9);
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
  // LoRA's rank-8 products on the same shapes (x [M, K], dy [M, N]): h = x A^T, g = dy B,
  // dB = dy^T h, dA = g^T x, through skinny_mm next to at::mm.
  json += "\n  ],\n  \"lora_r8\": [\n";
  std::printf("\n%-18s %12s %12s %7s\n", "lora r8 M,N,K", "skinny us", "at::mm us", "ratio");
  first = true;
  for (auto [M, N, K] : shapes) {
    const int64_t r = 8;
    at::Tensor x = at::randn({M, K}), dy = at::randn({M, N}), A = at::randn({r, K}), B = at::randn({N, r});
    at::Tensor h = at::randn({M, r}), g = at::randn({M, r});
    const double s_sk = median_seconds(
        [&] {
          (void)skinny_mm(x, A.t());
          (void)skinny_mm(dy, B, 2.0);
          (void)skinny_mm(dy.t(), h, 2.0);
          (void)skinny_mm(x.t(), g);
        },
        reps);
    const double s_mm = median_seconds(
        [&] {
          (void)at::mm(x, A.t());
          (void)at::mm(dy, B).mul_(2.0);
          (void)at::mm(dy.t(), h).mul_(2.0);
          (void)at::mm(g.t(), x);
        },
        reps);
    std::printf("%4lld,%6lld,%5lld  %12.1f %12.1f %7.2f\n", (long long)M, (long long)N, (long long)K, s_sk * 1e6,
                s_mm * 1e6, s_sk / s_mm);
    char buf[256];
    std::snprintf(buf, sizeof buf,
                  "%s    {\"M\": %lld, \"N\": %lld, \"K\": %lld, \"skinny_us\": %.1f, \"at_mm_us\": %.1f}",
                  first ? "" : ",\n", (long long)M, (long long)N, (long long)K, s_sk * 1e6, s_mm * 1e6);
    json += buf;
    first = false;
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

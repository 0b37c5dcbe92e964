// GPU benchmarks of the NF4 kernels (run by scripts/gpu-check.sh on a GPU machine).
//   dequantize   GB/s (packed + statistics read, output written) next to a device-to-device copy
//                of the same output bytes (GB/s = read + written), bf16 and f32 outputs
//   linear       nf4_linear (x bf16 [M, K] @ W^T, W NF4 with double quantization) next to bf16
//                cuBLAS (at::matmul) on the same weight pre-dequantized, M in {1, 16, 256, 4096},
//                K = 4096, N in {4096, 14336}; likewise nf4_linear_grad_input vs matmul(dy, W).
//                For M <= 16 also the weight bytes per second as a fraction of the copy bandwidth.
// Every timed loop runs inside a CUDA graph (no launch gaps between the kernels; falls back to
// plain launches if capture fails) over enough weight copies that they do not fit in L2 (no
// warm-cache numbers). Usage: bench_gpu [--out FILE.json] [--quick]
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "kernels/ops.h"

#ifndef QLORA_WITH_CUDA
int main() {
  std::printf("bench_gpu: built without CUDA\n");
  return 0;
}
#else
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "kernels/cuda/nf4_cuda.h"

using namespace qlora::kernels;

namespace {

struct Timing {
  double us = 0;  // per call
  bool graph = false;
};

// Mean time of one call of fn(i) (i = 0..iters-1), measured with CUDA events around `iters`
// calls captured in one CUDA graph (after one warm-up replay).
Timing time_calls(const std::function<void(int)>& fn, int iters) {
  for (int i = 0; i < 3; ++i) fn(i);  // warm-up: lazy init, allocator, cuBLAS workspace
  at::cuda::device_synchronize();
  Timing t;
  c10::cuda::CUDAStream stream = c10::cuda::getStreamFromPool();
  c10::cuda::CUDAStreamGuard guard(stream);
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  try {
    at::cuda::CUDAGraph graph;
    graph.capture_begin();
    for (int i = 0; i < iters; ++i) fn(i);
    graph.capture_end();
    graph.replay();
    stream.synchronize();
    cudaEventRecord(a, stream);
    graph.replay();
    cudaEventRecord(b, stream);
    cudaEventSynchronize(b);
    t.graph = true;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_gpu: graph capture failed (%s); timing plain launches\n", e.what());
    cudaGetLastError();
    at::cuda::device_synchronize();
    cudaEventRecord(a, stream);
    for (int i = 0; i < iters; ++i) fn(i);
    cudaEventRecord(b, stream);
    cudaEventSynchronize(b);
  }
  float ms = 0;
  cudaEventElapsedTime(&ms, a, b);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  t.us = 1000.0 * ms / iters;
  return t;
}

int64_t l2_bytes() {
  int dev = 0, v = 0;
  cudaGetDevice(&dev);
  cudaDeviceGetAttribute(&v, cudaDevAttrL2CacheSize, dev);
  return v;
}

// Copies needed so that cycling through them streams from memory: > 2x L2 in total.
int copies_for(int64_t bytes) {
  const int64_t need = 2 * l2_bytes() / std::max<int64_t>(bytes, 1) + 1;
  return static_cast<int>(std::min<int64_t>(std::max<int64_t>(need, 1), 16));
}

cuda::Nf4Stats stats_of(const NF4Tensor& w, const at::Tensor& map8) {
  cuda::Nf4Stats st;
  st.qabsmax = w.absmax.data_ptr<uint8_t>();
  st.nested = w.nested_absmax.data_ptr<float>();
  st.map8 = map8.data_ptr<float>();
  st.offset = w.nested_offset;
  return st;
}

std::string json_escape(const std::string& s) {
  std::string o;
  for (char c : s) o += (c == '"' || c == '\\') ? std::string("\\") + c : std::string(1, c);
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  std::string out_path;
  bool quick = false;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--out") && i + 1 < argc) out_path = argv[++i];
    if (!std::strcmp(argv[i], "--quick")) quick = true;
  }
  int ndev = 0;
  if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev == 0) {
    std::printf("bench_gpu: no CUDA device\n");
    return 0;
  }
  const at::Device dev(at::kCUDA, 0);
  c10::cuda::CUDAGuard guard(dev);
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  const at::Tensor map8 = dynamic_map(true).to(dev);
  at::manual_seed(0);
  std::string json = "{\n  \"device\": \"" + json_escape(prop.name) +
                     "\",\n  \"sm_count\": " + std::to_string(prop.multiProcessorCount) +
                     ",\n  \"l2_bytes\": " + std::to_string(l2_bytes()) +
                     ",\n  \"cuda_runtime\": " + std::to_string(CUDART_VERSION) + ",\n";

  // ---- dequantize vs D2D copy ------------------------------------------------------------------
  std::printf("\n%-14s %-5s %10s %10s %10s %10s %7s\n", "dequantize", "out", "us", "GB/s", "copy us", "copy GB/s",
              "ratio");
  json += "  \"dequantize\": [\n";
  double copy_bw_ref = 0;  // GB/s of the largest copy: the memory bandwidth reference for gemv
  const std::vector<std::pair<int64_t, int64_t>> dq_shapes = {{4096, 4096}, {14336, 4096}, {65536, 4096}};
  bool first = true;
  for (auto [rows, cols] : dq_shapes) {
    const int64_t n = rows * cols;
    NF4Tensor w = nf4_quantize(at::randn({rows, cols}).mul_(0.02), 64, true).to(dev);
    for (at::ScalarType t : {at::kBFloat16, at::kFloat}) {
      const int64_t out_bytes = n * (t == at::kFloat ? 4 : 2);
      const int64_t in_bytes = w.nbytes();
      const int R = copies_for(out_bytes + in_bytes);
      std::vector<NF4Tensor> ws(R, w);
      for (int r = 1; r < R; ++r) {
        ws[r].packed = w.packed.clone();
        ws[r].absmax = w.absmax.clone();
        ws[r].nested_absmax = w.nested_absmax.clone();
      }
      std::vector<at::Tensor> outs, srcs;
      for (int r = 0; r < R; ++r) {
        outs.push_back(at::empty({n}, at::TensorOptions().dtype(t).device(dev)));
        srcs.push_back(at::empty({n}, at::TensorOptions().dtype(t).device(dev)).fill_(1));
      }
      const cuda::OutType ot = t == at::kFloat ? cuda::OutType::F32 : cuda::OutType::BF16;
      const int iters = quick ? 10 : 50;
      Timing dq = time_calls(
          [&](int i) {
            const NF4Tensor& x = ws[i % R];
            const cuda::Nf4Stats st = stats_of(x, map8);
            cuda::nf4_dequantize(x.packed.data_ptr<uint8_t>(), nullptr, st.qabsmax, st.nested, st.map8, st.offset, n,
                                 64, outs[i % R].data_ptr(), ot, at::cuda::getCurrentCUDAStream());
          },
          iters);
      Timing cp = time_calls(
          [&](int i) {
            cudaMemcpyAsync(outs[i % R].data_ptr(), srcs[(i + 1) % R].data_ptr(), out_bytes, cudaMemcpyDeviceToDevice,
                            at::cuda::getCurrentCUDAStream());
          },
          iters);
      const double dq_bw = (in_bytes + out_bytes) / dq.us / 1e3, cp_bw = 2.0 * out_bytes / cp.us / 1e3;
      copy_bw_ref = std::max(copy_bw_ref, cp_bw);
      const char* tn = t == at::kFloat ? "f32" : "bf16";
      std::printf("%6lldx%-7lld %-5s %10.1f %10.0f %10.1f %10.0f %7.2f\n", (long long)rows, (long long)cols, tn, dq.us,
                  dq_bw, cp.us, cp_bw, dq_bw / cp_bw);
      char buf[512];
      std::snprintf(
          buf, sizeof buf,
          "%s    {\"rows\": %lld, \"cols\": %lld, \"out\": \"%s\", \"dequant_us\": %.2f, \"dequant_GBps\": %.1f, "
          "\"copy_us\": %.2f, \"copy_GBps\": %.1f, \"bw_ratio\": %.3f, \"copies\": %d, \"graph\": %s}",
          first ? "" : ",\n", (long long)rows, (long long)cols, tn, dq.us, dq_bw, cp.us, cp_bw, dq_bw / cp_bw, R,
          dq.graph ? "true" : "false");
      json += buf;
      first = false;
    }
  }
  json += "\n  ],\n";

  // ---- linear vs cuBLAS bf16 on the pre-dequantized weight --------------------------------------
  std::printf("\n%-22s %10s %10s %7s %10s %7s %10s %10s %7s\n", "linear (bf16) M,N,K", "nf4 us", "cublas us", "speed",
              "W GB/s", "of BW", "bwd us", "cublas us", "speed");
  json += "  \"linear\": [\n";
  first = true;
  const int64_t K = 4096;
  for (int64_t N : {int64_t(4096), int64_t(14336)}) {
    NF4Tensor w = nf4_quantize(at::randn({N, K}).mul_(0.02), 64, true).to(dev);
    at::Tensor wd = nf4_dequantize(w, at::kBFloat16);
    for (int64_t M : {int64_t(1), int64_t(16), int64_t(256), int64_t(4096)}) {
      if (quick && M == 4096 && N == 14336) continue;
      const int64_t wbytes = w.nbytes();
      const int R = M <= 16 ? copies_for(wbytes) : std::min(copies_for(N * K * 2), 4);
      std::vector<NF4Tensor> ws(R);
      std::vector<at::Tensor> wds(R);
      for (int r = 0; r < R; ++r) {
        ws[r] = w;
        ws[r].packed = w.packed.clone();
        ws[r].absmax = w.absmax.clone();
        ws[r].nested_absmax = w.nested_absmax.clone();
        wds[r] = wd.clone();
      }
      at::Tensor x = at::randn({M, K}, at::TensorOptions().dtype(at::kBFloat16).device(dev));
      at::Tensor dy = at::randn({M, N}, at::TensorOptions().dtype(at::kBFloat16).device(dev));
      const int iters = quick ? 5 : (M >= 256 ? 20 : 100);
      Timing f = time_calls([&](int i) { (void)nf4_linear(x, ws[i % R]); }, iters);
      Timing fd = time_calls([&](int i) { (void)at::matmul(x, wds[i % R].t()); }, iters);
      Timing b = time_calls([&](int i) { (void)nf4_linear_grad_input(dy, ws[i % R]); }, iters);
      Timing bd = time_calls([&](int i) { (void)at::matmul(dy, wds[i % R]); }, iters);
      const double wbw = wbytes / f.us / 1e3;
      std::printf("%5lld,%6lld,%5lld        %10.1f %10.1f %7.2f %10.0f %6.0f%% %10.1f %10.1f %7.2f\n", (long long)M,
                  (long long)N, (long long)K, f.us, fd.us, fd.us / f.us, wbw, 100 * wbw / copy_bw_ref, b.us, bd.us,
                  bd.us / b.us);
      char buf[640];
      std::snprintf(buf, sizeof buf,
                    "%s    {\"M\": %lld, \"N\": %lld, \"K\": %lld, \"nf4_us\": %.2f, \"cublas_bf16_us\": %.2f, "
                    "\"speed_vs_cublas\": %.3f, \"weight_GBps\": %.1f, \"weight_bw_fraction_of_copy\": %.3f, "
                    "\"nf4_grad_input_us\": %.2f, \"cublas_grad_input_us\": %.2f, \"grad_speed_vs_cublas\": %.3f, "
                    "\"tflops_nf4\": %.1f, \"graph\": %s}",
                    first ? "" : ",\n", (long long)M, (long long)N, (long long)K, f.us, fd.us, fd.us / f.us, wbw,
                    wbw / copy_bw_ref, b.us, bd.us, bd.us / b.us, 2.0 * M * N * K / f.us / 1e6,
                    f.graph ? "true" : "false");
      json += buf;
      first = false;
    }
  }
  json += "\n  ],\n  \"copy_GBps_reference\": " + std::to_string(copy_bw_ref) + "\n}\n";
  if (!out_path.empty()) {
    FILE* fo = std::fopen(out_path.c_str(), "w");
    if (!fo) {
      std::fprintf(stderr, "bench_gpu: cannot write %s\n", out_path.c_str());
      return 1;
    }
    std::fputs(json.c_str(), fo);
    std::fclose(fo);
    std::printf("\nwrote %s\n", out_path.c_str());
  } else {
    std::fputs(json.c_str(), stdout);
  }
  return 0;
}
#endif

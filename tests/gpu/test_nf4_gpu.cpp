// Every NF4 CUDA kernel against its CPU twin (ggml's test-backend-ops idea): fresh random inputs
// each run (seed printed; QLORA_TEST_SEED replays), outputs poisoned with NaN before each launch so
// an element a kernel forgets to write cannot pass. Skips without a CUDA device.
//   dequantize          bit for bit (f32 / bf16 / fp16; DQ and plain statistics; aligned or not)
//   gemv (y = x W^T)    relative norm vs the CPU linear (summation order differs)
//   gemv_t (dx = dy W)  likewise, workspace poisoned too
//   nf4_linear / nf4_linear_grad_input through the at::Tensor API (fused and dequant+cuBLAS paths)
//   hashed_dropout (LoRA dropout) on a CUDA tensor bit for bit
// Builds against GoogleTest or, for scripts/gpu-check.sh, tests/gpu/minitest.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <string>

#include "kernels/ops.h"
#include "tests/common/test_seed.h"
#ifdef QLORA_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>

#include "kernels/cuda/nf4_cuda.h"
#endif

using namespace qlora::kernels;

namespace {

bool have_gpu() {
#ifdef QLORA_WITH_CUDA
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
#else
  return false;
#endif
}

uint64_t test_seed() { return qlora::test::test_seed("nf4_gpu"); }

at::Generator gen(uint64_t salt) {
  return at::make_generator<at::CPUGeneratorImpl>(test_seed() ^ (salt * 0x9E3779B97F4A7C15ull));
}

double rel_err(const at::Tensor& a, const at::Tensor& ref) {
  at::Tensor ad = a.cpu().to(at::kDouble), rd = ref.cpu().to(at::kDouble);
  const double den = rd.norm().item<double>();
  return (ad - rd).norm().item<double>() / (den > 0 ? den : 1.0);
}

double tol_for(at::ScalarType t) { return t == at::kFloat ? 1e-5 : t == at::kBFloat16 ? 1e-2 : 2e-3; }

// A weight with some edge blocks (all-zero, tiny, large) among normal ones. `large` scales the
// third block: 1e30 for dequantize (inf in fp16 on both sides), 100 for the products (whose fp16
// outputs must stay finite to be compared).
at::Tensor make_weight(int64_t N, int64_t K, at::Generator& g, double large = 100.0) {
  at::Tensor w = at::randn({N, K}, g) * 0.02;
  at::Tensor flat = w.view(-1);
  const int64_t n = flat.numel();
  if (n >= 256) {
    flat.narrow(0, 0, 64).zero_();
    flat.narrow(0, 64, 64).mul_(1e-30);
    flat.narrow(0, 128, 64).mul_(large);
  }
  return w;
}

#ifdef QLORA_WITH_CUDA
struct GpuWeight {
  NF4Tensor cpu, gpu;
  at::Tensor map8;
  cuda::Nf4Stats stats() const {
    cuda::Nf4Stats st;
    if (gpu.double_quant()) {
      st.qabsmax = gpu.absmax.data_ptr<uint8_t>();
      st.nested = gpu.nested_absmax.data_ptr<float>();
      st.map8 = map8.data_ptr<float>();
      st.offset = gpu.nested_offset;
    } else {
      st.absmax = gpu.absmax.data_ptr<float>();
    }
    return st;
  }
};

GpuWeight quantize_both(const at::Tensor& w, int64_t bs, bool dq) {
  GpuWeight r;
  r.cpu = nf4_quantize(w, bs, dq);
  r.gpu = r.cpu.to(at::Device(at::kCUDA, 0));
  r.map8 = dynamic_map(true).to(at::Device(at::kCUDA, 0));
  return r;
}

cuda::OutType out_type(at::ScalarType t) {
  return t == at::kFloat ? cuda::OutType::F32 : t == at::kBFloat16 ? cuda::OutType::BF16 : cuda::OutType::F16;
}

at::Tensor poisoned(at::IntArrayRef shape, at::ScalarType t) {
  return at::full(shape, std::nan(""), at::TensorOptions().dtype(t).device(at::kCUDA, 0));
}

bool bits_equal(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor x = a.cpu().contiguous(), y = b.cpu().contiguous();
  if (x.sizes() != y.sizes() || x.scalar_type() != y.scalar_type()) return false;
  const at::ScalarType bits = x.element_size() == 4 ? at::kInt : at::kShort;
  return at::equal(x.view(bits), y.view(bits));
}

const at::ScalarType kTypes[] = {at::kFloat, at::kBFloat16, at::kHalf};
#endif

}  // namespace

TEST(Nf4Gpu, DequantizeMatchesCpuTwinBitForBit) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
#ifdef QLORA_WITH_CUDA
  at::Generator g = gen(1);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  int checked = 0;
  for (int64_t bs : {32, 64, 128, 256, 512, 1024, 2048, 4096}) {
    for (int64_t n : {int64_t(1), int64_t(31), int64_t(33), bs * 3, bs * 7 + 19, int64_t(4096 * 13 + 5)}) {
      for (bool dq : {true, false}) {
        GpuWeight w = quantize_both(make_weight(1, n, g, 1e30), bs, dq);
        for (at::ScalarType t : kTypes) {
          SCOPED_TRACE("bs=" + std::to_string(bs) + " n=" + std::to_string(n) + " dq=" + std::to_string(dq) + " " +
                       c10::toString(t));
          at::Tensor ref = nf4_dequantize(w.cpu, t).view(-1);
          // aligned buffers
          at::Tensor out = poisoned({n}, t);
          const cuda::Nf4Stats st = w.stats();
          ASSERT_EQ(cuda::nf4_dequantize(w.gpu.packed.data_ptr<uint8_t>(), st.absmax, st.qabsmax, st.nested, st.map8,
                                         st.offset, n, static_cast<int>(bs), out.data_ptr(), out_type(t), stream),
                    cudaSuccess);
          ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
          EXPECT_TRUE(bits_equal(out, ref)) << "aligned";
          // packed and output both off 16-byte alignment: the per-byte kernel
          at::Tensor pk = at::empty({w.gpu.packed.numel() + 1}, w.gpu.packed.options());
          pk.narrow(0, 1, w.gpu.packed.numel()).copy_(w.gpu.packed);
          at::Tensor ob = poisoned({n + 1}, t);
          ASSERT_EQ(
              cuda::nf4_dequantize(pk.data_ptr<uint8_t>() + 1, st.absmax, st.qabsmax, st.nested, st.map8, st.offset, n,
                                   static_cast<int>(bs), ob.narrow(0, 1, n).data_ptr(), out_type(t), stream),
              cudaSuccess);
          EXPECT_TRUE(bits_equal(ob.narrow(0, 1, n), ref)) << "unaligned";
          // the at::Tensor API
          EXPECT_TRUE(bits_equal(nf4_dequantize(w.gpu, t).view(-1), ref)) << "API";
          ++checked;
        }
      }
    }
  }
  EXPECT_EQ(checked, 8 * 6 * 2 * 3);
#endif
}

TEST(Nf4Gpu, GemvMatchesCpuTwin) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
#ifdef QLORA_WITH_CUDA
  at::Generator g = gen(2);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  struct Shape {
    int64_t N, K, bs;
    bool dq;
  };
  const Shape shapes[] = {{1, 32, 32, true},     {7, 64, 64, false},           {300, 96, 32, true},
                          {129, 4096, 64, true}, {64, 1024 + 32, 4096, false}, {33, 4096 + 1024, 128, true}};
  for (const Shape& s : shapes) {
    GpuWeight w = quantize_both(make_weight(s.N, s.K, g), s.bs, s.dq);
    for (int M : {1, 2, 3, 4, 5, 8, 9, 16}) {
      for (at::ScalarType t : kTypes) {
        SCOPED_TRACE("N=" + std::to_string(s.N) + " K=" + std::to_string(s.K) + " M=" + std::to_string(M) + " " +
                     c10::toString(t));
        at::Tensor x = at::randn({M, s.K}, g).to(t);
        at::Tensor ref = nf4_linear(x, w.cpu);
        at::Tensor xg = x.cuda();
        ASSERT_TRUE(cuda::nf4_gemv_supported(M, s.K, w.gpu.packed.data_ptr(), xg.data_ptr()));
        at::Tensor y = poisoned({M, s.N}, t);
        ASSERT_EQ(cuda::nf4_gemv(w.gpu.packed.data_ptr<uint8_t>(), w.stats(), static_cast<int>(s.bs), s.N, s.K,
                                 xg.data_ptr(), M, y.data_ptr(), out_type(t), stream),
                  cudaSuccess);
        ASSERT_FALSE(at::isnan(y).any().item<bool>()) << "unwritten outputs";
        EXPECT_LT(rel_err(y, ref), tol_for(t));
      }
    }
  }
#endif
}

TEST(Nf4Gpu, GemvTransposedMatchesCpuTwin) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
#ifdef QLORA_WITH_CUDA
  at::Generator g = gen(3);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  struct Shape {
    int64_t N, K, bs;
    bool dq;
  };
  const Shape shapes[] = {{1, 8, 32, true},      {7, 64, 64, false},      {300, 104, 32, true},
                          {129, 4096, 64, true}, {1000, 264, 128, false}, {33, 4096 + 1024, 4096, true}};
  for (const Shape& s : shapes) {
    GpuWeight w = quantize_both(make_weight(s.N, s.K, g), s.bs, s.dq);
    for (int M : {1, 2, 3, 4, 5, 8, 9, 16}) {
      for (at::ScalarType t : kTypes) {
        SCOPED_TRACE("N=" + std::to_string(s.N) + " K=" + std::to_string(s.K) + " M=" + std::to_string(M) + " " +
                     c10::toString(t));
        at::Tensor dy = at::randn({M, s.N}, g).to(t);
        at::Tensor ref = nf4_linear_grad_input(dy, w.cpu);
        at::Tensor dyg = dy.cuda();
        ASSERT_TRUE(cuda::nf4_gemv_t_supported(M, s.K, w.gpu.packed.data_ptr()));
        const int splits = cuda::nf4_gemv_t_splits(s.N, s.K);
        at::Tensor ws = poisoned({splits * M * s.K}, at::kFloat);
        at::Tensor dx = poisoned({M, s.K}, t);
        ASSERT_EQ(cuda::nf4_gemv_t(w.gpu.packed.data_ptr<uint8_t>(), w.stats(), static_cast<int>(s.bs), s.N, s.K,
                                   dyg.data_ptr(), M, dx.data_ptr(), out_type(t), ws.data_ptr<float>(), splits, stream),
                  cudaSuccess);
        ASSERT_FALSE(at::isnan(dx).any().item<bool>()) << "unwritten outputs";
        EXPECT_LT(rel_err(dx, ref), tol_for(t));
      }
    }
  }
#endif
}

// The at::Tensor API on CUDA: fused path (M <= 16, K % 32 == 0), fallback for other K, and the
// dequantize + cuBLAS path for large M; batched leading dimensions.
TEST(Nf4Gpu, LinearOpsMatchCpuTwin) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
#ifdef QLORA_WITH_CUDA
  at::Generator g = gen(4);
  struct Shape {
    int64_t N, K, bs;
    bool dq;
  };
  const Shape shapes[] = {{256, 512, 64, true}, {96, 72, 32, false}, {500, 1000, 64, true}};
  for (const Shape& s : shapes) {
    GpuWeight w = quantize_both(make_weight(s.N, s.K, g), s.bs, s.dq);
    for (int64_t M : {1, 7, 16, 17, 300}) {
      for (at::ScalarType t : kTypes) {
        SCOPED_TRACE("N=" + std::to_string(s.N) + " K=" + std::to_string(s.K) + " M=" + std::to_string(M) + " " +
                     c10::toString(t));
        at::Tensor x = at::randn({1, M, s.K}, g).to(t);
        at::Tensor y = nf4_linear(x.cuda(), w.gpu);
        EXPECT_EQ(y.scalar_type(), t);
        EXPECT_EQ(y.dim(), 3);
        EXPECT_EQ(y.size(2), s.N);
        EXPECT_LT(rel_err(y, nf4_linear(x, w.cpu)), tol_for(t));
        at::Tensor dy = at::randn({1, M, s.N}, g).to(t);
        at::Tensor dx = nf4_linear_grad_input(dy.cuda(), w.gpu);
        EXPECT_EQ(dx.size(2), s.K);
        EXPECT_LT(rel_err(dx, nf4_linear_grad_input(dy, w.cpu)), tol_for(t));
      }
    }
  }
#endif
}

TEST(Nf4Gpu, QuantizeOnGpuTensorEqualsCpu) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
#ifdef QLORA_WITH_CUDA
  at::Generator g = gen(5);
  at::Tensor w = at::randn({64, 192}, g).to(at::kBFloat16);
  NF4Tensor a = nf4_quantize(w, 64, true), b = nf4_quantize(w.cuda(), 64, true);
  EXPECT_TRUE(b.packed.is_cuda());
  EXPECT_TRUE(at::equal(a.packed, b.packed.cpu()));
  EXPECT_TRUE(at::equal(a.absmax, b.absmax.cpu()));
  EXPECT_TRUE(at::equal(a.nested_absmax, b.nested_absmax.cpu()));
  EXPECT_TRUE(bits_equal(nf4_absmax(b), nf4_absmax(a)));
#endif
}

// LoRA dropout on a CUDA tensor takes the tensor-op path; its mask and output must be the CPU
// kernel's bit for bit (the run-time dropout of a GPU training step is this code).
TEST(DropoutGpu, HashedDropoutMatchesCpuBitForBit) {
  if (!have_gpu()) GTEST_SKIP() << "no CUDA device";
#ifdef QLORA_WITH_CUDA
  at::Generator g = gen(6);
  at::Tensor x = at::randn({37, 1000}, g);
  const uint64_t seed = test_seed() ^ 0xD0;
  at::Tensor cpu = hashed_dropout(x, 0.1, seed);
  at::Tensor gpu = hashed_dropout(x.cuda(), 0.1, seed);
  EXPECT_TRUE(gpu.is_cuda());
  EXPECT_TRUE(bits_equal(gpu.cpu(), cpu));
  at::Tensor acc = at::randn({37, 1000}, g);
  at::Tensor acc_gpu = acc.cuda();
  hashed_dropout_add_(acc, x, 0.1, seed);
  hashed_dropout_add_(acc_gpu, x.cuda(), 0.1, seed);
  EXPECT_TRUE(bits_equal(acc_gpu.cpu(), acc));
#endif
}

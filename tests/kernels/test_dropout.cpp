// LoRA's counter-based dropout (kernels/dropout.h): every instruction-set table against the
// per-element definition (including runs that cross a 2^32 index boundary), the at::Tensor API
// against the tensor-op mask, independence from the thread count, and the mask's statistics.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "kernels/cpu/nf4_cpu_isa.h"
#include "kernels/dropout.h"
#include "kernels/ops.h"
#include "tests/common/test_seed.h"

using namespace qlora;
using namespace qlora::kernels;

namespace {

uint64_t test_seed() { return qlora::test::test_seed("dropout"); }

bool same_bits(const at::Tensor& a, const at::Tensor& b) {
  return a.sizes() == b.sizes() && a.scalar_type() == b.scalar_type() &&
         std::memcmp(a.contiguous().data_ptr(), b.contiguous().data_ptr(), a.nbytes()) == 0;
}

struct IsaGuard {
  std::string saved = cpu::nf4_isa().name;
  ~IsaGuard() { cpu::nf4_isa_select(saved.c_str()); }
};

}  // namespace

TEST(HashedDropout, EveryTableMatchesThePerElementDefinition) {
  std::mt19937_64 rng(test_seed());
  int tables = 0;
  for (const char* name : {"scalar", "avx2", "avx512"}) {
    if (!cpu::nf4_isa_supported(name)) {
      std::printf("[ SKIPPED  ] %s: this CPU lacks it\n", name);
      continue;
    }
    ++tables;
    const cpu::Nf4Isa& isa = std::string(name) == "scalar" ? cpu::nf4_isa_scalar()
                             : std::string(name) == "avx2" ? cpu::nf4_isa_avx2()
                                                           : cpu::nf4_isa_avx512();
    for (int rep = 0; rep < 60; ++rep) {
      const int64_t n = std::uniform_int_distribution<int64_t>(1, 3000)(rng);
      // Start indices anywhere, some just below a multiple of 2^32 (the run splits there).
      uint64_t i0 = rng() >> 20;
      if (rep % 3 == 0) i0 = (uint64_t{1} << 32) * (1 + rep % 5) - std::uniform_int_distribution<uint64_t>(0, n)(rng);
      const uint64_t seed = rng();
      const double p = std::uniform_real_distribution<double>(0.0, 0.95)(rng);
      const uint32_t thr = dropout::threshold(p);
      const float scale = static_cast<float>(1.0 / (1.0 - p));
      std::vector<float> x(n), acc(n), out(n, NAN), sum(n);
      std::normal_distribution<float> nd;
      for (int64_t j = 0; j < n; ++j) {
        x[j] = nd(rng);
        acc[j] = nd(rng);
      }
      sum = acc;
      isa.dropout(x.data(), i0, n, seed, thr, scale, out.data(), false);
      isa.dropout(x.data(), i0, n, seed, thr, scale, sum.data(), true);
      for (int64_t j = 0; j < n; ++j) {
        const bool keep = dropout::bits(seed, i0 + static_cast<uint64_t>(j)) >= thr;
        const float want = keep ? x[j] * scale : 0.0f;
        ASSERT_EQ(std::memcmp(&out[j], &want, 4), 0) << name << " element " << j << " of " << n << " from " << i0;
        const float want_sum = acc[j] + want;
        ASSERT_EQ(std::memcmp(&sum[j], &want_sum, 4), 0) << name << " accumulate, element " << j;
      }
    }
  }
  EXPECT_GE(tables, 1);
}

TEST(HashedDropout, ApiMatchesTensorOpMaskOnEveryTable) {
  IsaGuard guard;
  at::manual_seed(static_cast<int64_t>(test_seed() & 0x7FFFFFFF));
  const uint64_t seed = test_seed() * 3 + 1;
  for (const char* name : {"scalar", "avx2", "avx512"}) {
    if (!cpu::nf4_isa_select(name)) continue;
    for (double p : {0.05, 0.5, 0.9}) {
      SCOPED_TRACE(std::string(name) + " p=" + std::to_string(p));
      at::Tensor x = at::randn({7, 33, 129});
      const float scale = static_cast<float>(1.0 / (1.0 - p));
      at::Tensor keep = hashed_dropout_keep_mask(x.sizes(), p, seed, x.device());
      at::Tensor want = at::where(keep, x * static_cast<double>(scale), at::zeros({}, x.options()));
      EXPECT_TRUE(same_bits(hashed_dropout(x, p, seed), want));
      at::Tensor acc = at::randn(x.sizes());
      at::Tensor want_acc = acc + want;
      hashed_dropout_add_(acc, x, p, seed);
      EXPECT_TRUE(same_bits(acc, want_acc));
      // A non-contiguous input is read in its logical (contiguous) order.
      at::Tensor xt = x.transpose(0, 2);
      EXPECT_TRUE(same_bits(hashed_dropout(xt, p, seed), hashed_dropout(xt.contiguous(), p, seed)));
    }
  }
  // p = 0 is the identity; other dtypes take the tensor-op path with the same mask.
  at::Tensor x = at::randn({100});
  EXPECT_TRUE(same_bits(hashed_dropout(x, 0.0, seed), x));
  at::Tensor xb = x.to(at::kBFloat16);
  at::Tensor keep = hashed_dropout_keep_mask(xb.sizes(), 0.3, seed, xb.device());
  EXPECT_TRUE(at::equal(hashed_dropout(xb, 0.3, seed) != 0, keep.logical_and(xb != 0)));
}

TEST(HashedDropout, SameBitsForAnyThreadCount) {
  const int saved = at::get_num_threads();
  at::Tensor x = at::randn({1 << 20});
  at::set_num_threads(1);
  at::Tensor one = hashed_dropout(x, 0.1, 12345);
  at::set_num_threads(std::max(2, saved));
  at::Tensor many = hashed_dropout(x, 0.1, 12345);
  at::set_num_threads(saved);
  EXPECT_TRUE(same_bits(one, many));
}

TEST(HashedDropout, MaskStatistics) {
  const int64_t n = 1 << 21;
  for (double p : {0.05, 0.1, 0.5}) {
    SCOPED_TRACE(p);
    at::Tensor k = hashed_dropout_keep_mask({n}, p, test_seed() + 7, at::kCPU).to(at::kDouble);
    // Keep rate within 6 sigma of 1 - p.
    const double rate = k.mean().item<double>();
    EXPECT_NEAR(rate, 1.0 - p, 6 * std::sqrt(p * (1 - p) / n));
    // Neighbours, and elements a row (4096) apart, are uncorrelated.
    for (int64_t lag : {1, 2, 64, 4096}) {
      at::Tensor a = k.slice(0, 0, n - lag) - rate, b = k.slice(0, lag) - rate;
      const double corr = (a * b).mean().item<double>() / (p * (1 - p));
      EXPECT_LT(std::abs(corr), 6 / std::sqrt(static_cast<double>(n))) << "lag " << lag;
    }
    // Another seed gives an independent mask: agreement (1-p)^2 + p^2.
    at::Tensor k2 = hashed_dropout_keep_mask({n}, p, test_seed() + 8, at::kCPU).to(at::kDouble);
    const double agree = (k == k2).to(at::kDouble).mean().item<double>();
    const double expect = (1 - p) * (1 - p) + p * p;
    EXPECT_NEAR(agree, expect, 6 * std::sqrt(expect * (1 - expect) / n));
  }
  // Unbiased: the mean of dropout(x) is x's mean.
  at::Tensor ones = at::ones({n});
  EXPECT_NEAR(hashed_dropout(ones, 0.2, 99).mean().item<double>(), 1.0, 6 * std::sqrt(0.2 / 0.8 / n));
}

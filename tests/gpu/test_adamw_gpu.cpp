// GPU checks of the optimizer (scripts/gpu-check.sh runs this suite; without a CUDA device every
// test skips): the CUDA AdamW kernels against their CPU twin, bit for bit, and the paged
// optimizer on CUDA (copy stream, pinned host pool) against the unpaged CPU optimizer.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <gtest/gtest.h>

#include <cstring>

#include "kernels/adamw.h"
#include "kernels/ops.h"
#include "trainer/optim/adamw.h"

using namespace qlora;

namespace {

bool same_bits(const at::Tensor& a, const at::Tensor& b) {
  at::Tensor x = a.cpu().contiguous(), y = b.cpu().contiguous();
  return x.scalar_type() == y.scalar_type() && x.sizes() == y.sizes() &&
         std::memcmp(x.data_ptr(), y.data_ptr(), x.nbytes()) == 0;
}

}  // namespace

TEST(AdamWGpu, KernelsMatchCpuTwin) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  const at::Device cuda(at::kCUDA, 0);
  const int64_t n = 300001;  // not a multiple of 256: a partial last block
  for (bool eight_bit : {false, true}) {
    for (at::ScalarType gt : {at::kFloat, at::kBFloat16, at::kHalf}) {
      for (bool with_out : {false, true}) {
        at::manual_seed(17);
        at::Tensor p = at::randn({n}) * 0.1;
        at::Tensor m, v, mc, vc, am, av;
        if (eight_bit) {
          mc = at::randint(0, 256, {n}, at::kByte);
          vc = at::randint(0, 256, {n}, at::kByte);
          am = at::rand({(n + 255) / 256}) * 0.01;
          av = at::rand({(n + 255) / 256}) * 1e-4;
        } else {
          m = at::randn({n}) * 0.01;
          v = at::rand({n}) * 1e-4;
        }
        at::Tensor out = with_out ? at::zeros({n}, at::kBFloat16) : at::Tensor();
        at::Tensor map_m = kernels::dynamic_map(true), map_v = kernels::dynamic_map(false);
        // device copies
        at::Tensor dp = p.to(cuda), dm, dv, dmc, dvc, dam, dav;
        if (eight_bit) {
          dmc = mc.to(cuda), dvc = vc.to(cuda), dam = am.to(cuda), dav = av.to(cuda);
        } else {
          dm = m.to(cuda), dv = v.to(cuda);
        }
        at::Tensor dout = with_out ? out.to(cuda) : at::Tensor();
        at::Tensor dmap_m = map_m.to(cuda), dmap_v = map_v.to(cuda);
        for (int step = 1; step <= 3; ++step) {
          at::Tensor g = (at::randn({n}) * 0.05).to(gt);
          at::Tensor dg = g.to(cuda);
          const adamw::Hyper h = kernels::adamw_hyper(1e-3 * step, 0.9, 0.999, 1e-8, 0.01, step);
          if (eight_bit) {
            kernels::adamw_step_8bit(h, p, mc, vc, am, av, g, out, map_m, map_v);
            kernels::adamw_step_8bit(h, dp, dmc, dvc, dam, dav, dg, dout, dmap_m, dmap_v);
          } else {
            kernels::adamw_step_fp32(h, p, m, v, g, out);
            kernels::adamw_step_fp32(h, dp, dm, dv, dg, dout);
          }
        }
        const std::string what =
            std::string(eight_bit ? "8bit" : "fp32") + " grad " + c10::toString(gt) + (with_out ? " with out" : "");
        EXPECT_TRUE(same_bits(p, dp)) << what;
        if (eight_bit) {
          EXPECT_TRUE(same_bits(mc, dmc)) << what;
          EXPECT_TRUE(same_bits(vc, dvc)) << what;
          EXPECT_TRUE(same_bits(am, dam)) << what;
          EXPECT_TRUE(same_bits(av, dav)) << what;
        } else {
          EXPECT_TRUE(same_bits(m, dm)) << what;
          EXPECT_TRUE(same_bits(v, dv)) << what;
        }
        if (with_out) { EXPECT_TRUE(same_bits(out, dout)) << what; }
      }
    }
  }
}

TEST(AdamWGpu, PagedOnCudaMatchesCpu) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  const at::Device cuda(at::kCUDA, 0);
  at::manual_seed(5);
  std::vector<optim::NamedParam> ps;
  for (int64_t n : {70000, 3000, 123457, 4096, 999}) ps.push_back({"p" + std::to_string(n), at::randn({n}) * 0.05});
  std::vector<std::vector<at::Tensor>> grads;
  for (int t = 0; t < 5; ++t) {
    grads.emplace_back();
    for (const auto& p : ps) grads.back().push_back((at::randn(p.value.sizes()) * 0.01).to(at::kBFloat16));
  }
  for (bool eight_bit : {false, true}) {
    optim::AdamWOptions o;
    o.weight_decay = 0.05;
    o.state_8bit = eight_bit;
    o.paging.page_bytes = 64 << 10;
    optim::AdamW ref(ps, o, at::kCPU);
    for (int t = 0; t < 5; ++t) ref.step(1e-3, grads[t]);
    const optim::OptimizerState want = ref.state_dict();
    const std::vector<std::pair<bool, std::optional<int64_t>>> cases = {
        {false, std::nullopt}, {true, std::nullopt}, {true, 256 << 10}, {true, 100 << 10}, {true, 1}};
    for (const auto& [paged, budget] : cases) {
      optim::AdamWOptions oc = o;
      oc.paging.enabled = paged;
      oc.paging.device_budget = budget;
      optim::AdamW opt(ps, oc, cuda);
      std::vector<at::Tensor> compute;
      for (const auto& p : ps)
        compute.push_back(at::zeros(p.value.sizes(), at::TensorOptions(at::kBFloat16).device(cuda)));
      for (int t = 0; t < 5; ++t) {
        std::vector<at::Tensor> g;
        for (const auto& x : grads[t]) g.push_back(x.to(cuda));
        opt.step(1e-3, g, compute);
      }
      const optim::OptimizerState got = opt.state_dict();
      const std::string what = std::string(eight_bit ? "8bit" : "fp32") + (paged ? " paged " : " unpaged ") +
                               (budget ? std::to_string(*budget) : "auto");
      for (const auto& [k, t] : want.tensors) EXPECT_TRUE(same_bits(t, got.tensors.at(k))) << what << ": " << k;
      for (size_t i = 0; i < ps.size(); ++i)
        EXPECT_TRUE(same_bits(compute[i], ref.master(i).to(at::kBFloat16))) << what << ": compute copy " << i;
      std::cout << "[ paged cuda ] " << what << ": " << opt.describe() << "; " << opt.stats().to_string() << "\n";
    }
  }
}

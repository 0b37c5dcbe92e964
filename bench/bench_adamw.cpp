// AdamW step on the CPU: fp32 vs 8-bit state, unpaged vs paged (a quarter of the state resident).
// Elements per second are reported; results go to bench/results/adamw_cpu.json with the machine.
//   cmake --build build --target bench_adamw && build/bench/bench_adamw --benchmark_out=...
#include <ATen/ATen.h>
#include <benchmark/benchmark.h>

#include "trainer/optim/adamw.h"

using namespace qlora;

static void BM_AdamW(benchmark::State& st) {
  const bool eight_bit = st.range(0) != 0;
  const int budget_quarters = static_cast<int>(st.range(1));  // 0: unpaged
  const int64_t n = 8 << 20;
  at::manual_seed(0);
  std::vector<optim::NamedParam> ps;
  for (int i = 0; i < 16; ++i) ps.push_back({"p" + std::to_string(i), at::randn({n / 16}) * 0.05});
  std::vector<at::Tensor> g, out;
  for (const auto& p : ps) {
    g.push_back(at::randn(p.value.sizes()).to(at::kBFloat16));
    out.push_back(at::empty(p.value.sizes(), at::kBFloat16));
  }
  optim::AdamWOptions o;
  o.state_8bit = eight_bit;
  if (budget_quarters > 0) {
    const int64_t state_bytes = n * (eight_bit ? 6 : 12);
    o.paging.enabled = true;
    o.paging.device_budget = state_bytes * budget_quarters / 4;
  }
  optim::AdamW opt(ps, o, at::kCPU);
  for (auto _ : st) opt.step(1e-4, g, out);
  st.SetItemsProcessed(st.iterations() * n);
  st.SetLabel(opt.stats().to_string());
}
BENCHMARK(BM_AdamW)
    ->Args({0, 0})
    ->Args({1, 0})
    ->Args({0, 1})
    ->Args({1, 1})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK_MAIN();

// AdamW: fp32 state against torch.optim.AdamW, 8-bit state against bitsandbytes' AdamW8bit (CPU
// path), paged == unpaged bit for bit for any budget, exact resume, checkpoint validation.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <nlohmann/json.hpp>

#include "kernels/adamw.h"
#include "kernels/ops.h"
#include "tests/common/harness.h"
#include "tests/optim/raw_io.h"
#include "trainer/common/error.h"
#include "trainer/optim/adamw.h"
#include "trainer/optim/grad.h"
#include "trainer/train/from_config.h"

using namespace qlora;
namespace stdfs = std::filesystem;

namespace {

// One reference run of tests/python/optim_adamw.py, loaded.
struct RefRun {
  std::vector<std::string> names;
  std::vector<std::vector<int64_t>> shapes;
  std::vector<double> lrs;
  std::vector<double> lr_scales;  // PEFT's LoRA+ group of each parameter (loraplus run)
  double beta1 = 0, beta2 = 0, eps = 0, wd = 0;
  std::vector<at::Tensor> init, final_p;
  std::vector<std::vector<at::Tensor>> grads;  // [step][param]
  stdfs::path dir;

  at::Tensor file(const std::string& name, at::ScalarType dt, std::vector<int64_t> shape) const {
    return test::read_raw(dir / name, dt, shape);
  }
  bool has(const std::string& name) const { return stdfs::exists(dir / name); }
};

constexpr int kSteps = 10;

// The three runs of tests/python/optim_adamw.py (fp32, 8bit, 8bit_nearest), made once.
const RefRun& reference(const std::string& mode) {
  static std::map<std::string, RefRun> cache;
  if (cache.empty()) {
    const stdfs::path dir = test::temp_dir("reference");
    test::ProcResult pr = test::run_python(
        "optim_adamw.py", {dir.string(), std::to_string(kSteps), std::to_string(at::get_num_threads())});
    EXPECT_EQ(pr.code, 0) << pr.output;
    for (const std::string m : {"fp32", "8bit", "8bit_nearest", "loraplus"}) {
      RefRun r;
      r.dir = dir / m;
      nlohmann::json j = nlohmann::json::parse(fs::read_file(r.dir / "manifest.json"));
      for (const auto& p : j["params"]) {
        r.names.push_back(p["name"]);
        r.shapes.push_back(p["shape"].get<std::vector<int64_t>>());
        r.lr_scales.push_back(p["lr_scale"].get<double>());
      }
      r.lrs = j["lrs"].get<std::vector<double>>();
      r.beta1 = j["betas"][0];
      r.beta2 = j["betas"][1];
      r.eps = j["eps"];
      r.wd = j["weight_decay"];
      for (size_t i = 0; i < r.names.size(); ++i) {
        r.init.push_back(r.file("init_" + std::to_string(i) + ".bin", at::kFloat, r.shapes[i]));
        r.final_p.push_back(r.file("final_" + std::to_string(i) + ".bin", at::kFloat, r.shapes[i]));
      }
      for (int t = 0; t < kSteps; ++t) {
        r.grads.emplace_back();
        for (size_t i = 0; i < r.names.size(); ++i)
          r.grads.back().push_back(
              r.file("grad_" + std::to_string(t) + "_" + std::to_string(i) + ".bin", at::kFloat, r.shapes[i]));
      }
      cache.emplace(m, std::move(r));
    }
  }
  return cache.at(mode);
}

optim::AdamWOptions options_of(const RefRun& r, bool eight_bit) {
  optim::AdamWOptions o;
  o.beta1 = r.beta1;
  o.beta2 = r.beta2;
  o.eps = r.eps;
  o.weight_decay = r.wd;
  o.state_8bit = eight_bit;
  return o;
}

std::vector<optim::NamedParam> params_of(const RefRun& r) {
  std::vector<optim::NamedParam> ps;
  for (size_t i = 0; i < r.names.size(); ++i) ps.push_back({r.names[i], r.init[i]});
  return ps;
}

// Runs our optimizer over the reference gradients and learning rates.
void run_steps(optim::AdamW& opt, const RefRun& r, int from, int to) {
  for (int t = from; t < to; ++t) opt.step(r.lrs[t], r.grads[t]);
}

// max over elements of |a-b| / (|b| + floor)
double max_rel(const at::Tensor& a, const at::Tensor& b, double floor) {
  return ((a.to(at::kDouble) - b.to(at::kDouble)).abs() / (b.to(at::kDouble).abs() + floor)).max().item<double>();
}

}  // namespace

// fp32 state vs torch.optim.AdamW over 10 steps with changing lr and weight decay 0.01.
// m and v use the same float32 operations as torch's CPU kernels (lerp and addcmul are fused
// multiply-adds there, and here) and must match bit for bit. p goes through sqrt: torch's CPU
// sqrt is not correctly rounded (it differs from IEEE sqrt by 1 ulp for ~17% of inputs), so p may
// differ in the last bits: we require |ours - torch| <= 1e-6 * |torch| + 1e-9 per element (about
// 8 ulp after 10 steps; observed: at most a few ulp).
TEST(AdamW, Fp32MatchesTorch) {
  const RefRun& r = reference("fp32");
  optim::AdamW opt(params_of(r), options_of(r, false), at::kCPU);
  run_steps(opt, r, 0, kSteps);
  optim::OptimizerState st = opt.state_dict();
  int64_t exact = 0, total = 0;
  for (size_t i = 0; i < r.names.size(); ++i) {
    const std::string si = std::to_string(i);
    at::Tensor m_ref = r.file("exp_avg_" + si + ".bin", at::kFloat, r.shapes[i]);
    at::Tensor v_ref = r.file("exp_avg_sq_" + si + ".bin", at::kFloat, r.shapes[i]);
    EXPECT_EQ(test::count_bit_diffs(st.tensors.at(r.names[i] + ".exp_avg"), m_ref), 0) << r.names[i];
    EXPECT_EQ(test::count_bit_diffs(st.tensors.at(r.names[i] + ".exp_avg_sq"), v_ref), 0) << r.names[i];
    at::Tensor p = opt.master(i);
    const at::Tensor& p_ref = r.final_p[i];
    const double tol_ok = ((p - p_ref).abs() <= p_ref.abs() * 1e-6 + 1e-9).all().item<bool>();
    EXPECT_TRUE(tol_ok) << r.names[i] << ": max rel diff " << max_rel(p, p_ref, 1e-9);
    exact += p.numel() - test::count_bit_diffs(p, p_ref);
    total += p.numel();
    // sanity: the parameters did move
    EXPECT_GT((p_ref - r.init[i]).abs().max().item<double>(), 1e-3);
  }
  std::cout << "[ fp32 vs torch ] parameters bit-identical: " << exact << " / " << total << "\n";
  EXPECT_GT(exact, total / 2);
}

namespace {

// How far our 8-bit optimizer ends from a bitsandbytes AdamW8bit run after kSteps steps.
struct EightBitDiff {
  double code_frac = 0;   // fraction of m/v codes that differ (8-bit parameters)
  int64_t far_codes = 0;  // codes more than 2 entries apart
  double max_dp = 0;      // max |p - p_bnb| over 8-bit parameters
  double rel_update = 0;  // ||(p - p0) - (p_bnb - p0)|| / ||p_bnb - p0||, all 8-bit parameters together
  double small_rel = 0;   // the fp32-state (small) parameter: max |p - p_bnb| / max |p_bnb - p0|
};

EightBitDiff compare_with_bnb(const std::string& mode) {
  const RefRun& r = reference(mode);
  optim::AdamW opt(params_of(r), options_of(r, true), at::kCPU);
  run_steps(opt, r, 0, kSteps);
  optim::OptimizerState st = opt.state_dict();
  EightBitDiff d;
  int64_t codes = 0, differ = 0;
  double num = 0, den = 0;
  for (size_t i = 0; i < r.names.size(); ++i) {
    const std::string si = std::to_string(i);
    const std::string& n = r.names[i];
    at::Tensor p = opt.master(i).to(at::kDouble), p_ref = r.final_p[i].to(at::kDouble), p0 = r.init[i].to(at::kDouble);
    if (!r.has("state1_" + si + ".bin")) {
      EXPECT_FALSE(opt.is_8bit(i)) << n << ": bnb keeps fp32 state for it, so must we";
      d.small_rel = std::max(d.small_rel, ((p - p_ref).abs().max() / (p_ref - p0).abs().max()).item<double>());
      continue;
    }
    EXPECT_TRUE(opt.is_8bit(i)) << n;
    for (const char* k : {"state1", "state2"}) {
      at::Tensor ours = st.tensors.at(n + "." + k).view({-1}).to(at::kInt);
      at::Tensor ref = r.file(std::string(k) + "_" + si + ".bin", at::kByte, {p.numel()}).to(at::kInt);
      differ += (ours != ref).sum().item<int64_t>();
      d.far_codes += ((ours - ref).abs() > 2).sum().item<int64_t>();
      codes += p.numel();
    }
    d.max_dp = std::max(d.max_dp, (p - p_ref).abs().max().item<double>());
    num += (p - p_ref).pow(2).sum().item<double>();
    den += (p_ref - p0).pow(2).sum().item<double>();
  }
  d.code_frac = static_cast<double>(differ) / static_cast<double>(codes);
  d.rel_update = std::sqrt(num / den);
  std::cout << "[ 8bit vs " << mode << " ] codes differing " << d.code_frac << ", codes > 2 entries apart "
            << d.far_codes << ", max |p - p_bnb| " << d.max_dp << ", relative update difference " << d.rel_update
            << ", small fp32-state param " << d.small_rel << "\n";
  return d;
}

double lr_max(const RefRun& r) { return *std::max_element(r.lrs.begin(), r.lrs.end()); }

}  // namespace

// 8-bit state vs bitsandbytes.optim.AdamW8bit running its own CPU update (bnb 0.50: PyTorch's
// update formula on dequantized state, 256-element blocks, signed/unsigned dynamic maps, fp32
// state below 4096 elements), with bnb's CPU quantizer swapped for the exact nearest-entry rule of
// its CUDA kernels (which is ours). Left over are rounding differences of the same formula (bnb
// writes m*b1 + (1-b1)*g where we follow torch's lerp), which can move a value across a code
// boundary now and then. Observed (10 steps, 200k codes): no code differs, max |p - p_bnb| 3e-8
// (a few ulp). Tolerances: < 0.1% of codes differ, none by more than 2 entries, every parameter
// within 0.1% of the largest single-step learning rate of bnb's, the updates within 1e-4 (L2).
TEST(AdamW, EightBitMatchesBitsandbytesNearest) {
  const EightBitDiff d = compare_with_bnb("8bit_nearest");
  EXPECT_LT(d.code_frac, 0.001);
  EXPECT_EQ(d.far_codes, 0);
  EXPECT_LE(d.max_dp, 1e-3 * lr_max(reference("8bit_nearest")));
  EXPECT_LT(d.rel_update, 1e-4);
  EXPECT_LT(d.small_rel, 1e-4);
}

// The same against stock bitsandbytes on CPU, whose quantizer looks codes up in a coarse table and
// now and then lands on a neighbouring entry (and never stores 0 for a tiny v): the 8-bit rounding
// then differs in about 1% of the codes and feeds back through the steps. Elements with tiny v relative to
// their block are the sensitive ones (the map is coarse there), so single elements can differ by a
// good part of a step; the update as a whole agrees closely. Observed: 0.7% of codes differ, max
// |p - p_bnb| 0.29 * lr_max, updates within 0.16% (L2). Tolerances: < 3% of codes differ,
// max |p - p_bnb| <= 0.5 * lr_max, updates within 2% (L2).
TEST(AdamW, EightBitMatchesBitsandbytes) {
  const EightBitDiff d = compare_with_bnb("8bit");
  EXPECT_LT(d.code_frac, 0.03);
  EXPECT_LE(d.max_dp, 0.5 * lr_max(reference("8bit")));
  EXPECT_LT(d.rel_update, 0.02);
  EXPECT_LT(d.small_rel, 1e-4);
}

// After one step from zero state, m = (1-b1) g exactly as the fp32 optimizer computes it, so the
// 8-bit codes and absmax must equal kernels::quantize_blockwise_8bit of the fp32 optimizer's m
// (an independent implementation of the same nearest-entry rule); likewise v with the unsigned map.
TEST(AdamW, EightBitFirstStepEqualsBlockwiseQuantizer) {
  at::manual_seed(3);
  at::Tensor w = at::randn({5000});
  at::Tensor g = at::randn({5000}) * 0.3;
  g.narrow(0, 512, 256).zero_();  // an all-zero block
  optim::AdamWOptions o;
  optim::AdamW fp(std::vector<optim::NamedParam>{{"w", w}}, o, at::kCPU);
  o.state_8bit = true;
  optim::AdamW q8(std::vector<optim::NamedParam>{{"w", w}}, o, at::kCPU);
  fp.step(1e-3, {g});
  q8.step(1e-3, {g});
  optim::OptimizerState a = fp.state_dict(), b = q8.state_dict();
  for (auto [state, absmax, avg, is_signed] : {std::tuple{"w.state1", "w.absmax1", "w.exp_avg", true},
                                               std::tuple{"w.state2", "w.absmax2", "w.exp_avg_sq", false}}) {
    at::Tensor am;
    at::Tensor codes = kernels::quantize_blockwise_8bit(a.tensors.at(avg), kernels::dynamic_map(is_signed), 256, am);
    EXPECT_TRUE(test::bit_equal(codes, b.tensors.at(state).view({-1}))) << state;
    EXPECT_TRUE(test::bit_equal(am, b.tensors.at(absmax))) << absmax;
  }
  // the parameters moved the same way up to the 8-bit rounding of m and v
  EXPECT_LE((fp.master(0) - q8.master(0)).abs().max().item<double>(), 1e-4);
}

// adamw::nearest_code8 (the kernels' requantization) vs kernels::quantize_blockwise_8bit on map
// entries, midpoints between entries (ties go low), values just off them, and out-of-range values.
TEST(AdamW, NearestCodeMatchesBlockwiseQuantizer) {
  for (bool is_signed : {true, false}) {
    at::Tensor map = kernels::dynamic_map(is_signed);
    const float* mp = map.data_ptr<float>();
    std::vector<float> xs = {-1.5f, 1.5f, 0.f, -0.f, 1.f, -1.f};
    for (int i = 0; i < 256; ++i) {
      xs.push_back(mp[i]);
      if (i + 1 < 256) {
        const float mid = (mp[i] + mp[i + 1]) / 2;
        xs.push_back(mid);
        xs.push_back(std::nextafter(mid, 2.f));
        xs.push_back(std::nextafter(mid, -2.f));
      }
    }
    at::manual_seed(5);
    at::Tensor rnd = at::rand({4000}) * 2 - 1;
    for (int i = 0; i < 4000; ++i) xs.push_back(rnd.data_ptr<float>()[i] * std::pow(10.f, -(i % 8)));
    // quantize_blockwise_8bit scales by 1/absmax: one block per value with absmax exactly 1
    int mismatches = 0;
    for (float x : xs) {
      at::Tensor blk = at::tensor(std::vector<float>{x, 1.0f});
      at::Tensor am;
      const uint8_t ref = kernels::quantize_blockwise_8bit(blk, map, 256, am).data_ptr<uint8_t>()[0];
      if (std::fabs(x) > 1.f) continue;  // absmax would not be 1
      if (adamw::nearest_code8(mp, x) != ref) ++mismatches;
    }
    EXPECT_EQ(mismatches, 0) << (is_signed ? "signed" : "unsigned");
  }
}

namespace {

// Parameters spanning many small pages: odd sizes, a small one (fp32 state in 8-bit mode), one
// far larger than a page.
std::vector<optim::NamedParam> paging_params() {
  at::manual_seed(11);
  std::vector<optim::NamedParam> ps;
  const std::vector<std::vector<int64_t>> shapes = {{16, 700}, {700, 16}, {5000}, {33, 97}, {1000}, {40000}, {4096}};
  for (size_t i = 0; i < shapes.size(); ++i) ps.push_back({"p" + std::to_string(i), at::randn(shapes[i]) * 0.05});
  return ps;
}

std::vector<at::Tensor> paging_grads(const std::vector<optim::NamedParam>& ps, int step) {
  at::manual_seed(100 + step);
  std::vector<at::Tensor> gs;
  for (const auto& p : ps) gs.push_back((at::randn(p.value.sizes()) * 0.02 * (step + 1)).to(at::kBFloat16));
  return gs;
}

struct PagedRun {
  optim::OptimizerState state;
  std::vector<at::Tensor> compute;  // bf16 compute copies after the last step
  optim::PagingStats stats;
};

PagedRun run_paged(bool eight_bit, bool paged, std::optional<int64_t> budget, int64_t page_bytes, int steps) {
  auto ps = paging_params();
  optim::AdamWOptions o;
  o.weight_decay = 0.1;
  o.state_8bit = eight_bit;
  o.paging.enabled = paged;
  o.paging.device_budget = budget;
  o.paging.page_bytes = page_bytes;
  optim::AdamW opt(ps, o, at::kCPU);
  PagedRun r;
  for (const auto& p : ps) r.compute.push_back(at::zeros(p.value.sizes(), at::kBFloat16));
  for (int t = 0; t < steps; ++t) opt.step(1e-3 * (1 + t % 3), paging_grads(ps, t), r.compute);
  r.state = opt.state_dict();
  r.stats = opt.stats();
  return r;
}

void expect_same(const PagedRun& a, const PagedRun& b, const std::string& what) {
  ASSERT_EQ(a.state.tensors.size(), b.state.tensors.size());
  for (const auto& [k, t] : a.state.tensors)
    EXPECT_TRUE(test::bit_equal(t, b.state.tensors.at(k))) << what << ": " << k;
  for (size_t i = 0; i < a.compute.size(); ++i) EXPECT_TRUE(test::bit_equal(a.compute[i], b.compute[i])) << what;
  EXPECT_EQ(nlohmann::json::parse(a.state.json), nlohmann::json::parse(b.state.json)) << what;
}

}  // namespace

// Any budget gives the unpaged results bit for bit: fp32 and 8-bit state, budgets from "all
// resident" down to less than one parameter's state and to 1 byte (pages shrink to 256 elements).
TEST(AdamW, PagedIsBitIdenticalToUnpaged) {
  const int steps = 4;
  for (bool eight_bit : {false, true}) {
    const PagedRun ref = run_paged(eight_bit, false, std::nullopt, 16 << 10, steps);
    int64_t state_bytes = 0;
    for (const auto& [k, t] : ref.state.tensors) state_bytes += t.nbytes();
    const std::vector<std::pair<std::optional<int64_t>, int64_t>> cases = {
        {std::nullopt, 16 << 10},      // auto on CPU: all resident
        {int64_t{1} << 30, 16 << 10},  // fits
        {80 << 10, 16 << 10},          // 5 slots: 3 resident, 2 streaming
        {32 << 10, 16 << 10},          // exactly 2 slots: everything streams
        {20000, 16 << 10},             // less than 2 pages: pages shrink
        {5000, 2 << 20},               // less than the state of any large parameter
        {1, 2 << 20},                  // 1 byte: two 256-element pages
    };
    for (const auto& [budget, page] : cases) {
      const std::string what = std::string(eight_bit ? "8bit" : "fp32") + " budget " +
                               (budget ? std::to_string(*budget) : "auto") + " page " + std::to_string(page);
      PagedRun got = run_paged(eight_bit, true, budget, page, steps);
      expect_same(ref, got, what);
      if (budget && *budget < state_bytes) {
        EXPECT_GT(got.stats.streamed_pages, 0) << what;
        // every streamed page goes out once per step and comes in once per step (+ the prefetch)
        EXPECT_EQ(got.stats.pages_out, got.stats.streamed_pages * steps) << what;
        EXPECT_EQ(got.stats.pages_in, got.stats.streamed_pages * steps + got.stats.streaming_slots) << what;
        EXPECT_LE((got.stats.resident_pages + got.stats.streaming_slots) * got.stats.page_bytes,
                  std::max<int64_t>(*budget, 2 * 3072))
            << what << ": the device tier stays within the budget";
      } else {
        EXPECT_EQ(got.stats.streamed_pages, 0) << what;
      }
    }
  }
}

// Save after 3 steps, load into a fresh optimizer with another budget, 3 more steps: the same bits
// as 6 uninterrupted steps. Also the other way round (paged saves, unpaged loads).
TEST(AdamW, ResumeIsExact) {
  for (bool eight_bit : {false, true}) {
    auto ps = paging_params();
    optim::AdamWOptions o;
    o.weight_decay = 0.05;
    o.state_8bit = eight_bit;
    o.paging.page_bytes = 16 << 10;
    optim::AdamW full(ps, o, at::kCPU);
    for (int t = 0; t < 6; ++t) full.step(1e-3, paging_grads(ps, t));

    optim::AdamWOptions o1 = o;
    o1.paging.enabled = true;
    o1.paging.device_budget = 40 << 10;
    optim::AdamW first(ps, o1, at::kCPU);
    for (int t = 0; t < 3; ++t) first.step(1e-3, paging_grads(ps, t));
    optim::OptimizerState saved = first.state_dict();

    // a fresh optimizer from different initial values: everything must come from the state
    std::vector<optim::NamedParam> other = ps;
    for (auto& p : other) p.value = at::zeros_like(p.value);
    optim::AdamWOptions o2 = o;
    o2.paging.enabled = true;
    o2.paging.device_budget = 100 << 10;
    optim::AdamW second(other, o2, at::kCPU);
    second.load_state_dict(saved);
    EXPECT_EQ(second.step_count(), 3);
    for (int t = 3; t < 6; ++t) second.step(1e-3, paging_grads(ps, t));

    optim::OptimizerState a = full.state_dict(), b = second.state_dict();
    for (const auto& [k, t] : a.tensors) EXPECT_TRUE(test::bit_equal(t, b.tensors.at(k))) << k;
    EXPECT_EQ(nlohmann::json::parse(a.json)["step"], 6);
    EXPECT_EQ(a.json, b.json);
  }
}

TEST(AdamW, UndefinedGradientLeavesParameterAlone) {
  at::manual_seed(1);
  at::Tensor a = at::randn({300}), b = at::randn({50});
  optim::AdamWOptions o;
  o.weight_decay = 0.1;
  optim::AdamW opt(std::vector<optim::NamedParam>{{"a", a}, {"b", b}}, o, at::kCPU);
  at::Tensor out_b = at::zeros({50});
  opt.step(1e-2, {at::randn({300}), at::Tensor()}, {at::Tensor(), out_b});
  EXPECT_TRUE(test::bit_equal(opt.master(1), b));
  EXPECT_FALSE(test::bit_equal(opt.master(0), a));
  EXPECT_EQ(out_b.abs().sum().item<double>(), 0.0) << "no update, no write";
  optim::OptimizerState st = opt.state_dict();
  EXPECT_EQ(st.tensors.at("b.exp_avg").abs().sum().item<double>(), 0.0);
}

TEST(AdamW, ComputeCopyIsTheRoundedMaster) {
  at::manual_seed(2);
  at::Tensor w = at::randn({2, 1000});
  optim::AdamW opt(std::vector<optim::NamedParam>{{"w", w}}, {}, at::kCPU);
  at::Tensor bf = at::empty({2, 1000}, at::kBFloat16), h = at::empty({2, 1000}, at::kHalf);
  opt.step(1e-2, {at::randn({2, 1000})}, {bf});
  EXPECT_TRUE(test::bit_equal(bf, opt.master(0).to(at::kBFloat16)));
  opt.copy_master_to(0, h);
  EXPECT_TRUE(test::bit_equal(h, opt.master(0).to(at::kHalf)));
}

TEST(AdamW, LoadStateDictRejectsMismatches) {
  at::Tensor w = at::randn({10, 10});
  optim::AdamWOptions o;
  optim::AdamW opt(std::vector<optim::NamedParam>{{"w", w}}, o, at::kCPU);
  optim::OptimizerState good = opt.state_dict();
  auto expect_error = [&](const optim::OptimizerState& st, const std::string& msg) {
    try {
      optim::AdamW fresh(std::vector<optim::NamedParam>{{"w", w}}, o, at::kCPU);
      fresh.load_state_dict(st);
      ADD_FAILURE() << "no error, expected: " << msg;
    } catch (const UserError& e) { EXPECT_EQ(std::string(e.what()), msg); }
  };
  optim::OptimizerState bad = good;
  bad.tensors["w.exp_avg"] = at::zeros({100});
  expect_error(bad, "optimizer state: \"w.exp_avg\" is Float [100], expected Float [10, 10]");
  bad = good;
  bad.tensors.erase("w.master");
  expect_error(bad, "optimizer state: missing tensor \"w.master\"");
  bad = good;
  bad.json = "{\"format\": \"other\"}";
  expect_error(bad, "optimizer state: expected format \"qlora.adamw.v1\"");
  // a checkpoint of another model
  optim::AdamW other(std::vector<optim::NamedParam>{{"v", w}}, o, at::kCPU);
  expect_error(other.state_dict(), "optimizer state: parameter 0 is \"v\" in the checkpoint but \"w\" in the model");
  // 8-bit state into an fp32 optimizer
  optim::AdamWOptions o8 = o;
  o8.state_8bit = true;
  o8.min_8bit_size = 1;
  optim::AdamW eight(std::vector<optim::NamedParam>{{"w", w}}, o8, at::kCPU);
  expect_error(eight.state_dict(),
               "optimizer state: \"w\" has 8bit state in the checkpoint but the optimizer keeps fp32 state "
               "(optimizer or min_8bit_size changed)");
}

TEST(AdamW, DescribeAndStats) {
  auto ps = paging_params();
  optim::AdamWOptions o;
  o.state_8bit = true;
  o.paging.enabled = true;
  o.paging.device_budget = 64 << 10;
  o.paging.page_bytes = 16 << 10;
  optim::AdamW opt(ps, o, at::kCPU);
  const std::string d = opt.describe();
  EXPECT_NE(d.find("paged AdamW over 7 parameters"), std::string::npos) << d;
  EXPECT_NE(d.find("2 resident"), std::string::npos) << d;
  opt.step(1e-3, paging_grads(ps, 0));
  optim::PagingStats s = opt.stats();
  EXPECT_EQ(s.resident_pages, 2);
  EXPECT_EQ(s.streaming_slots, 2);
  EXPECT_EQ(s.bytes_out, s.pages_out * s.page_bytes);
  EXPECT_GE(s.stall_seconds, 0.0);
  EXPECT_NE(s.to_string().find("streamed through 2 slots"), std::string::npos) << s.to_string();
}

// LoRA+: PEFT's create_loraplus_optimizer groups (lora_B at lr * 16) with torch.optim.AdamW; our
// grouping rule picks the same parameters and the run ends within the fp32 test's tolerance.
TEST(AdamW, LoraPlusMatchesPeftsGroups) {
  const RefRun& r = reference("loraplus");
  config::OptimizerConfig c;
  c.loraplus_lr_ratio = 16.0;
  c.weight_decay = 0.5;  // not applied under LoRA+: loraplus_weight_decay is
  c.loraplus_weight_decay = r.wd;
  optim::AdamWOptions o = train::adamw_options(c);
  EXPECT_EQ(o.weight_decay, r.wd);
  std::vector<optim::NamedParam> ps = params_of(r);
  int scaled = 0;
  for (size_t i = 0; i < ps.size(); ++i) {
    ps[i].lr_scale = train::lr_scale(c, r.names[i], static_cast<int64_t>(r.shapes[i].size()));
    EXPECT_EQ(ps[i].lr_scale, r.lr_scales[i]) << r.names[i];
    scaled += ps[i].lr_scale != 1.0;
  }
  EXPECT_EQ(scaled, 1);  // a.lora_B.weight
  optim::AdamW opt(ps, o, at::kCPU);
  EXPECT_NE(opt.describe().find("learning rate x16 for 1"), std::string::npos) << opt.describe();
  run_steps(opt, r, 0, kSteps);
  // The updates agree to float rounding (torch's CPU sqrt is off by an ulp at times, see above):
  // at most 1e-5 of the largest update, for an update 16 times larger on lora_B.
  for (size_t i = 0; i < r.names.size(); ++i) {
    SCOPED_TRACE(r.names[i]);
    const at::Tensor ours = opt.master(i) - r.init[i], ref = r.final_p[i] - r.init[i];
    const double d = (ours - ref).abs().max().item<double>(), m = ref.abs().max().item<double>();
    EXPECT_LE(d, 1e-5 * m) << d << " of " << m;
  }
  // Without the ratio the same run ends elsewhere (the test can tell the groups apart).
  optim::AdamW plain(params_of(r), o, at::kCPU);
  run_steps(plain, r, 0, kSteps);
  EXPECT_GT((plain.master(1) - r.final_p[1]).abs().max().item<double>(),
            0.1 * (r.final_p[1] - r.init[1]).abs().max().item<double>());
}

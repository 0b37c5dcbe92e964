// Gradient clipping against torch.nn.utils.clip_grad_norm_ (same LibTorch, same ops: bit-exact),
// non-finite detection.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <sstream>

#include "tests/common/harness.h"
#include "tests/optim/raw_io.h"
#include "trainer/optim/grad.h"

using namespace qlora;

TEST(ClipGradNorm, MatchesTorch) {
  const auto dir = test::temp_dir();
  test::ProcResult r = test::run_python("clip_grad.py", {dir.string(), std::to_string(at::get_num_threads())});
  ASSERT_EQ(r.code, 0) << r.output;
  std::istringstream lines(r.output);
  std::string line;
  int cases = 0;
  while (std::getline(lines, line)) {
    std::istringstream ss(line);
    std::string name, max_norm_text, total_text;
    int count = 0;
    if (!(ss >> name >> max_norm_text >> count) || count <= 0) continue;
    std::vector<std::string> dts(count);
    std::vector<int64_t> sizes(count);
    for (auto& d : dts) ss >> d;
    for (auto& n : sizes) ss >> n;
    ss >> total_text;
    std::vector<at::Tensor> grads, expected;
    for (int i = 0; i < count; ++i) {
      const at::ScalarType dt = dts[i] == "bf16" ? at::kBFloat16 : at::kFloat;
      grads.push_back(test::read_raw(dir / ("in_" + name + "_" + std::to_string(i) + ".bin"), dt, {sizes[i]}));
      expected.push_back(test::read_raw(dir / ("out_" + name + "_" + std::to_string(i) + ".bin"), dt, {sizes[i]}));
    }
    const double total = optim::clip_grad_norm_(grads, std::stod(max_norm_text));
    EXPECT_EQ(total, std::stod(total_text)) << name;
    for (int i = 0; i < count; ++i) EXPECT_TRUE(test::bit_equal(grads[i], expected[i])) << name << " grad " << i;
    ++cases;
  }
  EXPECT_EQ(cases, 4) << r.output;
}

TEST(ClipGradNorm, NormOnlyAndEmpty) {
  at::Tensor g = at::full({4}, 3.0);
  EXPECT_DOUBLE_EQ(optim::clip_grad_norm_({g}, 0.0), 6.0);
  EXPECT_EQ(g[0].item<double>(), 3.0) << "max_norm 0 only measures";
  EXPECT_DOUBLE_EQ(optim::grad_norm({g, at::Tensor()}), 6.0);
  EXPECT_EQ(optim::grad_norm({}), 0.0);
}

TEST(AllFinite, DetectsNanAndInf) {
  at::Tensor a = at::randn({100}), b = at::randn({7}).to(at::kBFloat16);
  EXPECT_TRUE(optim::all_finite({a, b, at::Tensor()}));
  b[3] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_FALSE(optim::all_finite({a, b}));
  EXPECT_FALSE(optim::all_finite({at::full({3}, std::numeric_limits<float>::infinity())}));
  at::Tensor big = at::full({4}, 3e38f);
  EXPECT_TRUE(optim::all_finite({big}));
  EXPECT_TRUE(std::isinf(optim::grad_norm({big}))) << "the norm overflows although every element is finite";
}

// The step profiler (kernels/step_profile.h): exclusive time per part, autograd nodes timed through
// RecordFunction, nothing collected when inactive.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/autograd.h>

#include <chrono>
#include <thread>

#include "kernels/step_profile.h"

using namespace qlora::kernels::profile;

namespace {

void busy(double seconds) {  // sleeps are coarse on a loaded machine; the test allows slack
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
}

double part(const Breakdown& b, Part p) { return b.seconds[static_cast<size_t>(p)]; }

}  // namespace

TEST(StepProfile, NestedScopesAreExclusive) {
  begin(c10::kCPU);
  {
    Scope outer(Part::lora);
    busy(0.03);
    {
      Scope inner(Part::base_gemm);
      busy(0.05);
      Scope deeper(Part::dequantize);
      busy(0.02);
    }
  }
  const Breakdown b = end();
  EXPECT_EQ(b.frames, 3);
  EXPECT_GE(part(b, Part::lora), 0.03);
  EXPECT_LT(part(b, Part::lora), 0.05);  // the inner frames' 70 ms are not counted again
  EXPECT_GE(part(b, Part::base_gemm), 0.05);
  EXPECT_LT(part(b, Part::base_gemm), 0.07);
  EXPECT_GE(part(b, Part::dequantize), 0.02);
  double sum = 0;
  for (double s : b.seconds) sum += s;
  EXPECT_LE(sum, b.wall_s + 1e-6);
}

TEST(StepProfile, InactiveScopesCollectNothing) {
  { Scope s(Part::attention); }
  begin(c10::kCPU);
  const Breakdown b = end();
  EXPECT_EQ(b.frames, 0);
  EXPECT_EQ(part(b, Part::attention), 0.0);
}

TEST(StepProfile, BackwardNodesAreTimedByName) {
  at::Tensor w = at::randn({64, 64}).requires_grad_(true);
  at::Tensor x = at::randn({32, 64});
  at::Tensor loss = at::mm(x, w).sum();
  begin(c10::kCPU);
  loss.backward();
  const Breakdown b = end();
  EXPECT_GE(b.frames, 2);               // SumBackward0, MmBackward0, AccumulateGrad
  EXPECT_GT(part(b, Part::lora), 0.0);  // MmBackward0 and AccumulateGrad
  EXPECT_TRUE(w.grad().defined());
}

TEST(StepProfile, NodeNames) {
  EXPECT_EQ(part_of_node("qlora::LoraLinearBackward"), Part::lora);
  EXPECT_EQ(part_of_node("qlora::CheckpointBackward"), Part::other);
  EXPECT_EQ(part_of_node("ScaledDotProductFlashAttentionBackward0"), Part::attention);
  EXPECT_EQ(part_of_node("ScaledDotProductEfficientAttentionBackward0"), Part::attention);
  EXPECT_EQ(part_of_node("torch::autograd::CppNode<qlora::model::ChunkedCrossEntropy>"), Part::loss);
  EXPECT_EQ(part_of_node("torch::autograd::CppNode<NF4LinearFunction>"), Part::base_gemm);
  EXPECT_EQ(part_of_node("MmBackward0"), Part::lora);
  EXPECT_EQ(part_of_node("SiluBackward0"), Part::norm_rope_act);
  EXPECT_EQ(part_of_node("EmbeddingBackward0"), Part::other);
  EXPECT_STREQ(part_name(Part::paging), "paging");
}

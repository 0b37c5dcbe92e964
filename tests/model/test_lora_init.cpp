// PEFT's init_lora_weights methods (trainer/model/lora_init.h) against PEFT's own implementation
// on the same tiny checkpoint (tests/python/lora_init_ref.py): A, B and the new base of every layer.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "kernels/ops.h"
#include "tests/model/fixtures.h"
#include "trainer/common/error.h"
#include "trainer/io/safetensors.h"
#include "trainer/model/lora_init.h"
#include "trainer/model/model.h"

using namespace qlora;

namespace {

config::LoraConfig init_cfg(const std::string& init, int64_t r = 4, double alpha = 8, int64_t loftq_iter = 1) {
  config::LoraConfig c;
  c.r = r;
  c.alpha = alpha;
  c.dropout = 0.0;
  c.target_linear = true;
  c.init_lora_weights = init;
  c.loftq_iter = loftq_iter;
  return c;
}

std::map<std::string, at::Tensor> peft_init(const std::string& family, const config::LoraConfig& c,
                                            uint64_t seed = 42) {
  const stdfs::path out = test::temp_dir() / ("peft_" + c.init_lora_weights + ".safetensors");
  const test::ProcResult r =
      test::model_ref({"lora_init", (test::model_fixtures() / family).string(), out.string(), "--init",
                       c.init_lora_weights, "--r", std::to_string(c.r), "--alpha", std::to_string(c.alpha), "--seed",
                       std::to_string(seed), "--loftq-iter", std::to_string(c.loftq_iter)});
  if (r.code != 0) return {};
  std::map<std::string, at::Tensor> m;
  io::SafetensorsFile f(out);
  for (const auto& t : f.tensors()) m[t.name] = f.tensor(t.name).clone();
  return m;
}

double max_abs(const at::Tensor& t) { return t.abs().max().item<double>(); }

// Singular vectors are defined up to a sign per direction: row k of A and column k of B flip
// together. Aligns ours to PEFT's by the sign of each row's dot product.
void align_signs(at::Tensor& A, at::Tensor& B, const at::Tensor& refA) {
  const at::Tensor s = at::sign((A * refA).sum(1));
  A = A * s.unsqueeze(1);
  B = B * s.unsqueeze(0);
}

struct Tol {
  double factors;  // |ours - PEFT| / max |PEFT| for A and B
  double base;     // |ours - PEFT| / max |W| for the base
};

void expect_matches_peft(const std::string& family, const config::LoraConfig& c, Tol tol) {
  SCOPED_TRACE(family + " init_lora_weights=" + c.init_lora_weights);
  const auto ref = peft_init(family, c);
  ASSERT_FALSE(ref.empty());
  model::Model m = test::load_fixture(family, /*quantize=*/false, c);
  int64_t n = 0;
  for (const model::Linear* l : m.linears()) {
    SCOPED_TRACE(l->name);
    ASSERT_TRUE(l->lora);
    ASSERT_TRUE(ref.count(l->name + ".lora_A")) << "PEFT did not adapt " << l->name;
    at::Tensor A = l->lora->A.detach().clone(), B = l->lora->B.detach().clone();
    const at::Tensor &rA = ref.at(l->name + ".lora_A"), &rB = ref.at(l->name + ".lora_B"),
                     &rW = ref.at(l->name + ".base");
    ASSERT_EQ(A.sizes(), rA.sizes());
    ASSERT_EQ(B.sizes(), rB.sizes());
    align_signs(A, B, rA);
    if (std::getenv("QLORA_TEST_VERBOSE"))
      std::printf("%s: A %.3g B %.3g base %.3g (of max %.3g)\n", l->name.c_str(), max_abs(A - rA) / max_abs(rA),
                  max_abs(B - rB) / max_abs(rB), max_abs(l->weight - rW) / max_abs(rW), max_abs(rW));
    EXPECT_LE(max_abs(A - rA), tol.factors * max_abs(rA));
    EXPECT_LE(max_abs(B - rB), tol.factors * max_abs(rB));
    EXPECT_LE(max_abs(l->weight - rW), tol.base * max_abs(rW));
    ++n;
  }
  EXPECT_EQ(n * 3, static_cast<int64_t>(ref.size()));
}

}  // namespace

// The deterministic methods (LAPACK's SVD and QR) agree with PEFT to float rounding: the same
// routines on the same fp32 weights, run with possibly different thread splits.
TEST(LoraInit, PissaEqualsPeft) { expect_matches_peft("llama", init_cfg("pissa"), {1e-4, 1e-6}); }
TEST(LoraInit, OloraEqualsPeft) { expect_matches_peft("qwen2", init_cfg("olora"), {1e-4, 1e-6}); }

// The randomized SVD draws its test matrix from the init generator seeded with the run's seed,
// in module order, exactly as torch.svd_lowrank draws from torch's seeded generator.
TEST(LoraInit, PissaNiterEqualsPeftOnTheSameGenerator) {
  expect_matches_peft("llama", init_cfg("pissa_niter_2"), {1e-4, 1e-6});
}

// LoftQ: PEFT's loop (bitsandbytes NF4 without double quantization, then a full SVD). The base is
// a dequantized NF4 tensor: an element whose W - LR sits within rounding of an NF4 decision
// boundary could land in the neighbouring code, so the base is compared in NF4 steps.
TEST(LoraInit, LoftqEqualsPeft) {
  expect_matches_peft("llama", init_cfg("loftq"), {1e-4, 1e-6});
  expect_matches_peft("mistral", init_cfg("loftq", 4, 8, /*loftq_iter=*/3), {1e-3, 1e-6});
}

// The random methods draw from the same generator stream as PEFT's calls on torch's seeded one.
TEST(LoraInit, GaussianAndFalseEqualPeft) {
  expect_matches_peft("llama", init_cfg("gaussian"), {0, 0});
  expect_matches_peft("llama", init_cfg("false"), {1e-7, 0});
}

// On an NF4 base the new base is what gets quantized (the same bytes as quantizing it directly),
// and the quantization error it leaves is the one LoftQ minimizes for.
TEST(LoraInit, NF4BaseIsTheQuantizedResidual) {
  const config::LoraConfig c = init_cfg("pissa");
  model::Model q = test::load_fixture("llama", true, c), f = test::load_fixture("llama", false, c);
  const auto qs = q.linears(), fs = f.linears();
  ASSERT_EQ(qs.size(), fs.size());
  for (size_t i = 0; i < qs.size(); ++i) {
    SCOPED_TRACE(qs[i]->name);
    ASSERT_TRUE(qs[i]->nf4);
    const kernels::NF4Tensor expect = kernels::nf4_quantize(fs[i]->weight, 64, true);
    EXPECT_TRUE(at::equal(qs[i]->nf4->packed, expect.packed));
    EXPECT_TRUE(at::equal(qs[i]->nf4->absmax, expect.absmax));
    EXPECT_TRUE(at::equal(qs[i]->lora->A, fs[i]->lora->A));
  }
}

// Output error of the quantized layer against the 16-bit one (relative Frobenius norm on random
// inputs): LoftQ and PiSSA start closer to the 16-bit model than plain QLoRA. LoftQ's factors
// correct the error at scaling 1 (PEFT computes them without the scaling), hence lora_alpha = r.
TEST(LoraInit, LoftqAndPissaReduceTheQuantizationError) {
  model::Model orig = test::load_fixture("llama", false, init_cfg("true"));
  auto err = [&](const std::string& init) {
    model::Model m = test::load_fixture("llama", true, init_cfg(init, 8, 8, 2));
    at::Generator g = at::make_generator<at::CPUGeneratorImpl>(7);
    double num = 0, den = 0;
    const auto ls = m.linears(), os = orig.linears();
    for (size_t i = 0; i < ls.size(); ++i) {
      const at::Tensor x = at::randn({32, ls[i]->in_features}, g, at::kFloat);
      const at::Tensor W = kernels::nf4_dequantize(*ls[i]->nf4, at::kFloat) +
                           ls[i]->lora->scaling * at::mm(ls[i]->lora->B, ls[i]->lora->A).detach();
      num += (at::mm(x, W.t()) - at::mm(x, os[i]->weight.t())).pow(2).sum().item<double>();
      den += at::mm(x, os[i]->weight.t()).pow(2).sum().item<double>();
    }
    return std::sqrt(num / den);
  };
  const double plain = err("true"), loftq = err("loftq"), pissa = err("pissa");
  std::printf("output error: qlora %.4f  loftq %.4f  pissa %.4f\n", plain, loftq, pissa);
  EXPECT_LT(loftq, 0.9 * plain);
  EXPECT_LT(pissa, 0.9 * plain);
}

TEST(LoraInit, RankAboveTheLayerIsAUserError) {
  try {
    test::load_fixture("llama", true, init_cfg("pissa", 4096));
    FAIL() << "expected a UserError";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("lora_r: 4096 exceeds"), std::string::npos) << e.what();
  }
}

TEST(LoraInit, PissaOnABitsandbytesBaseIsAUserError) {
  model::ModelLoadOptions o;
  o.compute_dtype = at::kFloat;
  o.lora = init_cfg("pissa");
  try {
    model::load_model(test::bnb_fixture(), o);
    FAIL() << "expected a UserError";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("needs the 16-bit weights"), std::string::npos) << e.what();
  }
  o.lora = init_cfg("olora");  // PEFT's OLoRA dequantizes a 4-bit base; so does ours
  model::Model m = model::load_model(test::bnb_fixture(), o);
  EXPECT_TRUE(m.linears()[0]->lora);
}

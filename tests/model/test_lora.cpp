// LoRA against PEFT (initialization, gradients of every A and B), activation checkpointing with
// dropout, the chunked cross-entropy and the NF4 linear's autograd.
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <array>

#include <nlohmann/json.hpp>

#include <cmath>

#include "kernels/ops.h"
#include "tests/model/fixtures.h"
#include "trainer/common/error.h"
#include "trainer/common/fs.h"
#include "trainer/io/peft.h"
#include "trainer/model/cross_entropy.h"
#include "trainer/model/lora_linear.h"
#include "trainer/model/model.h"
#include "trainer/model/nf4_linear.h"
#include "trainer/model/saved_modules.h"

using namespace qlora;

namespace {

config::LoraConfig lora_cfg(int64_t r, double alpha, std::vector<std::string> targets, bool rslora = false,
                            double dropout = 0.0, std::vector<std::string> params = {}) {
  config::LoraConfig c;
  c.target_parameters = std::move(params);
  c.r = r;
  c.alpha = alpha;
  c.dropout = dropout;
  c.use_rslora = rslora;
  if (targets.size() == 1 && targets[0] == "all-linear")
    c.target_linear = true;
  else
    c.target_modules = targets;
  return c;
}

// Gives every lora_B non-zero values (PEFT's zero init would make A's gradient vanish).
void randomize_b(model::Model& m, uint64_t seed) {
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(seed);
  std::map<std::string, at::Tensor> v;
  for (auto& p : m.lora_parameters())
    if (p.name.find("lora_B") != std::string::npos) v[p.name] = 0.3 * at::randn(p.param.sizes(), g, at::kFloat);
  m.load_lora_weights(v, "test", /*strict=*/false);
}

// Moves every DoRA magnitude off its initial norm (by up to about 20%), so that m / ||W + s B A||
// is not 1 and the magnitude's gradient path is exercised.
void randomize_magnitude(model::Model& m, uint64_t seed) {
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(seed);
  std::map<std::string, at::Tensor> v;
  for (auto& p : m.lora_parameters())
    if (p.name.ends_with("lora_magnitude_vector"))
      v[p.name] = p.param.detach() * (1 + 0.1 * at::randn(p.param.sizes(), g, at::kFloat));
  m.load_lora_weights(v, "test", /*strict=*/false);
}

std::map<std::string, at::Tensor> lora_values(const model::Model& m) {
  std::map<std::string, at::Tensor> v;
  for (auto& p : m.lora_parameters()) v[p.name] = p.param.detach().clone();
  return v;
}

// Forward + chunked loss + backward; returns the loss sum and leaves grads in the parameters.
double step(model::Model& m, const test::Batch& b) {
  for (auto& p : m.lora_parameters()) p.param.mutable_grad() = at::Tensor();
  at::Tensor h = m.forward(b.input_ids, b.position_ids, b.segment_ids);
  model::LossSum l = m.loss(h, b.labels);
  l.sum.backward();
  return l.sum.item<double>();
}

// The same with Model::forward_loss, the path the trainer runs.
double step_forward_loss(model::Model& m, const test::Batch& b) {
  for (auto& p : m.lora_parameters()) p.param.mutable_grad() = at::Tensor();
  model::LossSum l = m.forward_loss(b.input_ids, b.labels, b.position_ids, b.segment_ids);
  l.sum.backward();
  return l.sum.item<double>();
}

struct PeftCase {
  std::string family;
  bool quantize;
  int64_t r;
  double alpha;
  std::vector<std::string> targets;
  bool rslora;
  bool checkpointing;
  int64_t ce_chunk;
  std::vector<std::string> params = {};  // lora_target_parameters
  std::vector<std::string> modules_to_save = {};
  bool dora = false;  // use_dora
};

void check_against_peft(const PeftCase& pc) {
  config::LoraConfig lc = lora_cfg(pc.r, pc.alpha, pc.targets, pc.rslora, 0.0, pc.params);
  lc.use_dora = pc.dora;
  lc.modules_to_save = pc.modules_to_save;
  model::Model m = test::load_fixture(pc.family, pc.quantize, lc);
  m.training = true;
  m.gradient_checkpointing = pc.checkpointing;
  m.ce_chunk_tokens = pc.ce_chunk;
  randomize_b(m, 11);
  if (pc.dora) randomize_magnitude(m, 12);
  test::Batch b = test::make_batch(m.config.vocab_size, 12, 3);
  const double loss = step_forward_loss(m, b);  // PEFT judges the trainer's path

  stdfs::path w = test::temp_dir();
  test::write_batch(b, w / "in.safetensors");
  std::map<std::string, at::Tensor> adapter = lora_values(m);
  model::add_tied_saved_alias(m, adapter);
  test::write_tensors(adapter, w / "lora.safetensors");
  std::string targets;
  for (const auto& t : pc.targets) targets += (targets.empty() ? "" : ",") + t;
  std::vector<std::string> args = {"grads",
                                   (test::model_fixtures() / pc.family).string(),
                                   (w / "in.safetensors").string(),
                                   (w / "grads.safetensors").string(),
                                   "--lora",
                                   (w / "lora.safetensors").string(),
                                   "--r",
                                   std::to_string(pc.r),
                                   "--alpha",
                                   std::to_string(pc.alpha),
                                   "--targets",
                                   targets};
  if (pc.rslora) args.push_back("--rslora");
  if (pc.dora) args.push_back("--dora");
  if (!pc.params.empty()) {
    std::string p;
    for (const auto& t : pc.params) p += (p.empty() ? "" : ",") + t;
    args.push_back("--target-parameters");
    args.push_back(p);
  }
  if (!pc.modules_to_save.empty()) {
    std::string p;
    for (const auto& t : pc.modules_to_save) p += (p.empty() ? "" : ",") + t;
    args.push_back("--modules-to-save");
    args.push_back(p);
  }
  if (pc.quantize) {
    test::write_tensors(m.dequantized_state_dict(at::kFloat), w / "weights.safetensors");
    args.push_back("--weights");
    args.push_back((w / "weights.safetensors").string());
  }
  test::ProcResult r = test::model_ref(args);
  ASSERT_EQ(r.code, 0);
  auto ref = test::read_tensors(w / "grads.safetensors");
  EXPECT_NEAR(loss, ref["loss_sum"].item<double>(), 1e-4 * std::abs(loss));
  auto params = m.lora_parameters();
  ASSERT_EQ(params.size() + 1, ref.size());  // every A and B (DoRA magnitude, saved module), plus loss_sum
  for (auto& p : params) {
    SCOPED_TRACE(p.name);
    ASSERT_TRUE(ref.count(p.name));
    ASSERT_TRUE(p.param.grad().defined());
    EXPECT_GT(ref[p.name].abs().max().item<double>(), 0.0);
    EXPECT_LE(test::rel_err(p.param.grad(), ref[p.name]), 1e-3);
  }
}

}  // namespace

// lora_modules_to_save: the trainable copies' gradients (the embedding's from the lookup, the
// output head's through the chunked cross-entropy) and the LoRA gradients, against PEFT's
// ModulesToSaveWrapper on the same model.
TEST(ModulesToSave, GradientsEqualPeftOnTiedNF4Base) {
  // llama's fixture ties its embeddings: one copy serves both (PEFT's ensure_weight_tying)
  check_against_peft({"llama", /*quantize=*/true, 4, 8, {"q_proj", "v_proj"}, false, false, 7, {}, {"lm_head"}});
}

TEST(ModulesToSave, GradientsEqualPeftWithCheckpointingUntied) {
  check_against_peft({"mistral",
                      /*quantize=*/true,
                      2,
                      4,
                      {"o_proj", "down_proj"},
                      false,
                      /*checkpointing=*/true,
                      5,
                      {},
                      {"embed_tokens", "lm_head"}});
}

TEST(ModulesToSave, GradientsEqualPeftUnchunked16Bit) {
  check_against_peft(
      {"qwen2", /*quantize=*/false, 2, 4, {"q_proj"}, false, false, /*ce_chunk=*/-1, {}, {"model.embed_tokens"}});
}

TEST(ModulesToSave, NamesAndTying) {
  config::LoraConfig lc = lora_cfg(2, 4, {"q_proj"});
  lc.modules_to_save = {"embed_tokens", "lm_head"};
  model::Model untied = test::load_fixture("mistral", true, lc);
  auto ps = untied.lora_parameters();
  ASSERT_EQ(ps.size(), 2u * 2 + 2);
  EXPECT_EQ(ps[4].name, "base_model.model.model.embed_tokens.weight");
  EXPECT_EQ(ps[5].name, "base_model.model.lm_head.weight");
  EXPECT_TRUE(ps[4].param.is_same(untied.embed_tokens));
  EXPECT_TRUE(ps[5].param.is_same(untied.lm_head));
  model::Model tied = test::load_fixture("llama", true, lc);
  ps = tied.lora_parameters();
  ASSERT_EQ(ps.size(), 2u * 2 + 1);  // one copy for the tied pair
  EXPECT_EQ(ps[4].name, "base_model.model.model.embed_tokens.weight");
  EXPECT_TRUE(tied.lm_head.is_same(tied.embed_tokens));
  // An adapter PEFT saved with ensure_weight_tying false trains the embedding apart.
  lc.modules_to_save = {"embed_tokens"};
  lc.ensure_weight_tying = false;
  model::Model apart = test::load_fixture("llama", true, lc);
  EXPECT_FALSE(apart.lm_head.requires_grad());
  EXPECT_FALSE(apart.lm_head.is_same(apart.embed_tokens));
  lc.modules_to_save = {"norm"};
  EXPECT_THROW(test::load_fixture("llama", true, lc), UserError);
}

TEST(Lora, NamesAreThoseOfPeft) {
  model::Model m = test::load_fixture("qwen3", true, lora_cfg(4, 8, {"q_proj", "down_proj"}));
  auto ps = m.lora_parameters();
  ASSERT_EQ(ps.size(), 2u * 2 * 2);  // 2 modules x 2 layers x (A, B)
  EXPECT_EQ(ps[0].name, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
  EXPECT_EQ(ps[1].name, "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight");
  EXPECT_EQ(ps[2].name, "base_model.model.model.layers.0.mlp.down_proj.lora_A.weight");
  EXPECT_EQ(ps[0].param.sizes(), (std::vector<int64_t>{4, 64}));
  EXPECT_EQ(ps[1].param.sizes(), (std::vector<int64_t>{96, 4}));
  EXPECT_EQ(ps[3].param.sizes(), (std::vector<int64_t>{64, 4}));
  for (auto& p : ps) EXPECT_TRUE(p.param.requires_grad());
  EXPECT_EQ(m.lora_target_modules(), (std::vector<std::string>{"q_proj", "down_proj"}));
}

TEST(Lora, InitIsPeftsKaimingUniformAndZeroB) {
  const auto cfg = lora_cfg(4, 8, {"all-linear"});
  model::Model m = test::load_fixture("llama", true, cfg);
  stdfs::path w = test::temp_dir();
  ASSERT_EQ(test::model_ref({"init", (test::model_fixtures() / "llama").string(), (w / "init.json").string(), "--r",
                             "4", "--targets", "all-linear"})
                .code,
            0);
  auto peft = nlohmann::json::parse(fs::read_file(w / "init.json"));
  ASSERT_EQ(peft.size(), m.linears().size());
  for (const model::Linear* l : m.linears()) {
    SCOPED_TRACE(l->name);
    ASSERT_TRUE(l->lora);
    const auto& ref = peft[l->name];  // [max |A|, fan_in, max |B|]
    ASSERT_EQ(ref[1].get<int64_t>(), l->in_features);
    const double bound = 1.0 / std::sqrt(static_cast<double>(l->in_features));
    const at::Tensor A = l->lora->A.detach();
    const double ours = A.abs().max().item<double>();
    // Both draw uniformly in ±1/sqrt(in): the largest |A| of >= 4*35 draws is near the bound.
    EXPECT_LE(ours, bound * (1 + 1e-6));
    EXPECT_GE(ours, 0.8 * bound);
    EXPECT_LE(ref[0].get<double>(), bound * (1 + 1e-6));
    EXPECT_GE(ref[0].get<double>(), 0.8 * bound);
    EXPECT_NEAR(A.var().item<double>(), bound * bound / 3, 0.35 * bound * bound / 3);
    EXPECT_EQ(ref[2].get<double>(), 0.0);
    EXPECT_EQ(l->lora->B.detach().abs().max().item<double>(), 0.0);
    EXPECT_DOUBLE_EQ(l->lora->scaling, 2.0);
  }
  // Seeded: the same seed gives the same adapters, another seed others.
  model::Model same = test::load_fixture("llama", true, cfg, 42), other = test::load_fixture("llama", true, cfg, 43);
  EXPECT_TRUE(at::equal(same.linears()[3]->lora->A, m.linears()[3]->lora->A));
  EXPECT_FALSE(at::equal(other.linears()[3]->lora->A, m.linears()[3]->lora->A));
}

TEST(Lora, GradientsEqualPeftOnNF4Base) {
  check_against_peft({"llama", /*quantize=*/true, 4, 8, {"all-linear"}, false, /*checkpointing=*/false, 7});
}

TEST(Lora, GradientsEqualPeftOn16BitBaseWithRsLora) {
  check_against_peft({"qwen3", /*quantize=*/false, 3, 5, {"q_proj", "v_proj", "down_proj"}, /*rslora=*/true, false, 0});
}

TEST(Lora, GradientsEqualPeftWithCheckpointingAndSlidingWindow) {
  check_against_peft({"mistral",
                      /*quantize=*/true,
                      2,
                      4,
                      {"k_proj", "o_proj", "gate_proj", "up_proj"},
                      false,
                      /*checkpointing=*/true,
                      5});
}

TEST(Lora, GradientsEqualPeftOnQwen2) {
  check_against_peft({"qwen2", /*quantize=*/true, 4, 16, {"all-linear"}, false, /*checkpointing=*/true, 0});
}

TEST(Lora, GradientsEqualPeftOnPhi3FusedProjections) {
  // all-linear is qkv_proj, o_proj, gate_up_proj, down_proj: one adapter on each fused module.
  check_against_peft({"phi3", /*quantize=*/true, 4, 8, {"all-linear"}, false, /*checkpointing=*/true, 0});
  check_against_peft({"phi3", /*quantize=*/false, 2, 4, {"qkv_proj", "gate_up_proj"}, false, false, 5});
}

// DoRA: outputs (the loss) and the gradients of A, B and the magnitude against PEFT's DoRA on
// the same NF4 base (PEFT given its dequantized weights), with checkpointing and chunked loss, on
// a family with biases (qwen2) and on a 16-bit base with rsLoRA.
TEST(Lora, DoraGradientsEqualPeftOnNF4Base) {
  check_against_peft({"llama", /*quantize=*/true, 4, 8, {"all-linear"}, false, false, 7, {}, {}, /*dora=*/true});
  check_against_peft(
      {"qwen2", /*quantize=*/true, 4, 16, {"all-linear"}, false, /*checkpointing=*/true, 5, {}, {}, true});
}

TEST(Lora, DoraGradientsEqualPeftOn16BitBaseWithRsLora) {
  check_against_peft(
      {"qwen3", /*quantize=*/false, 3, 5, {"q_proj", "v_proj", "down_proj"}, true, false, 0, {}, {}, true});
}

// The magnitude PEFT initializes is ||W + scaling B A|| per row of the dequantized NF4 base: with
// B = 0 (init true), and with PEFT's own random B (init false) given to our norm.
TEST(Lora, DoraMagnitudeInitIsPefts) {
  for (const char* init : {"true", "false"}) {
    SCOPED_TRACE(init);
    config::LoraConfig lc = lora_cfg(4, 8, {"all-linear"});
    lc.use_dora = true;
    lc.init_lora_weights = init;
    model::Model m = test::load_fixture("mistral", true, lc);
    stdfs::path w = test::temp_dir();
    test::write_tensors(m.dequantized_state_dict(at::kFloat), w / "weights.safetensors");
    ASSERT_EQ(
        test::model_ref({"dora_init", (test::model_fixtures() / "mistral").string(), (w / "peft.safetensors").string(),
                         "--weights", (w / "weights.safetensors").string(), "--r", "4", "--alpha", "8", "--init", init})
            .code,
        0);
    auto ref = test::read_tensors(w / "peft.safetensors");
    auto params = m.lora_parameters();
    ASSERT_EQ(params.size(), ref.size());
    if (std::string(init) == "false") {  // PEFT's A and B into ours; our norm of them against PEFT's
      std::map<std::string, at::Tensor> ab;
      for (auto& [k, v] : ref)
        if (!k.ends_with("lora_magnitude_vector")) ab[k] = v;
      m.load_lora_weights(ab, "peft", /*strict=*/false);
    }
    int checked = 0;
    for (const model::Linear* l : m.linears()) {
      SCOPED_TRACE(l->name);
      const std::string key = io::peft_lora_key(l->name, 'M');
      ASSERT_TRUE(ref.count(key));
      const at::Tensor ours =
          std::string(init) == "true" ? l->lora->magnitude.detach() : model::dora_weight_norm(&*l->nf4, {}, *l->lora);
      EXPECT_EQ(ours.scalar_type(), at::kFloat);
      EXPECT_LE(test::rel_err(ours, ref[key]), 1e-6);
      ++checked;
    }
    EXPECT_EQ(checked, 14);  // 2 layers x 7 projections
  }
}

TEST(Lora, GradientsEqualPeftOnMixturesOfExperts) {
  // Attention adapters on NF4 experts (mixtral, qwen3_moe); qwen2_moe's shared expert is a
  // dense MLP PEFT adapts under its own gate_proj / down_proj names.
  // (PEFT's all-linear would also adapt the routers and the fused expert tensors; ours adapts
  // attention and shared experts only, so the targets are named.)
  check_against_peft(
      {"mixtral", /*quantize=*/true, 4, 8, {"q_proj", "k_proj", "v_proj", "o_proj"}, false, /*checkpointing=*/true, 0});
  check_against_peft(
      {"qwen2_moe", /*quantize=*/true, 2, 4, {"q_proj", "v_proj", "gate_proj", "down_proj"}, false, false, 5});
  check_against_peft({"qwen3_moe", /*quantize=*/false, 3, 6, {"q_proj", "k_proj", "o_proj"}, false, false, 0});
}

namespace {

struct AuxCase {
  std::string family;
  bool quantize;
  std::vector<std::string> targets;
  bool checkpointing;
  int64_t ce_chunk;
};

// With output_router_logits, transformers' loss is mean CE + coef * load-balancing loss over every
// layer's router logits of the unpadded tokens. One forward of a right-padded batch through
// transformers + PEFT judges the loss, the aux loss and every LoRA gradient of
// forward_loss(...).sum / count + coef * aux.
void check_aux_against_transformers(const AuxCase& ac) {
  const double coef = 0.5;  // large, so that the aux term moves the gradients well past the tolerance
  model::Model m = test::load_fixture(ac.family, ac.quantize, lora_cfg(2, 4, ac.targets));
  m.training = true;
  m.router_aux_loss = true;
  m.gradient_checkpointing = ac.checkpointing;
  m.ce_chunk_tokens = ac.ce_chunk;
  randomize_b(m, 5);
  const int64_t B = 3, T = 10;
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(3);
  at::Tensor ids = at::randint(m.config.vocab_size, {B, T}, g, at::kLong);
  at::Tensor mask = at::ones({B, T}, at::kLong);
  mask[1].slice(0, 7).fill_(0);
  mask[2].slice(0, 4).fill_(0);
  at::Tensor labels = ids.masked_fill(mask == 0, -100);
  labels[0][2] = -100;
  labels[1][5] = -100;
  at::Tensor pos = at::arange(T, at::kLong).repeat({B, 1});

  auto run = [&](bool with_aux) {
    for (auto& p : m.lora_parameters()) p.param.mutable_grad() = at::Tensor();
    model::LossSum l = m.forward_loss(ids, labels, pos, {}, mask);
    EXPECT_TRUE(l.aux.defined());
    at::Tensor ce = l.sum / l.count.item<double>();
    at::Tensor total = with_aux ? ce + coef * l.aux : ce;
    total.backward();
    std::map<std::string, at::Tensor> grads;
    for (auto& p : m.lora_parameters()) grads[p.name] = p.param.grad().clone();
    return std::make_tuple(total.item<double>(), l.aux.item<double>(), grads);
  };
  auto [ce_only, aux0, grads_ce] = run(false);
  auto [loss, aux, grads] = run(true);
  EXPECT_EQ(aux0, aux);

  stdfs::path w = test::temp_dir();
  test::write_tensors({{"input_ids", ids}, {"attention_mask", mask}, {"labels", labels}}, w / "in.safetensors");
  test::write_tensors(lora_values(m), w / "lora.safetensors");
  std::string targets;
  for (const auto& t : ac.targets) targets += (targets.empty() ? "" : ",") + t;
  std::vector<std::string> args = {"aux",
                                   (test::model_fixtures() / ac.family).string(),
                                   (w / "in.safetensors").string(),
                                   (w / "out.safetensors").string(),
                                   "--lora",
                                   (w / "lora.safetensors").string(),
                                   "--r",
                                   "2",
                                   "--alpha",
                                   "4",
                                   "--targets",
                                   targets,
                                   "--coef",
                                   std::to_string(coef)};
  if (ac.quantize) {
    test::write_tensors(m.dequantized_state_dict(at::kFloat), w / "weights.safetensors");
    args.push_back("--weights");
    args.push_back((w / "weights.safetensors").string());
  }
  test::ProcResult r = test::model_ref(args);
  ASSERT_EQ(r.code, 0) << r.output;
  auto ref = test::read_tensors(w / "out.safetensors");
  const double ref_aux = ref["aux_loss"].item<double>();
  EXPECT_NEAR(aux, ref_aux, 1e-5 * ref_aux);
  EXPECT_NEAR(loss, ref["loss"].item<double>(), 1e-5 * std::abs(loss));
  EXPECT_GT(std::abs(loss - ce_only), 0.1);
  double moved = 0;  // how far the aux term moves the gradients
  ASSERT_EQ(grads.size() + 2, ref.size());
  for (auto& [name, gr] : grads) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(ref.count(name));
    EXPECT_LE(test::rel_err(gr, ref[name]), 1e-3);
    moved = std::max(moved, test::rel_err(grads_ce[name], ref[name]));
  }
  EXPECT_GT(moved, 1e-2);
}

}  // namespace

TEST(Lora, RouterLoadBalancingLossEqualsTransformers) {
  // mixtral: NF4 experts, checkpointed blocks (the router logits leave each block), 4-token CE chunks.
  check_aux_against_transformers({"mixtral", /*quantize=*/true, {"q_proj", "v_proj"}, /*checkpointing=*/true, 4});
  // qwen2_moe: the shared expert's adapters too; qwen3_moe: 16-bit base, renormalized top 3.
  check_aux_against_transformers({"qwen2_moe", /*quantize=*/true, {"k_proj", "o_proj", "up_proj"}, false, 0});
  check_aux_against_transformers({"qwen3_moe", /*quantize=*/false, {"q_proj", "k_proj", "v_proj", "o_proj"}, true, 0});
}

TEST(Lora, RouterLoadBalancingLossIsOffByDefault) {
  model::Model m = test::load_fixture("mixtral", true, lora_cfg(2, 4, {"q_proj"}));
  EXPECT_FALSE(m.config.output_router_logits);  // transformers' default, as the fixture's config.json
  EXPECT_DOUBLE_EQ(m.config.router_aux_loss_coef, 0.001);
  test::Batch b = test::make_batch(m.config.vocab_size, 12, 3);
  model::LossSum off = m.forward_loss(b.input_ids, b.labels, b.position_ids, b.segment_ids);
  EXPECT_FALSE(off.aux.defined());
  m.router_aux_loss = true;
  model::LossSum on = m.forward_loss(b.input_ids, b.labels, b.position_ids, b.segment_ids);
  ASSERT_TRUE(on.aux.defined());
  EXPECT_NEAR(on.sum.item<double>(), off.sum.item<double>(), 1e-5 * off.sum.item<double>());
  EXPECT_GT(on.aux.item<double>(), 0.0);
  EXPECT_TRUE(on.aux.requires_grad());
}

// lora_target_parameters: PEFT's ParamWrapper on transformers' fused expert tensors, one stacked
// adapter per tensor and layer, sliced per expert; the keys are PEFT's (the reference checks that
// its saved state dict has exactly ours), the gradients within 1e-3.
TEST(Lora, GradientsEqualPeftOnExpertTensors) {
  check_against_peft({"mixtral",
                      /*quantize=*/true,
                      2,
                      4,
                      {"q_proj"},
                      false,
                      /*checkpointing=*/true,
                      0,
                      {"experts.gate_up_proj", "experts.down_proj"}});
  check_against_peft({"qwen2_moe", /*quantize=*/true, 3, 6, {"gate_proj"}, false, false, 5, {"mlp.experts.down_proj"}});
  check_against_peft({"qwen3_moe", /*quantize=*/false, 2, 8, {"v_proj"}, /*rslora=*/true, false, 0, {"gate_up_proj"}});
}

TEST(Lora, ExpertTensorAdaptersArePeftsLayout) {
  const int64_t r = 3;
  model::Model m = test::load_fixture(
      "mixtral", true, lora_cfg(r, 6, {"q_proj"}, false, 0.0, {"experts.gate_up_proj", "experts.down_proj"}));
  const int64_t E = m.config.num_experts, H = m.config.hidden_size, I = m.config.moe_intermediate_size;
  std::map<std::string, std::vector<int64_t>> shapes;
  for (auto& p : m.lora_parameters()) shapes[p.name] = p.param.sizes().vec();
  const std::string p0 = "base_model.model.model.layers.0.mlp.experts.";
  EXPECT_EQ(shapes[p0 + "base_layer.lora_A.weight"], (std::vector<int64_t>{r * E, H}));  // gate_up_proj
  EXPECT_EQ(shapes[p0 + "base_layer.lora_B.weight"], (std::vector<int64_t>{2 * I, r * E}));
  EXPECT_EQ(shapes[p0 + "lora_A.weight"], (std::vector<int64_t>{r * E, I}));  // down_proj
  EXPECT_EQ(shapes[p0 + "lora_B.weight"], (std::vector<int64_t>{H, r * E}));
  EXPECT_EQ(shapes.size(), 2u * 2 * 3);  // q_proj, gate_up, down in 2 layers
  // Only one tensor: no nesting.
  model::Model d = test::load_fixture("qwen3_moe", true, lora_cfg(r, 6, {"q_proj"}, false, 0.0, {"down_proj"}));
  int64_t experts = 0;
  for (auto& p : d.lora_parameters())
    if (p.name.find(".mlp.experts.lora_") != std::string::npos) ++experts;
  EXPECT_EQ(experts, 2 * 2);
  // Errors: not an expert tensor, a dense model.
  for (const auto& [family, target, expected] : std::vector<std::tuple<std::string, std::string, std::string>>{
           {"mixtral", "experts.w1", "\"experts.w1\" names no expert tensor"},
           {"llama", "experts.down_proj", "llama is not a mixture of experts"}}) {
    try {
      test::load_fixture(family, true, lora_cfg(r, 6, {"q_proj"}, false, 0.0, {target}));
      ADD_FAILURE() << "no error for " << target;
    } catch (const UserError& e) { EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what(); }
  }
}

TEST(Lora, ExpertsOfAMixtureAreNotAdapted) {
  config::LoraConfig all = lora_cfg(4, 8, {"all-linear"});
  model::Model m = test::load_fixture("qwen2_moe", true, all);
  for (const model::Linear* l : m.linears())
    EXPECT_EQ(l->lora.has_value(), l->name.find(".experts.") == std::string::npos) << l->name;
  EXPECT_EQ(m.lora_target_modules(),
            (std::vector<std::string>{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}));
  try {
    test::load_fixture("mixtral", true, lora_cfg(4, 8, {"q_proj", "w1"}));
    ADD_FAILURE() << "no error";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("\"w1\" names the experts of a mixture of experts"), std::string::npos)
        << e.what();
  }
}

// Gemma 2: soft-capped attention scores and logits (the chunked loss's own backward through the
// cap, 5 tokens a chunk), sliding layers, (1 + w) norms, GeGLU, scaled embeddings.
TEST(Lora, GradientsEqualPeftOnGemma2) {
  check_against_peft({"gemma2", /*quantize=*/true, 4, 8, {"all-linear"}, false, /*checkpointing=*/true, 5});
}

// Gemma 3: q/k norms, local and global RoPE tables, final soft-cap, untied lm_head.
TEST(Lora, GradientsEqualPeftOnGemma3) {
  check_against_peft({"gemma3", /*quantize=*/false, 3, 6, {"q_proj", "k_proj", "o_proj", "up_proj"}, false, false, 0});
}

TEST(Lora, BadTargetsAndValuesAreUserErrors) {
  auto msg = [](const config::LoraConfig& c) {
    try {
      test::load_fixture("qwen2", true, c);
    } catch (const UserError& e) { return std::string(e.what()); }
    return std::string();
  };
  std::string e = msg(lora_cfg(4, 8, {"q_proj", "qkv_proj"}));
  EXPECT_NE(e.find("\"qkv_proj\" matches no linear layer"), std::string::npos) << e;
  EXPECT_NE(e.find("q_proj, k_proj"), std::string::npos) << e;
  EXPECT_NE(msg(lora_cfg(0, 8, {"q_proj"})).find("lora_r"), std::string::npos);
  EXPECT_NE(msg(lora_cfg(4, 8, {"q_proj"}, false, 1.0)).find("lora_dropout"), std::string::npos);
  EXPECT_NE(msg(lora_cfg(4, 8, {})).find("lora_target_modules"), std::string::npos);

  model::Model m = test::load_fixture("qwen2", true, lora_cfg(4, 8, {"q_proj"}));
  std::map<std::string, at::Tensor> v = {
      {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", at::zeros({4, 7})}};
  try {
    m.load_lora_weights(v, "adapter.safetensors", false);
    ADD_FAILURE() << "no error";
  } catch (const UserError& err) {
    EXPECT_NE(std::string(err.what())
                  .find("adapter.safetensors: base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight: shape"),
              std::string::npos)
        << err.what();
  }
  EXPECT_THROW(m.load_lora_weights({}, "adapter.safetensors", true), UserError);
}

TEST(Checkpointing, GradsEqualWithoutAndDropoutReplays) {
  const auto cfg = lora_cfg(4, 8, {"all-linear"}, false, /*dropout=*/0.2);
  test::Batch b = test::make_batch(61, 12, 5);
  std::vector<std::map<std::string, at::Tensor>> grads;
  std::vector<double> losses;
  for (bool ckpt : {false, true}) {
    model::Model m = test::load_fixture("llama", true, cfg, 42);
    randomize_b(m, 3);
    m.training = true;
    m.gradient_checkpointing = ckpt;
    losses.push_back(step(m, b));
    std::map<std::string, at::Tensor> g;
    for (auto& p : m.lora_parameters()) g[p.name] = p.param.grad().clone();
    grads.push_back(g);
  }
  EXPECT_EQ(losses[0], losses[1]);
  for (auto& [k, g] : grads[0]) EXPECT_LE(test::rel_err(grads[1][k], g), 1e-6) << k;

  // Dropout really is active (so the replay was tested): without it the gradients differ.
  model::Model m = test::load_fixture("llama", true, lora_cfg(4, 8, {"all-linear"}), 42);
  randomize_b(m, 3);
  m.training = true;
  step(m, b);
  double max_diff = 0;
  for (auto& p : m.lora_parameters()) max_diff = std::max(max_diff, test::rel_err(p.param.grad(), grads[0][p.name]));
  EXPECT_GT(max_diff, 1e-2);
}

// forward_loss (padding left out, last block pruned to the label rows, plain causal attention
// when each row is one sample) against loss(forward()) on the same batch: loss and every LoRA
// gradient. Batches: packed rows (two segments, no padding), right padding, and both at once;
// NF4 and 16-bit bases; with and without checkpointing; packed rows through the block-diagonal
// mask and through per-sequence (variable-length) attention; llama and qwen3 (q/k norms).
// Padding positions hold junk ids and labels that must not count.
TEST(ForwardLoss, EqualsForwardThenLoss) {
  const int64_t T = 12;
  test::Batch packed = test::make_batch(61, T, 5);
  test::Batch padded = packed;  // one sample per row, rows padded on the right
  padded.segment_ids = at::ones({2, T}, at::kLong);
  padded.position_ids = at::arange(T, at::kLong).repeat({2, 1});
  padded.labels = padded.input_ids.clone();
  padded.labels[0][0] = -100;
  padded.labels[1].slice(0, 0, 4).fill_(-100);
  at::Tensor pad_mask = at::ones({2, T}, at::kLong);
  pad_mask[0].slice(0, 9).fill_(0);
  pad_mask[1].slice(0, 5).fill_(0);
  padded.segment_ids.masked_fill_(pad_mask == 0, 0);
  test::Batch mixed = packed;  // packed row 1 plus padding at its end
  at::Tensor mixed_mask = at::ones({2, T}, at::kLong);
  mixed_mask[1].slice(0, T - 2).fill_(0);
  mixed.segment_ids = packed.segment_ids + 1;
  mixed.segment_ids.masked_fill_(mixed_mask == 0, 0);

  struct Case {
    const char* name;
    test::Batch b;
    at::Tensor mask;
  };
  for (const Case& c :
       {Case{"packed", packed, at::Tensor()}, Case{"padded", padded, pad_mask}, Case{"mixed", mixed, mixed_mask}}) {
    for (bool quantize : {true, false}) {
      for (bool ckpt : {false, true}) {
        for (int varlen : {0, 1}) {  // packed rows: block-diagonal mask, or attention per sequence
          // qwen3: q/k norms on [N, heads, D] too; phi3: fused projections, partial rotary, longrope;
          // gemma2: soft-capped attention (always the mask); gemma3: local/global RoPE tables
          for (const char* family : {"llama", "qwen3", "phi3", "gemma2", "gemma3"}) {
            if (!quantize && std::string(family) != "llama") continue;
            SCOPED_TRACE(std::string(c.name) + (quantize ? " nf4" : " 16-bit") + (ckpt ? " checkpointed" : "") +
                         (varlen ? " varlen" : " mask") + " " + family);
            model::Model m = test::load_fixture(family, quantize, lora_cfg(4, 8, {"all-linear"}), 42);
            randomize_b(m, 3);
            m.training = true;
            m.gradient_checkpointing = ckpt;
            m.varlen_attention = varlen;
            test::Batch ref = c.b;
            if (c.mask.defined()) ref.labels = ref.labels.masked_fill(c.mask == 0, -100);
            const double want = step(m, ref);
            std::map<std::string, at::Tensor> g;
            for (auto& p : m.lora_parameters()) g[p.name] = p.param.grad().clone();
            at::Tensor want_count =
                m.loss(m.forward(ref.input_ids, ref.position_ids, ref.segment_ids), ref.labels).count;

            for (auto& p : m.lora_parameters()) p.param.mutable_grad() = at::Tensor();
            model::LossSum l = m.forward_loss(c.b.input_ids, c.b.labels, c.b.position_ids, c.b.segment_ids, c.mask);
            l.sum.backward();
            EXPECT_EQ(l.count.item<int64_t>(), want_count.item<int64_t>());
            EXPECT_NEAR(l.sum.item<double>(), want, 1e-5 * std::abs(want));
            for (auto& p : m.lora_parameters()) EXPECT_LE(test::rel_err(p.param.grad(), g[p.name]), 1e-5) << p.name;
          }
        }
      }
    }
  }
}

// Gemma 3's two RoPE tables on the per-sequence (variable-length) attention path: with the window
// widened past every sequence (so that path is taken) it gives the block-diagonal mask path's loss
// and gradients; Gemma 2's soft-capped attention never takes it (the same numbers either way).
TEST(ForwardLoss, GemmaVarlenEqualsMask) {
  test::Batch b = test::make_batch(61, 12, 5);
  for (const char* family : {"gemma3", "gemma2"}) {
    SCOPED_TRACE(family);
    std::map<std::string, at::Tensor> want;
    double want_loss = 0;
    for (int varlen : {0, 1}) {
      model::Model m = test::load_fixture(family, true, lora_cfg(4, 8, {"all-linear"}), 42);
      m.config.sliding_window = 64;
      randomize_b(m, 3);
      m.training = true;
      m.varlen_attention = varlen;
      const double loss = step_forward_loss(m, b);
      if (varlen == 0) {
        want_loss = loss;
        for (auto& p : m.lora_parameters()) want[p.name] = p.param.grad().clone();
        continue;
      }
      EXPECT_NEAR(loss, want_loss, 1e-5 * std::abs(want_loss));
      for (auto& p : m.lora_parameters()) EXPECT_LE(test::rel_err(p.param.grad(), want[p.name]), 1e-5) << p.name;
    }
  }
}

// gradient_checkpointing: offload holds each block's input outside the block (pinned host memory
// on a GPU; a separate tensor on the CPU) and copies it back for the recompute: the same loss and
// gradients, bit for bit, as plain checkpointing (dropout on, so the replayed masks matter too).
TEST(ForwardLoss, OffloadedCheckpointsEqualCheckpoints) {
  test::Batch b = test::make_batch(61, 12, 5);
  std::map<std::string, at::Tensor> want;
  double want_loss = 0;
  for (bool offload : {false, true}) {
    model::Model m = test::load_fixture("llama", true, lora_cfg(4, 8, {"all-linear"}, false, 0.1), 42);
    randomize_b(m, 3);
    m.training = true;
    m.gradient_checkpointing = true;
    m.checkpoint_offload = offload;
    const double loss = step_forward_loss(m, b);
    if (!offload) {
      want_loss = loss;
      for (auto& p : m.lora_parameters()) want[p.name] = p.param.grad().clone();
      continue;
    }
    EXPECT_EQ(loss, want_loss);
    for (auto& p : m.lora_parameters()) EXPECT_TRUE(at::equal(p.param.grad(), want[p.name])) << p.name;
  }
}

// The fused LoRA linear (one autograd node, dropout mask recomputed from its seed) against the
// plain composition base(x) + bias + (x * keep / (1-p)) A^T B^T * s with keep from the tensor-op
// mask: output and the gradients of x, A and B. NF4 (small-M fused and tiled paths) and dense
// bases, with and without bias and dropout, and an x that takes no gradient.
TEST(LoraLinear, FusedEqualsComposition) {
  at::manual_seed(3);
  const int64_t K = 64, N = 96, r = 4;
  const uint64_t seed = 77;
  at::Tensor w = at::randn({N, K}) * 0.1;
  kernels::NF4Tensor q = kernels::nf4_quantize(w, 64, true);
  at::Tensor wd = kernels::nf4_dequantize(q, at::kFloat);
  at::Tensor bias = at::randn({N});
  int cases = 0;
  for (bool use_nf4 : {true, false})
    for (bool with_bias : {false, true})
      for (double p : {0.0, 0.3})
        for (int64_t M : {3, 40})
          for (bool x_grad : {true, false}) {
            SCOPED_TRACE(std::string(use_nf4 ? "nf4" : "dense") + (with_bias ? " bias" : "") +
                         " p=" + std::to_string(p) + " M=" + std::to_string(M) + (x_grad ? "" : " x frozen"));
            model::LoraAdapter a;
            a.A = (at::randn({r, K}) * 0.1).requires_grad_(true);
            a.B = (at::randn({N, r}) * 0.1).requires_grad_(true);
            a.scaling = 2.0;
            a.dropout = p;
            const at::Tensor b = with_bias ? bias : at::Tensor();
            at::Tensor x0 = at::randn({2, M, K});
            at::Tensor x1 = x0.clone().requires_grad_(x_grad), x2 = x0.clone().requires_grad_(x_grad);
            at::Tensor y = model::lora_linear(x1, use_nf4 ? &q : nullptr, wd, b, a, p, seed);
            ASSERT_TRUE(y.requires_grad());
            at::Tensor g = at::randn(y.sizes());
            (y * g).sum().backward();
            at::Tensor gA = a.A.grad().clone(), gB = a.B.grad().clone();
            a.A.mutable_grad() = at::Tensor();
            a.B.mutable_grad() = at::Tensor();

            at::Tensor keep = p > 0 ? kernels::hashed_dropout_keep_mask(x0.sizes(), p, seed, at::kCPU)
                                    : at::ones(x0.sizes(), at::kBool);
            at::Tensor xd = x2 * keep * static_cast<double>(static_cast<float>(1.0 / (1.0 - p)));
            at::Tensor y2 = at::matmul(x2, wd.t()) + at::matmul(at::matmul(xd, a.A.t()), a.B.t()) * a.scaling;
            if (b.defined()) y2 = y2 + b;
            (y2 * g).sum().backward();
            EXPECT_LE(test::rel_err(y, y2), 1e-5);
            EXPECT_LE(test::rel_err(gA, a.A.grad()), 1e-5);
            EXPECT_LE(test::rel_err(gB, a.B.grad()), 1e-5);
            if (x_grad) { EXPECT_LE(test::rel_err(x1.grad(), x2.grad()), 1e-5); }
            ++cases;
          }
  EXPECT_EQ(cases, 32);
}

// DoRA's fused node against PEFT's formula as plain tensor ops (the norm detached):
//   y = x W^T + b + (c - 1) d W^T + c s d A^T B^T,  c = m / ||W + s B A||,  d = dropout(x)
// output and the gradients of x, A, B and m; and the no-grad norm cache follows writes to A and B.
TEST(LoraLinear, DoraFusedEqualsComposition) {
  at::manual_seed(4);
  const int64_t K = 64, N = 96, r = 4;
  const uint64_t seed = 78;
  at::Tensor w = at::randn({N, K}) * 0.1;
  kernels::NF4Tensor q = kernels::nf4_quantize(w, 64, true);
  at::Tensor wd = kernels::nf4_dequantize(q, at::kFloat);
  at::Tensor bias = at::randn({N});
  int cases = 0;
  for (bool use_nf4 : {true, false})
    for (bool with_bias : {false, true})
      for (double p : {0.0, 0.3})
        for (int64_t M : {3, 40}) {
          SCOPED_TRACE(std::string(use_nf4 ? "nf4" : "dense") + (with_bias ? " bias" : "") + " p=" + std::to_string(p) +
                       " M=" + std::to_string(M));
          model::LoraAdapter a;
          a.A = (at::randn({r, K}) * 0.1).requires_grad_(true);
          a.B = (at::randn({N, r}) * 0.1).requires_grad_(true);
          a.scaling = 2.0;
          a.dropout = p;
          model::init_dora(use_nf4 ? &q : nullptr, wd, a);
          ASSERT_TRUE(a.dora());
          {
            at::NoGradGuard ng;
            a.magnitude.mul_(1 + 0.2 * at::randn({N}));
          }
          const at::Tensor b = with_bias ? bias : at::Tensor();
          at::Tensor x0 = at::randn({2, M, K});
          at::Tensor x1 = x0.clone().requires_grad_(true), x2 = x0.clone().requires_grad_(true);
          at::Tensor y = model::lora_linear(x1, use_nf4 ? &q : nullptr, wd, b, a, p, seed);
          at::Tensor g = at::randn(y.sizes());
          (y * g).sum().backward();
          at::Tensor gA = a.A.grad().clone(), gB = a.B.grad().clone(), gm = a.magnitude.grad().clone();
          for (at::Tensor* t : {&a.A, &a.B, &a.magnitude}) t->mutable_grad() = at::Tensor();

          at::Tensor keep = p > 0 ? kernels::hashed_dropout_keep_mask(x0.sizes(), p, seed, at::kCPU)
                                  : at::ones(x0.sizes(), at::kBool);
          at::Tensor xd = x2 * keep * static_cast<double>(static_cast<float>(1.0 / (1.0 - p)));
          const at::Tensor norm = at::linalg_vector_norm(wd + a.scaling * at::mm(a.B, a.A), 2, {1}).detach();
          EXPECT_LE(test::rel_err(model::dora_weight_norm(use_nf4 ? &q : nullptr, wd, a), norm), 1e-5);
          const at::Tensor c = a.magnitude / norm;
          at::Tensor y2 = at::matmul(x2, wd.t()) + (c - 1) * at::matmul(xd, wd.t()) +
                          c * at::matmul(at::matmul(xd, a.A.t()), a.B.t()) * a.scaling;
          if (b.defined()) y2 = y2 + b;
          (y2 * g).sum().backward();
          EXPECT_LE(test::rel_err(y, y2), 1e-5);
          EXPECT_LE(test::rel_err(gA, a.A.grad()), 1e-5);
          EXPECT_LE(test::rel_err(gB, a.B.grad()), 1e-5);
          EXPECT_LE(test::rel_err(gm, a.magnitude.grad()), 1e-5);
          EXPECT_LE(test::rel_err(x1.grad(), x2.grad()), 1e-5);

          // No grad mode: the norm is cached, and a write to B refreshes it.
          at::NoGradGuard ng;
          const at::Tensor n1 = model::dora_weight_norm(use_nf4 ? &q : nullptr, wd, a);
          EXPECT_TRUE(n1.is_same(model::dora_weight_norm(use_nf4 ? &q : nullptr, wd, a)));
          a.B.copy_(a.B * 2);
          const at::Tensor n2 = model::dora_weight_norm(use_nf4 ? &q : nullptr, wd, a);
          EXPECT_LE(test::rel_err(n2, at::linalg_vector_norm(wd + a.scaling * at::mm(a.B, a.A), 2, {1})), 1e-5);
          EXPECT_GT((n2 - n1).abs().max().item<double>(), 1e-3);
          // A write that bypasses autograd's version counter (as the optimizer's kernels write).
          a.A.data_ptr<float>()[0] += 1.0f;
          const at::Tensor n3 = model::dora_weight_norm(use_nf4 ? &q : nullptr, wd, a);
          EXPECT_LE(test::rel_err(n3, at::linalg_vector_norm(wd + a.scaling * at::mm(a.B, a.A), 2, {1})), 1e-5);
          ++cases;
        }
  EXPECT_EQ(cases, 16);
}

TEST(Checkpointing, EvalModeHasNoDropoutAndNoGraph) {
  model::Model m = test::load_fixture("llama", true, lora_cfg(4, 8, {"all-linear"}, false, 0.5));
  randomize_b(m, 3);
  test::Batch b = test::make_batch(61);
  c10::NoGradGuard ng;
  at::Tensor a = m.forward(b.input_ids), c = m.forward(b.input_ids);
  EXPECT_TRUE(at::equal(a, c));
  EXPECT_FALSE(a.requires_grad());
}

TEST(ChunkedCrossEntropy, EqualsFullCrossEntropy) {
  at::manual_seed(0);
  // softcap 3: most of the logits (about N(0, 24)) saturate; the cap's gradient is the chunked
  // backward's own, the full version's is autograd's.
  // A frozen head takes the fused path (the gradient made in forward); a trained one (lora_modules_to_save:
  // lm_head) the recomputing backward, which also gives the head its gradient.
  // One thread runs the chunks one after another; more run them side by side (ce_chunks' lanes).
  const int threads = at::get_num_threads();
  for (int lanes : {1, 3})
    for (bool trained_head : {false, true})
      for (double softcap : {0.0, 3.0})
        for (at::ScalarType dt : {at::kFloat, at::kBFloat16}) {
          at::set_num_threads(lanes);
          SCOPED_TRACE(std::string(c10::toString(dt)) + " softcap " + std::to_string(softcap) +
                       (trained_head ? " trained head" : " frozen head") + " threads " + std::to_string(lanes));
          at::Tensor h0 = at::randn({37, 24}).to(dt);
          at::Tensor w = at::randn({101, 24}).to(dt);
          at::Tensor y = at::randint(101, {37}, at::kLong);
          at::Tensor h1 = h0.clone().requires_grad_(true), h2 = h0.clone().requires_grad_(true);
          at::Tensor w1 = w.clone().requires_grad_(trained_head), w2 = w.clone().requires_grad_(trained_head);
          at::Tensor a = model::chunked_cross_entropy_sum(h1, w1, y, 5, softcap);
          at::Tensor b = model::full_cross_entropy_sum(h2, w2, y, softcap);
          if (softcap > 0) {  // the cap bites
            EXPECT_GT(std::abs(b.item<double>() - model::full_cross_entropy_sum(h0, w, y).item<double>()),
                      0.1 * std::abs(b.item<double>()));
          }
          EXPECT_EQ(a.scalar_type(), at::kFloat);
          EXPECT_NEAR(a.item<double>(), b.item<double>(), 1e-5 * std::abs(b.item<double>()));
          (a * 0.7).backward();
          (b * 0.7).backward();
          EXPECT_LE(test::rel_err(h1.grad(), h2.grad()), dt == at::kFloat ? 1e-5 : 1e-2);
          if (!trained_head) {
            EXPECT_FALSE(w1.grad().defined());
            continue;
          }
          ASSERT_TRUE(w1.grad().defined());
          EXPECT_EQ(w1.grad().scalar_type(), dt);
          EXPECT_LE(test::rel_err(w1.grad(), w2.grad()), dt == at::kFloat ? 1e-5 : 1e-2);
        }
  at::set_num_threads(threads);
  // A frozen weight gets none.
  at::Tensor h = at::randn({9, 8}).requires_grad_(true), w = at::randn({13, 8});
  model::chunked_cross_entropy_sum(h, w, at::randint(13, {9}, at::kLong), 4).backward();
  EXPECT_FALSE(w.grad().defined());
}

TEST(ChunkedCrossEntropy, ChunksEvenOutOverLanes) {
  // One lane: the chunk size as asked.
  model::CeChunks c = model::ce_chunks(968, 262, 1);
  EXPECT_EQ(c.tokens, 262);
  EXPECT_EQ(c.count, 4);
  EXPECT_EQ(c.lanes, 1);
  // More lanes: every lane has a chunk, none bigger than asked, all rows covered.
  for (auto [n, chunk, lanes] : std::vector<std::array<int64_t, 3>>{
           {968, 262, 2}, {11, 5, 2}, {7, 5, 2}, {300, 262, 2}, {1, 5, 4}, {37, 5, 3}}) {
    c = model::ce_chunks(n, chunk, lanes);
    EXPECT_LE(c.tokens, chunk);
    EXPECT_GE(c.tokens * c.count, n);
    EXPECT_LT((c.count - 1) * c.tokens, n);
    EXPECT_LE(c.lanes, std::min(lanes, c.count));
    EXPECT_GE(c.count, c.lanes) << n << " " << chunk << " " << lanes;
  }
  EXPECT_EQ(model::ce_chunks(0, 262, 2).count, 0);
}

TEST(ChunkedCrossEntropy, LossIgnoresMaskedLabelsAndCounts) {
  model::Model m = test::load_fixture("qwen3", true, lora_cfg(4, 8, {"q_proj"}));
  test::Batch b = test::make_batch(m.config.vocab_size);
  c10::NoGradGuard ng;
  at::Tensor h = m.forward(b.input_ids, b.position_ids, b.segment_ids);
  model::LossSum l = m.loss(h, b.labels);
  // Shifted: positions 1..11 of each row are targets (22); labels[0][3], labels[1][cut] and
  // labels[1][cut + 2] are -100 (labels[1][0] is never a target).
  EXPECT_EQ(l.count.item<int64_t>(), 2 * 11 - 3);
  at::Tensor lg = m.logits(h).slice(1, 0, -1).reshape({-1, m.config.vocab_size}).to(at::kFloat);
  at::Tensor y = b.labels.slice(1, 1).reshape({-1});
  at::Tensor ref = at::cross_entropy_loss(lg, y, {}, at::Reduction::Sum, -100);
  EXPECT_NEAR(l.sum.item<double>(), ref.item<double>(), 1e-4 * ref.item<double>());
  at::Tensor none = at::full_like(b.labels, -100);
  model::LossSum z = m.loss(h, none);
  EXPECT_EQ(z.count.item<int64_t>(), 0);
  EXPECT_EQ(z.sum.item<double>(), 0.0);
}

TEST(NF4Linear, GradFlowsToInputOnlyAndEqualsDense) {
  at::manual_seed(1);
  at::Tensor w = at::randn({45, 37});
  kernels::NF4Tensor q = kernels::nf4_quantize(w, 64, true);
  at::Tensor dense = kernels::nf4_dequantize(q, at::kFloat);
  at::Tensor x = at::randn({2, 3, 37}).requires_grad_(true);
  at::Tensor x2 = x.detach().clone().requires_grad_(true);
  at::Tensor y = model::nf4_linear_frozen(x, q);
  at::Tensor y2 = at::linear(x2, dense);
  EXPECT_LE(test::rel_err(y, y2), 1e-6);
  at::Tensor gy = at::randn(y.sizes());
  y.backward(gy);
  y2.backward(gy);
  EXPECT_LE(test::rel_err(x.grad(), x2.grad()), 1e-6);
  EXPECT_FALSE(q.packed.requires_grad());
  // No input requiring grad: no graph.
  at::Tensor z = model::nf4_linear_frozen(at::randn({4, 37}), q);
  EXPECT_FALSE(z.requires_grad());
}

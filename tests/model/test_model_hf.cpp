// The decoder against transformers: logits of tiny random models of every family, unquantized and
// NF4 (transformers running on our dequantized weights), bitsandbytes checkpoints, loader errors.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "tests/model/fixtures.h"
#include "trainer/common/error.h"
#include "trainer/common/fs.h"
#include "trainer/io/hf_checkpoint.h"
#include "trainer/model/model.h"
#include "trainer/quant/bnb_nf4.h"

using namespace qlora;

namespace {

model::ModelLoadOptions fp32_options(bool quantize) {
  model::ModelLoadOptions o;
  o.compute_dtype = at::kFloat;
  o.quantize = quantize;
  return o;
}

// Our logits and loss for the standard batch, and transformers' (optionally on `weights`).
struct Compared {
  at::Tensor ours, ref;
  double our_loss = 0, ref_loss = 0;
  int64_t our_count = 0, ref_count = 0;
};

Compared compare_logits(model::Model& m, const stdfs::path& model_dir, const stdfs::path& work, bool with_weights) {
  test::Batch b = test::make_batch(m.config.vocab_size, 12);
  test::write_batch(b, work / "in.safetensors");
  std::vector<std::string> args = {"logits", model_dir.string(), (work / "in.safetensors").string(),
                                   (work / "out.safetensors").string()};
  if (with_weights) {
    test::write_tensors(m.dequantized_state_dict(at::kFloat), work / "weights.safetensors");
    args.push_back("--weights");
    args.push_back((work / "weights.safetensors").string());
  }
  Compared c;
  {
    c10::NoGradGuard ng;
    at::Tensor h = m.forward(b.input_ids, b.position_ids, b.segment_ids);
    c.ours = m.logits(h);
    model::LossSum l = m.loss(h, b.labels);
    c.our_loss = l.sum.item<double>();
    c.our_count = l.count.item<int64_t>();
  }
  test::ProcResult r = test::model_ref(args);
  if (r.code != 0) return c;
  auto out = test::read_tensors(work / "out.safetensors");
  c.ref = out["logits"];
  c.ref_loss = out["loss_sum"].item<double>();
  c.ref_count = out["count"].item<int64_t>();
  return c;
}

}  // namespace

class HfFamily : public ::testing::TestWithParam<std::string> {};

TEST_P(HfFamily, Fp32LogitsEqualTransformers) {
  const stdfs::path dir = test::model_fixtures() / GetParam();
  model::Model m = model::load_model(dir, fp32_options(/*quantize=*/false));
  EXPECT_FALSE(m.layers[0].o_proj.nf4.has_value());
  Compared c = compare_logits(m, dir, test::temp_dir(), /*with_weights=*/false);
  ASSERT_TRUE(c.ref.defined());
  EXPECT_LE(test::rel_err(c.ours, c.ref), 1e-4);
  EXPECT_NEAR(c.our_loss, c.ref_loss, 1e-4 * std::abs(c.ref_loss));
  EXPECT_EQ(c.our_count, c.ref_count);
  // The logits are not trivially small: the test can see a wrong network.
  EXPECT_GT(c.ref.std().item<double>(), 0.5);
}

TEST_P(HfFamily, NF4LogitsEqualTransformersOnOurDequantizedWeights) {
  const stdfs::path dir = test::model_fixtures() / GetParam();
  model::Model m = model::load_model(dir, fp32_options(/*quantize=*/true));
  ASSERT_TRUE(m.layers[0].o_proj.nf4.has_value());
  EXPECT_TRUE(m.layers[0].o_proj.nf4->double_quant());
  Compared c = compare_logits(m, dir, test::temp_dir(), /*with_weights=*/true);
  ASSERT_TRUE(c.ref.defined());
  EXPECT_LE(test::rel_err(c.ours, c.ref), 1e-4);
  EXPECT_NEAR(c.our_loss, c.ref_loss, 1e-4 * std::abs(c.ref_loss));
}

INSTANTIATE_TEST_SUITE_P(Families, HfFamily, ::testing::ValuesIn(test::families()));

TEST(HfModel, PackedSegmentsEqualSeparateSequences) {
  // Row 1 packs two samples; each must see only itself: equal to running them one by one.
  model::Model m = model::load_model(test::model_fixtures() / "mistral", fp32_options(false));
  test::Batch b = test::make_batch(m.config.vocab_size, 12);
  c10::NoGradGuard ng;
  at::Tensor packed = m.logits(m.forward(b.input_ids, b.position_ids, b.segment_ids));
  const int64_t cut = 12 / 2 - 1;
  at::Tensor first = m.logits(m.forward(b.input_ids.slice(0, 1, 2).slice(1, 0, cut)));
  at::Tensor second = m.logits(m.forward(b.input_ids.slice(0, 1, 2).slice(1, cut)));
  EXPECT_LE(test::rel_err(packed[1].slice(0, 0, cut), first[0]), 1e-5);
  EXPECT_LE(test::rel_err(packed[1].slice(0, cut), second[0]), 1e-5);
  // transformers' rule for finding packed samples from positions gives the same segments.
  EXPECT_TRUE(at::equal(model::segments_from_positions(b.position_ids), b.segment_ids));
  // Without segment ids the second sample attends to the first: different logits.
  at::Tensor unpacked = m.logits(m.forward(b.input_ids, b.position_ids));
  EXPECT_GT(test::rel_err(unpacked[1].slice(0, cut), second[0]), 1e-3);
}

TEST(HfModel, BnbCheckpointLoadsWithoutRequantizing) {
  const stdfs::path dir = test::bnb_fixture();
  model::Model m = model::load_model(dir, fp32_options(/*quantize=*/true));
  io::HfCheckpoint ck(dir);
  auto deq = test::read_tensors(dir / "dequant.safetensors");
  int checked = 0;
  for (const model::Linear* l : m.linears()) {
    SCOPED_TRACE(l->name);
    ASSERT_TRUE(l->nf4);
    // The packed codes are the checkpoint's bytes.
    at::Tensor file_bytes = ck.tensor(l->name + ".weight").reshape({-1});
    EXPECT_TRUE(at::equal(l->nf4->packed, file_bytes));
    // Dequantized as bitsandbytes dequantizes them.
    ASSERT_TRUE(deq.count(l->name + ".weight"));
    EXPECT_LE(test::rel_err(l->base_weight(at::kFloat), deq[l->name + ".weight"]), 1e-6);
    ++checked;
  }
  EXPECT_EQ(checked, 14);
  // Logits against transformers running the bitsandbytes model itself.
  Compared c = compare_logits(m, dir, test::temp_dir(), /*with_weights=*/false);
  ASSERT_TRUE(c.ref.defined());
  EXPECT_LE(test::rel_err(c.ours, c.ref), 1e-4);
  // And as 16-bit weights for plain LoRA: the same values.
  model::Model d = model::load_model(dir, fp32_options(/*quantize=*/false));
  EXPECT_TRUE(at::equal(d.layers[1].down_proj.weight, m.layers[1].down_proj.base_weight(at::kFloat)));
}

TEST(HfModel, Bf16ComputeIsCloseToFp32) {
  model::ModelLoadOptions o = fp32_options(true);
  model::Model a = model::load_model(test::model_fixtures() / "qwen3", o);
  o.compute_dtype = at::kBFloat16;
  model::Model b = model::load_model(test::model_fixtures() / "qwen3", o);
  EXPECT_EQ(b.embed_tokens.scalar_type(), at::kBFloat16);
  test::Batch x = test::make_batch(a.config.vocab_size);
  c10::NoGradGuard ng;
  at::Tensor la = a.logits(a.forward(x.input_ids, x.position_ids, x.segment_ids));
  at::Tensor lb = b.logits(b.forward(x.input_ids, x.position_ids, x.segment_ids));
  EXPECT_EQ(lb.scalar_type(), at::kBFloat16);
  EXPECT_LE(test::rel_err(lb, la), 5e-2);
}

namespace {
std::string load_error(const stdfs::path& dir) {
  try {
    model::load_model(dir, fp32_options(true));
  } catch (const UserError& e) { return e.what(); }
  return "";
}
}  // namespace

TEST(HfModel, MissingOrMisshapenTensorsNameFileAndKey) {
  const stdfs::path src = test::model_fixtures() / "llama";
  auto all = test::read_tensors(src / "model.safetensors");
  stdfs::path d = test::temp_dir("missing");
  stdfs::copy_file(src / "config.json", d / "config.json");
  auto some = all;
  some.erase("model.layers.1.mlp.up_proj.weight");
  test::write_tensors(some, d / "model.safetensors");
  std::string e = load_error(d);
  EXPECT_NE(e.find("model.layers.1.mlp.up_proj.weight: missing"), std::string::npos) << e;

  auto bad = all;
  bad["model.layers.0.self_attn.k_proj.weight"] = at::zeros({3, 3});
  test::write_tensors(bad, d / "model.safetensors");
  e = load_error(d);
  EXPECT_NE(e.find("model.safetensors: model.layers.0.self_attn.k_proj.weight: expected shape [10, 35]"),
            std::string::npos)
      << e;

  auto ints = all;
  ints["model.norm.weight"] = at::zeros({35}, at::kInt);
  test::write_tensors(ints, d / "model.safetensors");
  e = load_error(d);
  EXPECT_NE(e.find("model.norm.weight: expected F32, BF16 or F16"), std::string::npos) << e;
}

TEST(HfModel, BnbKeysAreChecked) {
  const stdfs::path src = test::bnb_fixture();
  auto all = test::read_tensors(src / "model.safetensors");
  stdfs::path d = test::temp_dir("bnb");
  stdfs::copy_file(src / "config.json", d / "config.json");
  auto some = all;
  some.erase("model.layers.0.mlp.gate_proj.weight.nested_quant_map");
  test::write_tensors(some, d / "model.safetensors");
  std::string e = load_error(d);
  EXPECT_NE(e.find("model.layers.0.mlp.gate_proj.weight.nested_quant_map: missing"), std::string::npos) << e;

  some = all;
  some["model.layers.0.mlp.gate_proj.weight.quant_map"] = at::linspace(-1, 1, 16);  // not NF4
  test::write_tensors(some, d / "model.safetensors");
  e = load_error(d);
  EXPECT_NE(e.find("quant_map: not the NF4 code table"), std::string::npos) << e;

  some = all;
  some["model.layers.0.mlp.gate_proj.weight.absmax"] = at::zeros({3}, at::kByte);
  test::write_tensors(some, d / "model.safetensors");
  e = load_error(d);
  EXPECT_NE(e.find("gate_proj.weight.absmax: expected 21 entries (one per block of 64), got 3"), std::string::npos)
      << e;
}

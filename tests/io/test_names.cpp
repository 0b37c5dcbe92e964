// The name tables of io/: dtype spellings (io/dtype.h), PEFT LoRA keys (io/peft.h) and the shard
// layout of a Hugging Face model directory (io/hf_checkpoint.h).
#include <gtest/gtest.h>

#include "trainer/io/dtype.h"
#include "trainer/io/hf_checkpoint.h"
#include "trainer/io/peft.h"

using namespace qlora;

TEST(DtypeNames, FloatSpellings) {
  using io::FloatNames;
  EXPECT_EQ(io::parse_float_dtype("bfloat16", FloatNames::Torch).value(), at::kBFloat16);
  EXPECT_EQ(io::parse_float_dtype("float16", FloatNames::Torch).value(), at::kHalf);
  EXPECT_EQ(io::parse_float_dtype("float32", FloatNames::Torch).value(), at::kFloat);
  EXPECT_FALSE(io::parse_float_dtype("bf16", FloatNames::Torch));
  EXPECT_EQ(io::parse_float_dtype("fp16", FloatNames::Short).value(), at::kHalf);
  EXPECT_FALSE(io::parse_float_dtype("float32", FloatNames::Short));
  EXPECT_EQ(io::parse_float_dtype("half", FloatNames::Any).value(), at::kHalf);
  EXPECT_EQ(io::parse_float_dtype("float", FloatNames::Any).value(), at::kFloat);
  EXPECT_EQ(io::parse_float_dtype("bf16", FloatNames::Any).value(), at::kBFloat16);
  EXPECT_FALSE(io::parse_float_dtype("half", FloatNames::Torch));
  EXPECT_FALSE(io::parse_float_dtype("BF16", FloatNames::Any));  // safetensors' name, not a config one
  EXPECT_EQ(io::float_dtype_name(at::kBFloat16).value(), "bfloat16");
  EXPECT_FALSE(io::float_dtype_name(at::kByte));
}

TEST(DtypeNames, Safetensors) {
  EXPECT_EQ(io::safetensors_itemsize("BF16"), 2);
  EXPECT_EQ(io::safetensors_itemsize("F8_E4M3"), 1);
  EXPECT_EQ(io::safetensors_itemsize("Q4"), 0);
  EXPECT_EQ(io::scalar_type_from_safetensors("U8", "x"), at::kByte);
  EXPECT_EQ(io::safetensors_dtype_name(at::kHalf), "F16");
  EXPECT_TRUE(io::is_float_weight_dtype("F32"));
  EXPECT_FALSE(io::is_float_weight_dtype("F64"));
  EXPECT_FALSE(io::is_float_weight_dtype("I32"));
}

TEST(PeftKeys, BuildAndParse) {
  const std::string m = "model.layers.3.self_attn.q_proj";
  EXPECT_EQ(io::peft_lora_key(m, 'A'), "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight");
  EXPECT_EQ(io::peft_lora_key(m, 'B'), "base_model.model.model.layers.3.self_attn.q_proj.lora_B.weight");
  for (char which : {'A', 'B'}) {
    const auto k = io::parse_peft_lora_key(io::peft_lora_key(m, which));
    ASSERT_TRUE(k);
    EXPECT_EQ(k->module, m);
    EXPECT_EQ(k->which, which);
  }
  for (const char* bad : {"model.layers.3.self_attn.q_proj.lora_A.weight", "base_model.model.x.lora_C.weight",
                          "base_model.model..lora_A.weight", "base_model.model.lora_A.weight", ""})
    EXPECT_FALSE(io::parse_peft_lora_key(bad)) << bad;
}

TEST(Shards, PlanAsSavePretrained) {
  using Plan = std::vector<std::vector<size_t>>;
  EXPECT_EQ(io::plan_shards({}, 10), Plan{{}});
  EXPECT_EQ(io::plan_shards({4, 4, 4}, 10), (Plan{{0, 1}, {2}}));
  EXPECT_EQ(io::plan_shards({4, 20, 4}, 10), (Plan{{0}, {1}, {2}}));  // too large: stands alone
  EXPECT_EQ(io::plan_shards({5, 5}, 10), (Plan{{0, 1}}));
  EXPECT_EQ(io::shard_file_name(0, 1), "model.safetensors");
  EXPECT_EQ(io::shard_file_name(1, 3), "model-00002-of-00003.safetensors");
}

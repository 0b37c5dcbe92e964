// trainer/model/model_config against what transformers derives from the same config.json.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "tests/model/fixtures.h"
#include "trainer/common/error.h"
#include "trainer/common/fs.h"
#include "trainer/model/model_config.h"
#include "trainer/model/rope.h"

using namespace qlora;
using json = nlohmann::json;

namespace {

std::string error_of(const std::string& text) {
  try {
    model::parse_model_config(text, "x/config.json");
  } catch (const UserError& e) { return e.what(); }
  return "";
}

json llama_json() { return json::parse(fs::read_file(test::model_fixtures() / "llama" / "config.json")); }

}  // namespace

class ConfigFamily : public ::testing::TestWithParam<std::string> {};

TEST_P(ConfigFamily, MatchesTransformers) {
  const stdfs::path dir = test::model_fixtures() / GetParam();
  model::ModelConfig c = model::read_model_config(dir);
  json e = json::parse(fs::read_file(dir / "expect.json"));
  EXPECT_EQ(c.model_type, e["model_type"].get<std::string>());
  EXPECT_EQ(c.vocab_size, e["vocab_size"].get<int64_t>());
  EXPECT_EQ(c.hidden_size, e["hidden_size"].get<int64_t>());
  EXPECT_EQ(c.intermediate_size, e["intermediate_size"].get<int64_t>());
  EXPECT_EQ(c.num_hidden_layers, e["num_hidden_layers"].get<int64_t>());
  EXPECT_EQ(c.num_attention_heads, e["num_attention_heads"].get<int64_t>());
  EXPECT_EQ(c.num_key_value_heads, e["num_key_value_heads"].get<int64_t>());
  EXPECT_EQ(c.head_dim, e["head_dim"].get<int64_t>());
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, e["rms_norm_eps"].get<double>());
  EXPECT_EQ(c.tie_word_embeddings, e["tie_word_embeddings"].get<bool>());
  EXPECT_EQ(c.qkv_bias, e["qkv_bias"].get<bool>());
  EXPECT_EQ(c.o_bias, e["o_bias"].get<bool>());
  EXPECT_EQ(c.mlp_bias, e["mlp_bias"].get<bool>());
  EXPECT_EQ(c.qk_norm, e["qk_norm"].get<bool>());
  EXPECT_EQ(c.num_experts, e["num_experts"].get<int64_t>());
  ASSERT_EQ(static_cast<int64_t>(e["layer_window"].size()), c.num_hidden_layers);
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    auto w = c.window_of(i);
    if (e["layer_window"][i].is_null())
      EXPECT_FALSE(w.has_value()) << "layer " << i;
    else
      EXPECT_EQ(w.value_or(-1), e["layer_window"][i].get<int64_t>()) << "layer " << i;
  }
  // RoPE frequencies (default / linear / llama3) against the model's own inv_freq buffer.
  at::Tensor ours = model::rope_inv_freq(c);
  at::Tensor ref = at::tensor(e["inv_freq"].get<std::vector<double>>(), at::kDouble);
  EXPECT_LE(test::rel_err(ours, ref), 1e-6) << ours << ref;
  if (e.contains("long_inv_freq")) {  // longrope: the long factors and the cos/sin scale
    at::Tensor ours_long = model::rope_inv_freq(c, /*long_factors=*/true);
    at::Tensor ref_long = at::tensor(e["long_inv_freq"].get<std::vector<double>>(), at::kDouble);
    EXPECT_LE(test::rel_err(ours_long, ref_long), 1e-6) << ours_long << ref_long;
    EXPECT_NEAR(c.rope.attention_factor, e["attention_factor"].get<double>(), 1e-12);
    EXPECT_GT(test::rel_err(ours_long, ref), 1e-2);  // the two sets differ: the test sees which is used
  }
  if (e.contains("attention_scale")) {  // gemma
    EXPECT_TRUE(c.gemma);
    EXPECT_DOUBLE_EQ(c.attention_scale(), e["attention_scale"].get<double>());
    for (auto [key, ours_cap] : {std::pair{"final_logit_softcapping", c.final_logit_softcapping},
                                 std::pair{"attn_logit_softcapping", c.attn_logit_softcapping}}) {
      if (e[key].is_null())
        EXPECT_FALSE(ours_cap.has_value()) << key;
      else
        EXPECT_DOUBLE_EQ(ours_cap.value_or(-1), e[key].get<double>()) << key;
    }
  } else {
    EXPECT_FALSE(c.gemma);
    EXPECT_DOUBLE_EQ(c.attention_scale(), 1.0 / std::sqrt(static_cast<double>(c.head_dim)));
  }
  if (e.contains("inv_freq_local")) {  // gemma3_text: the sliding layers' RoPE
    ASSERT_TRUE(c.rope_local.has_value());
    at::Tensor local = model::rope_inv_freq(*c.rope_local, c.head_dim);
    at::Tensor local_ref = at::tensor(e["inv_freq_local"].get<std::vector<double>>(), at::kDouble);
    EXPECT_LE(test::rel_err(local, local_ref), 1e-6) << local << local_ref;
    for (int64_t i = 0; i < c.num_hidden_layers; ++i)
      EXPECT_EQ(c.uses_local_rope(i), !e["layer_window"][i].is_null()) << "layer " << i;
  } else {
    EXPECT_FALSE(c.rope_local.has_value());
  }
  if (e["bos_token_id"].is_null())
    EXPECT_FALSE(c.bos_token_id);
  else
    EXPECT_EQ(c.bos_token_id.value_or(-1), e["bos_token_id"].get<int64_t>());
  std::vector<int64_t> eos;
  if (e["eos_token_id"].is_number()) eos.push_back(e["eos_token_id"].get<int64_t>());
  if (e["eos_token_id"].is_array()) eos = e["eos_token_id"].get<std::vector<int64_t>>();
  EXPECT_EQ(c.eos_token_ids, eos);
}

INSTANTIATE_TEST_SUITE_P(Families, ConfigFamily, ::testing::ValuesIn(test::families()));

TEST(ModelConfig, RecordsDtypeAndRope) {
  model::ModelConfig m = model::read_model_config(test::model_fixtures() / "mistral");
  EXPECT_EQ(m.torch_dtype, "bfloat16");
  EXPECT_EQ(m.sliding_window.value_or(0), 5);
  model::ModelConfig q = model::read_model_config(test::model_fixtures() / "qwen2");
  EXPECT_EQ(q.torch_dtype, "float16");
  EXPECT_EQ(q.rope.type, "linear");
  EXPECT_DOUBLE_EQ(q.rope.factor, 2.0);
  model::ModelConfig l = model::read_model_config(test::model_fixtures() / "llama");
  EXPECT_EQ(l.rope.type, "llama3");
  EXPECT_EQ(l.rope.original_max_position_embeddings, 16);
}

TEST(ModelConfig, OlderLayoutReadsTheSame) {
  // transformers < 5: rope_theta at the top, rope_scaling {"type": ...}, torch_dtype.
  json n = llama_json();
  json old = n;
  json rp = old["rope_parameters"];
  old.erase("rope_parameters");
  old.erase("dtype");
  old["torch_dtype"] = "bfloat16";
  old["rope_theta"] = rp["rope_theta"];
  rp.erase("rope_theta");
  rp.erase("rope_type");
  rp["type"] = "llama3";
  old["rope_scaling"] = rp;
  model::ModelConfig a = model::parse_model_config(n.dump(), "new/config.json");
  model::ModelConfig b = model::parse_model_config(old.dump(), "old/config.json");
  EXPECT_EQ(b.rope.type, "llama3");
  EXPECT_EQ(a.rope.theta, b.rope.theta);
  EXPECT_EQ(a.rope.factor, b.rope.factor);
  EXPECT_EQ(a.rope.low_freq_factor, b.rope.low_freq_factor);
  EXPECT_EQ(a.rope.high_freq_factor, b.rope.high_freq_factor);
  EXPECT_EQ(a.rope.original_max_position_embeddings, b.rope.original_max_position_embeddings);
  EXPECT_EQ(b.torch_dtype, "bfloat16");
  EXPECT_TRUE(at::equal(model::rope_inv_freq(a), model::rope_inv_freq(b)));
  // rope_scaling: null means plain RoPE.
  old["rope_scaling"] = nullptr;
  EXPECT_EQ(model::parse_model_config(old.dump(), "old/config.json").rope.type, "default");
}

TEST(ModelConfig, UnsupportedArchitectureIsOneClearLine) {
  json j = llama_json();
  j["model_type"] = "gpt_neox";
  j["architectures"] = {"GPTNeoXForCausalLM"};
  std::string e = error_of(j.dump());
  EXPECT_NE(e.find("x/config.json"), std::string::npos) << e;
  EXPECT_NE(e.find("gpt_neox"), std::string::npos) << e;
  EXPECT_NE(e.find("GPTNeoXForCausalLM"), std::string::npos) << e;
  EXPECT_NE(e.find("not supported"), std::string::npos) << e;
  EXPECT_EQ(e.find('\n'), std::string::npos) << e;

  j = llama_json();
  j["architectures"] = {"LlamaForSequenceClassification"};
  e = error_of(j.dump());
  EXPECT_NE(e.find("LlamaForSequenceClassification"), std::string::npos) << e;
}

TEST(ModelConfig, BadValuesNameTheKey) {
  json j = llama_json();
  j["num_key_value_heads"] = 3;
  EXPECT_NE(error_of(j.dump()).find("num_key_value_heads"), std::string::npos);
  j = llama_json();
  j.erase("hidden_size");
  EXPECT_NE(error_of(j.dump()).find("hidden_size: missing"), std::string::npos);
  j = llama_json();
  j["rope_parameters"]["rope_type"] = "yarn";
  EXPECT_NE(error_of(j.dump()).find("yarn"), std::string::npos);
  j = llama_json();
  j["hidden_act"] = "gelu";
  EXPECT_NE(error_of(j.dump()).find("hidden_act"), std::string::npos);
  j = llama_json();
  j["quantization_config"] = {{"quant_method", "bitsandbytes"}, {"load_in_4bit", true}, {"bnb_4bit_quant_type", "fp4"}};
  EXPECT_NE(error_of(j.dump()).find("fp4"), std::string::npos);
  j["quantization_config"] = {{"quant_method", "gptq"}};
  EXPECT_NE(error_of(j.dump()).find("gptq"), std::string::npos);
  EXPECT_NE(error_of("{not json").find("not valid JSON"), std::string::npos);
}

TEST(ModelConfig, ReadsBnbQuantizationConfig) {
  json j = llama_json();
  j["quantization_config"] = {{"quant_method", "bitsandbytes"},
                              {"load_in_4bit", true},
                              {"bnb_4bit_quant_type", "nf4"},
                              {"bnb_4bit_use_double_quant", true},
                              {"bnb_4bit_compute_dtype", "bfloat16"}};
  model::ModelConfig c = model::parse_model_config(j.dump(), "x/config.json");
  ASSERT_TRUE(c.quantization);
  EXPECT_TRUE(c.quantization->double_quant);
  EXPECT_EQ(c.quantization->compute_dtype, "bfloat16");
}

TEST(ModelConfig, Gemma3OlderLayoutReadsTheSame) {
  // Gemma 3 files written before per-layer-type rope_parameters: rope_theta (global layers),
  // rope_local_base_freq (sliding layers), rope_scaling (global only), sliding_window_pattern.
  json n = json::parse(fs::read_file(test::model_fixtures() / "gemma3" / "config.json"));
  json old = n;
  const json rp = old["rope_parameters"];
  old.erase("rope_parameters");
  old.erase("layer_types");
  old["rope_theta"] = rp["full_attention"]["rope_theta"];
  old["rope_local_base_freq"] = rp["sliding_attention"]["rope_theta"];
  old["rope_scaling"] = {{"rope_type", "linear"}, {"factor", rp["full_attention"]["factor"]}};
  old["sliding_window_pattern"] = 3;  // layers 0, 1 sliding, 2 global, 3 sliding: the fixture's layer_types
  model::ModelConfig a = model::parse_model_config(n.dump(), "new/config.json");
  model::ModelConfig b = model::parse_model_config(old.dump(), "old/config.json");
  EXPECT_EQ(a.layer_sliding, b.layer_sliding);
  EXPECT_EQ(b.rope.type, "linear");
  EXPECT_TRUE(at::equal(model::rope_inv_freq(a), model::rope_inv_freq(b)));
  ASSERT_TRUE(b.rope_local.has_value());
  EXPECT_EQ(b.rope_local->type, "default");
  EXPECT_TRUE(
      at::equal(model::rope_inv_freq(*a.rope_local, a.head_dim), model::rope_inv_freq(*b.rope_local, b.head_dim)));
}

TEST(ModelConfig, GemmaErrorsNameTheKey) {
  json g = json::parse(fs::read_file(test::model_fixtures() / "gemma3" / "config.json"));
  json j = g;
  j["model_type"] = "gemma3";
  j["architectures"] = {"Gemma3ForConditionalGeneration"};
  std::string e = error_of(j.dump());
  EXPECT_NE(e.find("model_type"), std::string::npos) << e;
  EXPECT_NE(e.find("multimodal"), std::string::npos) << e;
  EXPECT_NE(e.find("gemma3_text"), std::string::npos) << e;
  j = g;
  j["hidden_activation"] = "gelu";
  EXPECT_NE(error_of(j.dump()).find("hidden_activation"), std::string::npos);
  j = g;
  j["use_bidirectional_attention"] = true;
  EXPECT_NE(error_of(j.dump()).find("use_bidirectional_attention"), std::string::npos);
  j = g;
  j["final_logit_softcapping"] = "high";
  EXPECT_NE(error_of(j.dump()).find("final_logit_softcapping"), std::string::npos);
  j = g;
  j["rope_parameters"]["middle_attention"] = {{"rope_type", "default"}};
  EXPECT_NE(error_of(j.dump()).find("rope_parameters.middle_attention"), std::string::npos);
  // An explicit null softcap is none (not the family default).
  json g2 = json::parse(fs::read_file(test::model_fixtures() / "gemma2" / "config.json"));
  g2["final_logit_softcapping"] = nullptr;
  EXPECT_FALSE(model::parse_model_config(g2.dump(), "x/config.json").final_logit_softcapping.has_value());
  g2.erase("final_logit_softcapping");
  EXPECT_EQ(model::parse_model_config(g2.dump(), "x/config.json").final_logit_softcapping.value_or(0), 30.0);
}

// qlora inspect: counts against transformers, NF4 memory against what the loader really holds.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "tests/model/fixtures.h"
#include "trainer/common/fs.h"
#include "trainer/model/model.h"

using namespace qlora;
using json = nlohmann::json;

class InspectFamily : public ::testing::TestWithParam<std::string> {};

TEST_P(InspectFamily, CountsAndMemoryAreRight) {
  const stdfs::path dir = test::model_fixtures() / GetParam();
  test::ProcResult r = test::run_qlora("inspect --json " + test::quote(dir.string()) + " 2>/dev/null");
  ASSERT_EQ(r.code, 0) << r.output;
  json j = json::parse(r.output);
  json e = json::parse(fs::read_file(dir / "expect.json"));
  EXPECT_EQ(j["parameters"]["total"].get<int64_t>(), e["num_parameters"].get<int64_t>());
  EXPECT_EQ(j["parameters"]["linear"].get<int64_t>(), e["linear_parameters"].get<int64_t>());
  EXPECT_EQ(j["model_type"], e["model_type"]);
  EXPECT_TRUE(j["checkpoint"]["problems"].empty());
  if (e.contains("final_logit_softcapping")) {  // gemma: the caps as transformers reads them
    EXPECT_EQ(j["gemma"]["final_logit_softcapping"], e["final_logit_softcapping"]);
    EXPECT_EQ(j["gemma"]["attn_logit_softcapping"], e["attn_logit_softcapping"]);
  } else {
    EXPECT_FALSE(j.contains("gemma"));
  }
  // The NF4 memory it predicts is what the loader holds (16-bit rest in bf16).
  model::ModelLoadOptions o;
  o.compute_dtype = at::kBFloat16;
  model::Model m = model::load_model(dir, o);
  EXPECT_EQ(j["memory"]["nf4_double_quant"]["total_bytes"].get<int64_t>(), m.base_nbytes());
  EXPECT_EQ(j["memory"]["bytes_16bit"].get<int64_t>(), 2 * e["num_parameters"].get<int64_t>());
}

INSTANTIATE_TEST_SUITE_P(Families, InspectFamily, ::testing::ValuesIn(test::families()));

TEST(Inspect, TextReportAndBnbCheckpoint) {
  test::ProcResult r = test::run_qlora("inspect " + test::quote((test::model_fixtures() / "llama").string()));
  ASSERT_EQ(r.code, 0) << r.output;
  for (const char* s : {"LlamaForCausalLM", "self_attn.q_proj.weight", "[50, 35]", "tied to model.embed_tokens.weight",
                        "linear (quantizable)", "NF4, double quant", "bits/weight", "llama3"})
    EXPECT_NE(r.output.find(s), std::string::npos) << s << "\n" << r.output;

  r = test::run_qlora("inspect --json " + test::quote(test::bnb_fixture().string()));
  ASSERT_EQ(r.code, 0) << r.output;
  json j = json::parse(r.output);
  EXPECT_TRUE(j["bnb_4bit"].get<bool>());
  EXPECT_EQ(j["checkpoint"]["bnb_4bit_linears"].get<int64_t>(), 14);
}

TEST(Inspect, ProblemsAndBadInputExitTwo) {
  stdfs::path d = test::temp_dir();
  stdfs::copy_file(test::model_fixtures() / "llama" / "config.json", d / "config.json");
  auto all = test::read_tensors(test::model_fixtures() / "llama" / "model.safetensors");
  all.erase("model.norm.weight");
  test::write_tensors(all, d / "model.safetensors");
  test::ProcResult r = test::run_qlora("inspect " + test::quote(d.string()));
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.output.find("model.norm.weight: missing"), std::string::npos) << r.output;
  EXPECT_NE(
      r.output.find("qlora: error: " + d.string() + ": 1 checkpoint problem, the first: model.norm.weight: missing\n"),
      std::string::npos)
      << r.output;
  r = test::run_qlora("inspect " + test::quote((d / "nope").string()));
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.output.find("nope: not a model directory (does not exist)"), std::string::npos) << r.output;
  stdfs::remove(d / "config.json");
  r = test::run_qlora("inspect " + test::quote(d.string()));
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.output.find("config.json: missing"), std::string::npos) << r.output;
}

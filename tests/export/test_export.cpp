// qlora export end to end: tiny runs trained by qlora (QLoRA and plain LoRA) on a model made by
// transformers, exported in every format and judged by the reference libraries
// (tests/python/export_check.py: PEFT, transformers, bitsandbytes on the CPU; gguf_check.py:
// the gguf package), plus the refusals (non-empty output, adapter for another base).
#include <c10/core/GradMode.h>
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>

#include "tests/common/harness.h"
#include "trainer/common/error.h"
#include "trainer/common/fs.h"
#include "trainer/export/export.h"
#include "trainer/export/gguf_model.h"
#include "trainer/io/gguf.h"
#include "trainer/io/safetensors.h"
#include "trainer/run/adapter_source.h"
#include "trainer/tokenizer/tokenizer.h"

using namespace qlora;
namespace stdfs = std::filesystem;

namespace {

struct Fixture {
  stdfs::path dir;    // work directory
  stdfs::path model;  // transformers' tiny llama (fp32) + tokenizer
  stdfs::path qlora_run, lora_run;
};
Fixture* g = nullptr;

test::ProcResult run_cli(const std::string& args) { return test::run_qlora(args); }

std::string q(const stdfs::path& p) { return test::quote(p.string()); }

// Trains `adapter` (qlora | lora) for a few steps with a large learning rate, so lora_B is far
// from zero, into DIR/run; the model and data of train_fixture.py in `fixture` (default: the
// suite's llama fixture).
void train(const stdfs::path& dir, const std::string& adapter, stdfs::path fixture = {}, const std::string& extra = "",
           double alpha = 8) {
  const stdfs::path f = fixture.empty() ? g->dir / "fixture" : fixture;
  std::ofstream o(dir / "cfg.yaml");
  o << "base_model: " << (f / "model").string() << "\n"
    << "adapter: " << adapter << "\nlora_r: 4\nlora_alpha: " << alpha << "\nlora_dropout: 0\nlora_target_linear: true\n"
    << "sequence_len: 256\nmicro_batch_size: 2\ngradient_accumulation_steps: 1\nmax_steps: 3\n"
    << "learning_rate: 0.05\nlr_scheduler: constant\n"
    << "datasets:\n  - path: " << (f / "train.jsonl").string() << "\n    type: alpaca\n"
    << "output_dir: " << (dir / "run").string() << "\n"
    << extra;
  o.close();
  test::ProcResult r = test::run(q(test::qlora_exe()) + " train " + q(dir / "cfg.yaml"));
  ASSERT_EQ(r.code, 0) << r.output;
}

at::Tensor test_ids() {
  at::manual_seed(11);
  return at::randint(200, {2, 12}, at::kLong);
}

// Our logits (fp32 on the CPU) for base + adapter, loaded as generate/eval load them.
stdfs::path our_logits(const stdfs::path& adapter, const std::string& tag) {
  const run::AdapterSource src = run::read_adapter_source(adapter);
  model::ModelLoadOptions opts = run::adapter_load_options(src, at::kCPU);
  opts.compute_dtype = at::kFloat;
  model::Model m = run::load_model_with_adapter({}, src, opts);
  at::NoGradGuard ng;
  const at::Tensor lg = m.logits(m.forward(test_ids()));
  const stdfs::path p = g->dir / ("ours_" + tag + ".safetensors");
  io::SafetensorsWriter w;
  w.add("logits", lg.to(at::kFloat));
  w.write(p);
  return p;
}

class Export : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    g = new Fixture;
    g->dir = test::temp_dir("export_fixture");
    stdfs::create_directories(g->dir / "fixture");
    test::ProcResult r = test::run_python("train_fixture.py", {(g->dir / "fixture").string()});
    ASSERT_EQ(r.code, 0) << r.output;
    g->model = g->dir / "fixture/model";
    stdfs::create_directories(g->dir / "qlora");
    stdfs::create_directories(g->dir / "lora");
    train(g->dir / "qlora", "qlora");
    train(g->dir / "lora", "lora");
    g->qlora_run = g->dir / "qlora/run";
    g->lora_run = g->dir / "lora/run";
    io::SafetensorsWriter w;
    w.add("input_ids", test_ids());
    w.write(g->dir / "ids.safetensors");
  }
  static void TearDownTestSuite() {
    delete g;
    g = nullptr;
  }
};

nlohmann::json judge(const nlohmann::json& checks) {
  const stdfs::path spec = test::temp_dir("spec") / "spec.json";
  nlohmann::json j;
  j["ids"] = (g->dir / "ids.safetensors").string();
  j["checks"] = checks;
  std::ofstream(spec) << j.dump(2);
  test::ProcResult r = test::run_python("export_check.py", {spec.string()});
  EXPECT_EQ(r.code, 0) << r.output;
  const auto at = r.output.rfind("RESULT {");
  if (at == std::string::npos) return nlohmann::json::object();
  const auto end = r.output.find('\n', at);
  return nlohmann::json::parse(r.output.substr(at + 7, end == std::string::npos ? std::string::npos : end - at - 7));
}

// export_check.py's "peft" check: PeftModel.from_pretrained(base, adapter) logits against ours.
nlohmann::json peft_check(const std::string& name, const stdfs::path& base, const stdfs::path& adapter,
                          const stdfs::path& ours) {
  return {{"name", name},
          {"kind", "peft"},
          {"base", base.string()},
          {"adapter", adapter.string()},
          {"ours", ours.string()}};
}

// export_check.py's "merged" check: the merged model's fp32 logits against ours.
nlohmann::json merged_check(const std::string& name, const stdfs::path& model, const stdfs::path& ours) {
  return {{"name", name}, {"kind", "merged"}, {"model", model.string()}, {"ours", ours.string()}, {"dtype", "float32"}};
}

std::vector<stdfs::path> leftovers(const stdfs::path& parent) {
  std::vector<stdfs::path> v;
  for (const auto& e : stdfs::directory_iterator(parent))
    if (e.path().filename().string().find(".tmp-") != std::string::npos) v.push_back(e.path());
  return v;
}

}  // namespace

// PEFT export of a QLoRA run loads with PeftModel.from_pretrained on the NF4 base as bitsandbytes
// holds it (our `qlora quantize` of the same base: the same NF4 bytes the trainer computed with),
// and of a plain LoRA run on the 16-bit base; logits equal ours. Merged exports (fp32, sharded;
// bf16; --merge-into original) load with AutoModelForCausalLM and equal base+adapter.
TEST_F(Export, ReferenceLibrariesAgree) {
  const stdfs::path d = test::temp_dir();
  const stdfs::path ours_q = our_logits(g->qlora_run, "qlora"), ours_l = our_logits(g->lora_run, "lora");
  // The NF4 base as a bnb-4bit checkpoint, computing in fp32.
  test::ProcResult r =
      run_cli("quantize --model " + q(g->model) + " --out " + q(d / "base_bnb") + " --compute-dtype float32");
  ASSERT_EQ(r.code, 0) << r.output;

  r = run_cli("export " + q(g->qlora_run) + " --format peft --out " + q(d / "peft_q"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("(Float,"), std::string::npos) << r.output;
  r = run_cli("export " + q(g->lora_run) + " --format peft --out " + q(d / "peft_l"));
  ASSERT_EQ(r.code, 0) << r.output;
  // merged fp32 into dequant(NF4), cut into several shards
  r = run_cli("export " + q(g->qlora_run) + " --format merged --dtype fp32 --max-shard-size 40KB --out " +
              q(d / "merged_fp32"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("peak RSS"), std::string::npos) << r.output;
  r = run_cli("export " + q(g->qlora_run) + " --format merged --out " + q(d / "merged_bf16"));
  ASSERT_EQ(r.code, 0) << r.output;
  r = run_cli("export " + q(g->qlora_run) + " --format merged --merge-into original --dtype fp32 --out " +
              q(d / "merged_orig"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("warning: --merge-into original"), std::string::npos) << r.output;
  r = run_cli("export " + q(g->lora_run) + " --format merged --dtype fp32 --out " + q(d / "merged_lora"));
  ASSERT_EQ(r.code, 0) << r.output;

  nlohmann::json checks = nlohmann::json::array();
  checks.push_back({{"name", "peft_qlora"},
                    {"kind", "peft"},
                    {"base", (d / "base_bnb").string()},
                    {"adapter", (d / "peft_q").string()},
                    {"ours", ours_q.string()}});
  checks.push_back({{"name", "peft_lora"},
                    {"kind", "peft"},
                    {"base", g->model.string()},
                    {"adapter", (d / "peft_l").string()},
                    {"ours", ours_l.string()}});
  checks.push_back({{"name", "merged_fp32"},
                    {"kind", "merged"},
                    {"model", (d / "merged_fp32").string()},
                    {"ours", ours_q.string()},
                    {"dtype", "float32"}});
  checks.push_back({{"name", "merged_bf16"},
                    {"kind", "merged"},
                    {"model", (d / "merged_bf16").string()},
                    {"ours", ours_q.string()},
                    {"dtype", "bfloat16"}});
  checks.push_back({{"name", "merged_bf16_upcast"},
                    {"kind", "merged"},
                    {"model", (d / "merged_bf16").string()},
                    {"ours", ours_q.string()},
                    {"dtype", "float32"}});
  checks.push_back({{"name", "bf16_is_fp32_rounded"},
                    {"kind", "cast"},
                    {"a", (d / "merged_bf16").string()},
                    {"b", (d / "merged_fp32").string()},
                    {"dtype", "bfloat16"}});
  checks.push_back({{"name", "merged_original"},
                    {"kind", "merged_vs_peft"},
                    {"model", (d / "merged_orig").string()},
                    {"base", g->model.string()},
                    {"adapter", (d / "peft_q").string()}});
  checks.push_back({{"name", "merged_lora"},
                    {"kind", "merged"},
                    {"model", (d / "merged_lora").string()},
                    {"ours", ours_l.string()},
                    {"dtype", "float32"}});
  const nlohmann::json j = judge(checks);
  std::printf("judge: %s\n", j.dump().c_str());
  ASSERT_TRUE(j.contains("peft_qlora")) << j.dump();

  const auto& pq = j["peft_qlora"];
  EXPECT_LT(pq["rel"].get<double>(), 1e-4);
  EXPECT_EQ(pq["peft_type"], "LORA");
  EXPECT_EQ(pq["r"], 4);
  EXPECT_EQ(pq["dtypes"], nlohmann::json::array({"torch.float32"}));
  EXPECT_EQ(pq["keys"], 2 * 2 * 7);
  EXPECT_EQ(pq["lora_layers"], 2 * 7);
  EXPECT_EQ(pq["bnb_linears"], 2 * 7);  // the base really ran through bitsandbytes
  EXPECT_FALSE(pq["default_in_keys"].get<bool>());
  EXPECT_LT(j["peft_lora"]["rel"].get<double>(), 1e-4);
  EXPECT_EQ(j["peft_lora"]["bnb_linears"], 0);

  const auto& mf = j["merged_fp32"];
  EXPECT_LT(mf["rel"].get<double>(), 1e-4);
  EXPECT_FALSE(mf["quantization_config"].get<bool>());
  EXPECT_EQ(mf["config_dtype"], "float32");
  EXPECT_GT(mf["shards"].get<int>(), 1);
  EXPECT_TRUE(mf["index_ok"].get<bool>());
  for (const char* f : {"tokenizer.json", "tokenizer_config.json", "generation_config.json", "config.json",
                        "model.safetensors.index.json", "model-00001-of-"})
    EXPECT_NE(mf["files"].dump().find(f), std::string::npos) << f << " in " << mf["files"].dump();

  // bf16: the file is exactly our fp32 merge rounded to bf16 (round to nearest even); what that
  // rounding costs in logits is measured, in fp32 compute (weights upcast) and in bf16 compute.
  EXPECT_EQ(j["bf16_is_fp32_rounded"]["mismatched"], 0);
  EXPECT_TRUE(j["bf16_is_fp32_rounded"]["same_keys"].get<bool>());
  EXPECT_EQ(j["bf16_is_fp32_rounded"]["dtypes"], nlohmann::json::array({"torch.bfloat16"}));
  EXPECT_EQ(j["merged_bf16"]["config_dtype"], "bfloat16");
  EXPECT_EQ(j["merged_bf16"]["shards"], 1);
  EXPECT_TRUE(j["merged_bf16"]["index_ok"].is_null());
  // measured: 1.8e-3 with the bf16 weights upcast to fp32, 3.3e-3 computing in bf16
  EXPECT_LT(j["merged_bf16_upcast"]["rel"].get<double>(), 5e-3);
  EXPECT_LT(j["merged_bf16"]["rel"].get<double>(), 1e-2);

  EXPECT_LT(j["merged_original"]["rel"].get<double>(), 1e-4);
  EXPECT_LT(j["merged_lora"]["rel"].get<double>(), 1e-4);
}

// Phi-3's fused projections through both exports: the PEFT adapter (qkv_proj, gate_up_proj
// targets) loads with PeftModel on the bitsandbytes NF4 base, the merged model with
// AutoModelForCausalLM; both give our logits.
// PiSSA and OLoRA train on a residual base: the PEFT export is converted, as PEFT converts it, to
// a plain LoRA of rank 2r for the original base, and PeftModel.from_pretrained(original base,
// export) gives our logits; the merged export (residual + B A) gives them too.
TEST_F(Export, PissaAndOloraConvertToPlainLoraForTheOriginalBase) {
  for (const std::string init : {"pissa", "olora"}) {
    SCOPED_TRACE(init);
    const stdfs::path d = test::temp_dir(init);
    train(d, "lora", {}, "init_lora_weights: " + init + "\n");
    const stdfs::path run = d / "run";
    const stdfs::path ours = our_logits(run, init);
    test::ProcResult r = run_cli("export " + q(run) + " --format peft --out " + q(d / "peft"));
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find("plain LoRA of rank 8"), std::string::npos) << r.output;
    r = run_cli("export " + q(run) + " --format merged --dtype fp32 --out " + q(d / "merged"));
    ASSERT_EQ(r.code, 0) << r.output;
    nlohmann::json checks = nlohmann::json::array();
    checks.push_back(peft_check("peft", g->model, d / "peft", ours));
    checks.push_back(merged_check("merged", d / "merged", ours));
    // The checkpoint itself says init_lora_weights: pissa|olora, as PEFT saves such an adapter
    // unconverted: PEFT reruns the method on the original base when it loads it.
    checks.push_back(peft_check("checkpoint", g->model, run / "checkpoints/checkpoint-000003", ours));
    const nlohmann::json j = judge(checks);
    std::printf("%s judge: %s\n", init.c_str(), j.dump().c_str());
    ASSERT_TRUE(j.contains("peft")) << j.dump();
    EXPECT_LT(j["peft"]["rel"].get<double>(), 1e-4);
    EXPECT_EQ(j["peft"]["r"], 8);
    EXPECT_LT(j["merged"]["rel"].get<double>(), 1e-4);
    EXPECT_LT(j["checkpoint"]["rel"].get<double>(), 1e-4);
    EXPECT_EQ(j["checkpoint"]["r"], 4);
    // The same adapter as a plain PEFT directory (no run config): loading it reruns the init too.
    const stdfs::path plain = d / "plain_peft";
    stdfs::create_directories(plain);
    for (const char* f : {"adapter_config.json", "adapter_model.safetensors"})
      stdfs::copy_file(run / "checkpoints/checkpoint-000003" / f, plain / f);
    {
      const run::AdapterSource src = run::read_adapter_source(plain);
      model::ModelLoadOptions opts = run::adapter_load_options(src, at::kCPU);
      opts.compute_dtype = at::kFloat;
      opts.quantize = false;  // a plain PEFT directory does not say; this run had the 16-bit base
      model::Model m = run::load_model_with_adapter(g->model, src, opts);
      at::NoGradGuard ng;
      const at::Tensor lg = m.logits(m.forward(test_ids()));
      EXPECT_TRUE(at::allclose(lg, io::SafetensorsFile(ours).tensor("logits"), 1e-5, 1e-6));
    }
  }
}

// LoftQ's base is quantized: the PEFT export carries it (OUT/base, 16-bit), and PEFT on that base
// loaded in NF4 by bitsandbytes gives our logits; so does the merged export.
TEST_F(Export, LoftqExportsTheBaseItTrainedAgainst) {
  const stdfs::path d = test::temp_dir("loftq");
  train(d, "qlora", {}, "loftq_config:\n  loftq_bits: 4\n  loftq_iter: 2\n", /*alpha=*/4);
  const stdfs::path run = d / "run";
  const stdfs::path ours = our_logits(run, "loftq");
  test::ProcResult r = run_cli("export " + q(run) + " --format peft --out " + q(d / "peft"));
  ASSERT_EQ(r.code, 0) << r.output;
  ASSERT_TRUE(stdfs::exists(d / "peft/base/config.json"));
  r = run_cli("quantize --model " + q(d / "peft/base") + " --out " + q(d / "base_bnb") + " --compute-dtype float32");
  ASSERT_EQ(r.code, 0) << r.output;
  r = run_cli("export " + q(run) + " --format merged --dtype fp32 --out " + q(d / "merged"));
  ASSERT_EQ(r.code, 0) << r.output;
  r = run_cli("export " + q(run) + " --format gguf-adapter --out " + q(d / "gguf"));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_FALSE(stdfs::exists(d / "gguf"));
  nlohmann::json checks = nlohmann::json::array();
  checks.push_back(peft_check("peft", d / "base_bnb", d / "peft", ours));
  checks.push_back(merged_check("merged", d / "merged", ours));
  const nlohmann::json j = judge(checks);
  std::printf("loftq judge: %s\n", j.dump().c_str());
  ASSERT_TRUE(j.contains("peft")) << j.dump();
  EXPECT_LT(j["peft"]["rel"].get<double>(), 1e-4);
  EXPECT_EQ(j["peft"]["r"], 4);
  EXPECT_LT(j["merged"]["rel"].get<double>(), 1e-4);
}

// lora_modules_to_save: the trained embedding and output head travel in the PEFT layout
// (PeftModel.from_pretrained on the base gives our logits, from the checkpoint and from the
// export) and replace the base's in the merged model; a GGUF adapter cannot hold them.
TEST_F(Export, ModulesToSaveLoadInPeftAndMerge) {
  const stdfs::path d = test::temp_dir("mts");
  train(d, "lora", {}, "lora_modules_to_save: [embed_tokens, lm_head]\n");
  const stdfs::path run = d / "run";
  const stdfs::path ours = our_logits(run, "mts");
  test::ProcResult r = run_cli("export " + q(run) + " --format peft --out " + q(d / "peft"));
  ASSERT_EQ(r.code, 0) << r.output;
  r = run_cli("export " + q(run) + " --format merged --dtype fp32 --out " + q(d / "merged"));
  ASSERT_EQ(r.code, 0) << r.output;
  r = run_cli("export " + q(run) + " --format gguf-adapter --out " + q(d / "gguf"));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("modules_to_save: a GGUF adapter"), std::string::npos) << r.output;
  EXPECT_FALSE(stdfs::exists(d / "gguf"));
  // The trained weights moved away from the base's, so the checks below can fail.
  {
    const io::SafetensorsFile a(d / "peft/adapter_model.safetensors");
    const io::SafetensorsFile b(g->model / "model.safetensors");
    EXPECT_GT((a.tensor("base_model.model.lm_head.weight").to(at::kFloat) - b.tensor("lm_head.weight").to(at::kFloat))
                  .abs()
                  .max()
                  .item<double>(),
              1e-3);
  }
  nlohmann::json checks = nlohmann::json::array();
  checks.push_back(peft_check("peft", g->model, d / "peft", ours));
  checks.push_back(peft_check("checkpoint", g->model, run / "checkpoints/checkpoint-000003", ours));
  checks.push_back(merged_check("merged", d / "merged", ours));
  const nlohmann::json j = judge(checks);
  std::printf("modules_to_save judge: %s\n", j.dump().c_str());
  ASSERT_TRUE(j.contains("peft")) << j.dump();
  EXPECT_LT(j["peft"]["rel"].get<double>(), 1e-4);
  EXPECT_LT(j["checkpoint"]["rel"].get<double>(), 1e-4);
  EXPECT_LT(j["merged"]["rel"].get<double>(), 1e-4);
}

// DoRA: PEFT's DoRA on the NF4 base as bitsandbytes holds it gives our logits, from the export
// and from the checkpoint itself; the merged export applies the magnitudes as PEFT merges them; a
// llama.cpp adapter cannot hold them and is refused.
TEST_F(Export, DoraLoadsInPeftAndTransformers) {
  const stdfs::path d = test::temp_dir("dora");
  train(d, "qlora", {}, "use_dora: true\n");
  const stdfs::path run = d / "run";
  const stdfs::path ours = our_logits(run, "dora");
  test::ProcResult r =
      run_cli("quantize --model " + q(g->model) + " --out " + q(d / "base_bnb") + " --compute-dtype float32");
  ASSERT_EQ(r.code, 0) << r.output;
  r = run_cli("export " + q(run) + " --format peft --dtype bf16 --out " + q(d / "peft"));
  ASSERT_EQ(r.code, 0) << r.output;
  r = run_cli("export " + q(run) + " --format merged --dtype fp32 --out " + q(d / "merged"));
  ASSERT_EQ(r.code, 0) << r.output;
  r = run_cli("export " + q(run) + " --format gguf-adapter --out " + q(d / "gguf"));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("use_dora"), std::string::npos) << r.output;
  EXPECT_FALSE(stdfs::exists(d / "gguf"));
  nlohmann::json checks = nlohmann::json::array();
  checks.push_back(peft_check("peft", d / "base_bnb", d / "peft", ours));
  checks.push_back(peft_check("checkpoint", d / "base_bnb", run / "checkpoints/checkpoint-000003", ours));
  checks.push_back(merged_check("merged", d / "merged", ours));
  const nlohmann::json j = judge(checks);
  std::printf("dora judge: %s\n", j.dump().c_str());
  ASSERT_TRUE(j.contains("peft")) << j.dump();
  const int64_t linears = 2 * 7;  // the fixture's 2 layers x 7 projections
  for (const char* c : {"peft", "checkpoint"}) {
    SCOPED_TRACE(c);
    EXPECT_TRUE(j[c]["use_dora"].get<bool>());
    EXPECT_EQ(j[c]["dora_layers"], linears);
    EXPECT_EQ(j[c]["keys"], 3 * linears);  // lora_A, lora_B, lora_magnitude_vector
    EXPECT_EQ(j[c]["bnb_linears"], linears);
    EXPECT_EQ(j[c]["magnitude_dtypes"], nlohmann::json::array({"torch.float32"}));
  }
  // bf16 A and B: the export's rounding only.
  EXPECT_LT(j["peft"]["rel"].get<double>(), 1e-2);
  EXPECT_LT(j["checkpoint"]["rel"].get<double>(), 1e-4);
  EXPECT_LT(j["merged"]["rel"].get<double>(), 1e-4);
}

// Tied embeddings: one trained copy serves both (PEFT's ensure_weight_tying), saved under both
// keys; PeftModel.from_pretrained reads our adapter_config.json and gives our logits, and the
// merged model (still tied) does too.
TEST_F(Export, ModulesToSaveOnTiedEmbeddings) {
  const stdfs::path d = test::temp_dir("mts_tied");
  const stdfs::path fx = d / "fixture";
  stdfs::create_directories(fx);
  test::ProcResult r = test::run_python("train_fixture.py", {fx.string(), "llama_tied"});
  ASSERT_EQ(r.code, 0) << r.output;
  train(d, "lora", fx, "lora_modules_to_save: [lm_head]\n");
  const stdfs::path run = d / "run";
  const stdfs::path ours = our_logits(run, "mts_tied");
  const nlohmann::json ac =
      nlohmann::json::parse(fs::read_file(run / "checkpoints/checkpoint-000003/adapter_config.json"));
  EXPECT_EQ(ac["modules_to_save"], nlohmann::json({"model.embed_tokens"}));
  EXPECT_EQ(ac["ensure_weight_tying"], true);
  r = run_cli("export " + q(run) + " --format peft --out " + q(d / "peft"));
  ASSERT_EQ(r.code, 0) << r.output;
  r = run_cli("export " + q(run) + " --format merged --dtype fp32 --out " + q(d / "merged"));
  ASSERT_EQ(r.code, 0) << r.output;
  {
    const io::SafetensorsFile a(d / "peft/adapter_model.safetensors");
    const io::SafetensorsFile b(fx / "model/model.safetensors");
    const at::Tensor e = a.tensor("base_model.model.model.embed_tokens.weight");
    EXPECT_TRUE(at::equal(e, a.tensor("base_model.model.lm_head.weight")));
    EXPECT_GT((e.to(at::kFloat) - b.tensor("model.embed_tokens.weight").to(at::kFloat)).abs().max().item<double>(),
              1e-3);
  }
  nlohmann::json checks = nlohmann::json::array();
  checks.push_back(peft_check("peft", fx / "model", d / "peft", ours));
  checks.push_back(peft_check("checkpoint", fx / "model", run / "checkpoints/checkpoint-000003", ours));
  checks.push_back(merged_check("merged", d / "merged", ours));
  const nlohmann::json j = judge(checks);
  std::printf("tied modules_to_save judge: %s\n", j.dump().c_str());
  ASSERT_TRUE(j.contains("peft")) << j.dump();
  EXPECT_LT(j["peft"]["rel"].get<double>(), 1e-4);
  EXPECT_LT(j["checkpoint"]["rel"].get<double>(), 1e-4);
  EXPECT_LT(j["merged"]["rel"].get<double>(), 1e-4);
}

TEST_F(Export, Phi3FusedProjectionsLoadInPeftAndTransformers) {
  const stdfs::path d = test::temp_dir("phi3_export");
  stdfs::create_directories(d / "fixture");
  test::ProcResult r = test::run_python("train_fixture.py", {(d / "fixture").string(), "phi3"});
  ASSERT_EQ(r.code, 0) << r.output;
  train(d, "qlora", d / "fixture");
  const stdfs::path run = d / "run", base = d / "fixture/model";
  const stdfs::path ours = our_logits(run, "phi3");
  r = run_cli("quantize --model " + q(base) + " --out " + q(d / "base_bnb") + " --compute-dtype float32");
  ASSERT_EQ(r.code, 0) << r.output;
  r = run_cli("export " + q(run) + " --format peft --out " + q(d / "peft"));
  ASSERT_EQ(r.code, 0) << r.output;
  r = run_cli("export " + q(run) + " --format merged --dtype fp32 --out " + q(d / "merged"));
  ASSERT_EQ(r.code, 0) << r.output;
  nlohmann::json checks = nlohmann::json::array();
  checks.push_back(peft_check("peft", d / "base_bnb", d / "peft", ours));
  checks.push_back(merged_check("merged", d / "merged", ours));
  const nlohmann::json j = judge(checks);
  std::printf("judge: %s\n", j.dump().c_str());
  ASSERT_TRUE(j.contains("peft")) << j.dump();
  EXPECT_LT(j["peft"]["rel"].get<double>(), 1e-4);
  EXPECT_EQ(j["peft"]["keys"], 2 * 2 * 4);  // qkv_proj, o_proj, gate_up_proj, down_proj per layer
  EXPECT_EQ(j["peft"]["lora_layers"], 2 * 4);
  EXPECT_EQ(j["peft"]["bnb_linears"], 2 * 4);
  EXPECT_LT(j["merged"]["rel"].get<double>(), 1e-4);
  EXPECT_FALSE(j["merged"]["quantization_config"].get<bool>());
}

// A mixture of experts (attention adapters, NF4 experts): the merged model (into the dequantized
// NF4 experts) loads with AutoModelForCausalLM and gives our logits; the PEFT adapter loads with
// PeftModel on the 16-bit base and equals merging it into the original weights.
TEST_F(Export, MixtralLoadsInPeftAndTransformers) {
  const stdfs::path d = test::temp_dir("mixtral_export");
  stdfs::create_directories(d / "fixture");
  test::ProcResult r = test::run_python("train_fixture.py", {(d / "fixture").string(), "mixtral"});
  ASSERT_EQ(r.code, 0) << r.output;
  train(d, "qlora", d / "fixture");
  const stdfs::path run = d / "run", base = d / "fixture/model";
  const stdfs::path ours = our_logits(run, "mixtral");
  r = run_cli("export " + q(run) + " --format peft --out " + q(d / "peft"));
  ASSERT_EQ(r.code, 0) << r.output;
  r = run_cli("export " + q(run) + " --format merged --dtype fp32 --out " + q(d / "merged"));
  ASSERT_EQ(r.code, 0) << r.output;
  r = run_cli("export " + q(run) + " --format merged --merge-into original --dtype fp32 --out " + q(d / "orig"));
  ASSERT_EQ(r.code, 0) << r.output;
  nlohmann::json checks = nlohmann::json::array();
  checks.push_back({{"name", "merged"},
                    {"kind", "merged"},
                    {"model", (d / "merged").string()},
                    {"ours", ours.string()},
                    {"dtype", "float32"}});
  checks.push_back({{"name", "original"},
                    {"kind", "merged_vs_peft"},
                    {"model", (d / "orig").string()},
                    {"base", base.string()},
                    {"adapter", (d / "peft").string()}});
  const nlohmann::json j = judge(checks);
  std::printf("judge: %s\n", j.dump().c_str());
  ASSERT_TRUE(j.contains("merged")) << j.dump();
  EXPECT_LT(j["merged"]["rel"].get<double>(), 1e-4);
  EXPECT_LT(j["original"]["rel"].get<double>(), 1e-4);
}

// Adapters on the experts (lora_target_parameters, PEFT's ParamWrapper on transformers' fused
// expert tensors) next to the attention adapters, trained on the 16-bit base: PeftModel loads the
// exported adapter (keys and adapter_config.json as PEFT writes them) and gives our logits; the
// merged model (every expert with its slice folded in) gives them too.
TEST_F(Export, MixtralExpertAdaptersLoadInPeftAndTransformers) {
  const stdfs::path d = test::temp_dir("mixtral_experts");
  stdfs::create_directories(d / "fixture");
  test::ProcResult r = test::run_python("train_fixture.py", {(d / "fixture").string(), "mixtral"});
  ASSERT_EQ(r.code, 0) << r.output;
  train(d, "lora", d / "fixture", "lora_target_parameters: [experts.gate_up_proj, experts.down_proj]\n");
  const stdfs::path run = d / "run", base = d / "fixture/model";
  const stdfs::path ours = our_logits(run, "mixtral_experts");
  {  // training moved the expert adapters (so equal logits say they were loaded)
    const run::AdapterSource src = run::read_adapter_source(run);
    for (const char* k : {"base_model.model.model.layers.1.mlp.experts.base_layer.lora_B.weight",
                          "base_model.model.model.layers.1.mlp.experts.lora_B.weight"})
      EXPECT_GT(src.tensors.at(k).abs().max().item<double>(), 1e-3) << k;
  }
  r = run_cli("export " + q(run) + " --format peft --out " + q(d / "peft"));
  ASSERT_EQ(r.code, 0) << r.output;
  const auto cfg = nlohmann::json::parse(fs::read_file(d / "peft/adapter_config.json"));
  EXPECT_EQ(cfg["target_parameters"], nlohmann::json({"experts.gate_up_proj", "experts.down_proj"}));
  r = run_cli("export " + q(run) + " --format merged --dtype fp32 --out " + q(d / "merged"));
  ASSERT_EQ(r.code, 0) << r.output;
  r = run_cli("export " + q(run) + " --format gguf-adapter --out " + q(d / "gguf"));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("target_parameters: a GGUF adapter holds no adapters on expert tensors"), std::string::npos)
      << r.output;
  nlohmann::json checks = nlohmann::json::array();
  checks.push_back({{"name", "peft"},
                    {"kind", "peft"},
                    {"base", base.string()},
                    {"adapter", (d / "peft").string()},
                    {"ours", ours.string()},
                    {"bnb", false}});
  checks.push_back({{"name", "merged"},
                    {"kind", "merged"},
                    {"model", (d / "merged").string()},
                    {"ours", ours.string()},
                    {"dtype", "float32"}});
  const nlohmann::json j = judge(checks);
  std::printf("judge: %s\n", j.dump().c_str());
  ASSERT_TRUE(j.contains("peft") && j.contains("merged")) << j.dump();
  EXPECT_LT(j["peft"]["rel"].get<double>(), 1e-4);
  EXPECT_EQ(j["peft"]["keys"].get<int64_t>(), 2 * 2 * (4 + 2));  // q, k, v, o and two expert adapters, A and B
  EXPECT_EQ(j["peft"]["lora_layers"].get<int64_t>(), 2 * (4 + 2));
  EXPECT_LT(j["merged"]["rel"].get<double>(), 1e-4);
}

// gguf-adapter through the CLI: read by the gguf package; names, shapes, types, alpha and the
// llama q/k lora_B permutation checked against the checkpoint's PEFT tensors.
TEST_F(Export, GgufAdapterReadByGgufPackage) {
  const stdfs::path d = test::temp_dir();
  test::ProcResult r =
      run_cli("export " + q(g->qlora_run) + " --format gguf-adapter --dtype fp32 --out " + q(d / "gguf"));
  ASSERT_EQ(r.code, 0) << r.output;
  const run::AdapterSource src = run::read_adapter_source(g->qlora_run);
  r = test::run_python("gguf_check.py", {(d / "gguf/adapter_model.gguf").string(),
                                         (src.dir / "adapter_model.safetensors").string(), "llama", "4", "2", "8"});
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("ok 28 tensors F32"), std::string::npos) << r.output;
  // default dtype: F16
  r = run_cli("export " + q(g->qlora_run) + " --format gguf-adapter --out " + q(d / "gguf16"));
  ASSERT_EQ(r.code, 0) << r.output;
  r = test::run_python("gguf_check.py", {(d / "gguf16/adapter_model.gguf").string(),
                                         (src.dir / "adapter_model.safetensors").string(), "llama", "4", "2", "8"});
  EXPECT_NE(r.output.find("ok 28 tensors F16"), std::string::npos) << r.output;
}

// --format gguf through the CLI, for each outtype (f16 the default): read by the gguf package
// (tensors equal to the merged fp32 export rounded to the file's type; Q8_0 bytes equal to
// gguf.quants.quantize), loaded by transformers with gguf_file= (equal weights, close logits) and
// its tokenizer giving the ids of the run's tokenizer (tests/python/gguf_model_check.py).
TEST_F(Export, GgufModelReadByGgufPackageAndTransformers) {
  const stdfs::path d = test::temp_dir();
  test::ProcResult r =
      run_cli("export " + q(g->qlora_run) + " --format merged --dtype fp32 --out " + q(d / "merged32"));
  ASSERT_EQ(r.code, 0) << r.output;
  for (const std::string t : {"f16", "bf16", "q8_0"}) {
    const stdfs::path out = d / ("gguf/model-" + t + ".gguf");  // the directory is created
    r = run_cli("export " + q(g->qlora_run) + " --format gguf" + (t == "f16" ? "" : " --outtype " + t) + " --out " +
                q(out));
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_NE(r.output.find("merged 14 adapted linears"), std::string::npos) << r.output;
    r = test::run_python("gguf_model_check.py", {out.string(), (d / "merged32").string(), t, g->model.string()});
    EXPECT_EQ(r.code, 0) << t << "\n" << r.output;
    EXPECT_NE(r.output.find("ok gguf 21 tensors"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("ok tokenizer"), std::string::npos) << r.output;
  }
  EXPECT_TRUE(leftovers(d / "gguf").empty());
}

// A GGUF base (Qwen3: tied embeddings, q/k norms, no q/k permutation; a SentencePiece tokenizer
// in its metadata) with a PEFT adapter made by PEFT: --format gguf drops output.weight and carries
// the base's tokenizer keys over; judged as above against the merged fp32 export.
TEST(ExportGgufModel, Qwen3GgufBaseWithPeftAdapter) {
  const stdfs::path d = test::temp_dir("export_gguf_qwen3");
  ASSERT_EQ(test::run_python("gguf_ref.py", {"model", d.string(), "qwen3", "F16"}).code, 0);
  test::ProcResult r = test::run_python("gguf_model_check.py", {"make-peft", d.string()});
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string common =
      "export " + q(d / "peft") + " --base-model " + q(d / "model.gguf") + " --merge-into original";
  r = run_cli(common + " --format merged --dtype fp32 --out " + q(d / "merged32"));
  ASSERT_EQ(r.code, 0) << r.output;
  for (const std::string t : {"bf16", "q8_0"}) {
    const stdfs::path out = d / ("qwen3-" + t + ".gguf");
    r = run_cli(common + " --format gguf --outtype " + t + " --out " + q(out));
    ASSERT_EQ(r.code, 0) << r.output;
    r = test::run_python("gguf_model_check.py",
                         {out.string(), (d / "merged32").string(), t, (d / "model.gguf").string()});
    EXPECT_EQ(r.code, 0) << t << "\n" << r.output;
    EXPECT_NE(r.output.find("ok gguf 24 tensors"), std::string::npos) << r.output;  // 25 with output.weight
    EXPECT_NE(r.output.find("ok tokenizer"), std::string::npos) << r.output;
  }
}

// Bad --format gguf requests: one line, exit 2, nothing written, an existing file kept.
TEST_F(Export, GgufModelBadInputsAreRefused) {
  const stdfs::path d = test::temp_dir();
  auto refused = [&](const std::string& args, const std::string& msg) {
    test::ProcResult r = run_cli("export " + q(g->qlora_run) + " --format gguf " + args);
    EXPECT_EQ(r.code, 2) << args << "\n" << r.output;
    EXPECT_NE(r.output.find("qlora: error: " + msg), std::string::npos) << args << "\n" << r.output;
  };
  refused("--outtype q4_0 --out " + q(d / "m.gguf"), "--outtype: expected f16, bf16, q8_0 or f32, got \"q4_0\"");
  refused("--dtype fp16 --out " + q(d / "m.gguf"), "--dtype: --format gguf takes the tensor type as --outtype");
  refused("--out " + q(d / "m.bin"), "--out: " + (d / "m.bin").string() + ": expected a file name ending in .gguf");
  stdfs::create_directories(d / "dir.gguf");
  refused("--out " + q(d / "dir.gguf"), (d / "dir.gguf").string() + ": is a directory");
  std::ofstream(d / "afile") << "x";
  refused("--out " + q(d / "afile/m.gguf"), (d / "afile/m.gguf").string() + ": cannot write");
  std::ofstream(d / "keep.gguf") << "old";
  refused("--out " + q(d / "keep.gguf"), (d / "keep.gguf").string() + ": exists (use --force to replace it)");
  EXPECT_EQ(fs::read_file(d / "keep.gguf"), "old");
  refused("--base-model " + q(d) + " --out " + q(d / "m.gguf"), "--base-model: ");
  {
    test::ProcResult r = run_cli("export " + q(g->qlora_run) + " --format merged --outtype f16 --out " + q(d / "x"));
    EXPECT_EQ(r.code, 2) << r.output;
    EXPECT_NE(r.output.find("--outtype: only --format gguf takes it"), std::string::npos) << r.output;
  }
  test::ProcResult r = run_cli("export " + q(g->qlora_run) + " --format gguf --force --out " + q(d / "keep.gguf"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(fs::read_file(d / "keep.gguf").substr(0, 4), "GGUF");
  EXPECT_FALSE(stdfs::exists(d / "m.gguf"));
  EXPECT_FALSE(stdfs::exists(d / "x"));
  EXPECT_TRUE(leftovers(d).empty());
  // families without a GGUF mapping here are named
  model::ModelConfig mc;
  mc.model_type = "phi3";
  mc.path = "base/config.json";
  try {
    exporter::gguf_architecture(mc);
    ADD_FAILURE() << "phi3 accepted";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("model_type: \"phi3\" cannot be exported as a GGUF model"), std::string::npos)
        << e.what();
  }
}

// Q8_0 exactly as ggml rounds: an all-zero block, values half-way between two steps (rounded away
// from zero), a block whose scale is not a power of two, and random rows, each written F32 and
// Q8_0 by the streaming writer and compared with gguf.quants.quantize by the gguf package.
TEST(GgufModelWriter, Q8_0MatchesGgufPackage) {
  const stdfs::path d = test::temp_dir("gguf_q8");
  std::vector<float> v(32 * 6, 0.0f);
  // amax 127: d = 1, so the others are exactly half-way
  for (int i = 0; i < 32; ++i) v[32 + i] = (i % 2 ? -1.0f : 1.0f) * (static_cast<float>(i) + 0.5f);
  v[32 + 31] = 127.0f;
  for (int i = 0; i < 32; ++i) v[64 + i] = static_cast<float>(i - 16) * 0.37f;
  for (int i = 0; i < 32; ++i) v[96 + i] = static_cast<float>(i) * 1e-7f;
  for (int i = 0; i < 64; ++i) v[128 + i] = std::sin(static_cast<float>(i) * 0.7f) * 3.0f;
  const at::Tensor a = at::from_blob(v.data(), {6, 32}, at::kFloat).clone();
  at::manual_seed(3);
  const at::Tensor b = at::randn({16, 64}) * 0.02;
  io::GgufMetadata meta;
  meta.add_string("general.architecture", "test");
  io::GgufStreamWriter w(d / "q8.gguf", meta,
                         {{"a.f32", {6, 32}, io::GgufOutType::F32},
                          {"a.q8", {6, 32}, io::GgufOutType::Q8_0},
                          {"b.f32", {16, 64}, io::GgufOutType::F32},
                          {"b.q8", {16, 64}, io::GgufOutType::Q8_0}});
  w.add("a.f32", a);
  w.add("a.q8", a);
  w.add("b.f32", b);
  w.add("b.q8", b);
  EXPECT_FALSE(stdfs::exists(d / "q8.gguf"));  // published only by finish()
  w.finish();
  test::ProcResult r = test::run_python("gguf_model_check.py", {"q8", (d / "q8.gguf").string()});
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("ok q8 2"), std::string::npos) << r.output;
}

// The tokenizer metadata of --format gguf from each tokenizer layout it takes (SentencePiece
// tokenizer.model, its tokenizer.json conversion, Llama 3 / Qwen2 / GPT-2 byte-level BPE): the
// tokenizer transformers builds from the GGUF gives the ids of AutoTokenizer on the directory.
TEST(GgufModelWriter, TokenizerMetadataMatchesTransformers) {
  const stdfs::path d = test::temp_dir("gguf_tok");
  test::ProcResult r = test::run_python("gguf_model_check.py", {"make-tokenizers", d.string()});
  ASSERT_EQ(r.code, 0) << r.output;
  const auto at = r.output.rfind("DIRS ");
  ASSERT_NE(at, std::string::npos) << r.output;
  const nlohmann::json dirs = nlohmann::json::parse(r.output.substr(at + 5, r.output.find('\n', at) - at - 5));
  for (const char* name : {"sp_model", "sp_json", "llama3", "qwen2", "gpt2"}) {
    const stdfs::path dir = dirs.at(name).get<std::string>();
    const int64_t vocab = tok::load_tokenizer(dir)->vocab_size();
    io::GgufMetadata meta;
    meta.add_string("general.architecture", "llama");
    exporter::add_gguf_tokenizer_metadata(meta, dir, vocab);
    io::GgufStreamWriter w(d / (std::string(name) + ".gguf"), meta, {});
    w.finish();
    // GGUF has no normalizer: Qwen2's NFC is compared on NFC text
    r = test::run_python("gguf_model_check.py", {"tokenizer", (d / (std::string(name) + ".gguf")).string(),
                                                 dir.string(), std::string(name) == "qwen2" ? "nfc" : ""});
    EXPECT_EQ(r.code, 0) << name << "\n" << r.output;
    EXPECT_NE(r.output.find("ok tokenizer"), std::string::npos) << name << "\n" << r.output;
  }
}

TEST_F(Export, NonEmptyOutputNeedsForceAndIsReplacedOnlyWhenComplete) {
  const stdfs::path d = test::temp_dir();
  stdfs::create_directories(d / "out");
  std::ofstream(d / "out/keep.txt") << "x";
  test::ProcResult r = run_cli("export " + q(g->qlora_run) + " --format peft --out " + q(d / "out"));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("output directory is not empty (use --force"), std::string::npos) << r.output;
  EXPECT_TRUE(stdfs::exists(d / "out/keep.txt"));
  r = run_cli("export " + q(g->qlora_run) + " --format peft --force --out " + q(d / "out"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_FALSE(stdfs::exists(d / "out/keep.txt"));
  EXPECT_TRUE(stdfs::exists(d / "out/adapter_model.safetensors"));
  EXPECT_TRUE(leftovers(d).empty());
  // An empty existing directory is fine without --force.
  stdfs::create_directories(d / "empty");
  r = run_cli("export " + q(g->qlora_run) + " --format peft --out " + q(d / "empty"));
  EXPECT_EQ(r.code, 0) << r.output;
  // The output must not hold the input (--force would delete it).
  r = run_cli("export " + q(g->qlora_run) + " --format peft --force --out " + q(g->qlora_run.parent_path()));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("must not be or contain the input"), std::string::npos) << r.output;
}

// An adapter made for another base: a clear one-line error naming the adapter file and the key,
// exit 2; a good output it was asked to --force over stays as it was, nothing is left beside it.
TEST_F(Export, AdapterForAnotherBaseIsRefusedByName) {
  const stdfs::path d = test::temp_dir();
  const run::AdapterSource src = run::read_adapter_source(g->qlora_run);
  test::ProcResult r = run_cli("export " + q(g->qlora_run) + " --format merged --out " + q(d / "good"));
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string good = fs::read_file(d / "good/model.safetensors");

  auto write_adapter = [&](const stdfs::path& dir, const std::map<std::string, at::Tensor>& ts) {
    stdfs::create_directories(dir);
    stdfs::copy_file(src.dir / "adapter_config.json", dir / "adapter_config.json");
    io::SafetensorsWriter w;
    for (const auto& [k, v] : ts) w.add(k, v);
    w.write(dir / "adapter_model.safetensors");
  };
  const std::string down_b = "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight";
  auto wrong_shape = src.tensors;
  wrong_shape[down_b] = at::zeros({65, 4});
  write_adapter(d / "wrong_shape", wrong_shape);
  auto extra_layer = src.tensors;
  extra_layer["base_model.model.model.layers.5.self_attn.q_proj.lora_A.weight"] = at::zeros({4, 64});
  write_adapter(d / "extra_layer", extra_layer);
  auto missing = src.tensors;
  missing.erase(down_b);
  write_adapter(d / "missing", missing);

  struct Case {
    std::string dir, format, expect;
  };
  for (const Case& c :
       {Case{"wrong_shape", "merged", down_b + ": shape [65, 4], but the base"},
        Case{"wrong_shape", "peft", down_b + ": shape [65, 4]"},
        Case{"wrong_shape", "gguf-adapter", down_b + ": shape [65, 4]"},
        Case{"extra_layer", "merged", "base_model.model.model.layers.5.self_attn.q_proj.lora_A.weight: the base"},
        Case{"missing", "merged", down_b + ": missing"}}) {
    SCOPED_TRACE(c.dir + " " + c.format);
    r = run_cli("export " + q(d / c.dir) + " --base-model " + q(g->model) + " --format " + c.format +
                " --force --out " + q(d / "good"));
    EXPECT_EQ(r.code, 2) << r.output;
    EXPECT_NE(r.output.find((d / c.dir / "adapter_model.safetensors").string() + ": " + c.expect), std::string::npos)
        << r.output;
    EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
    EXPECT_EQ(fs::read_file(d / "good/model.safetensors"), good);
    EXPECT_TRUE(leftovers(d).empty());
  }
  // --merge-into original needs the 16-bit weights; a bnb-4bit base does not have them.
  r = run_cli("quantize --model " + q(g->model) + " --out " + q(d / "bnb"));
  ASSERT_EQ(r.code, 0) << r.output;
  r = run_cli("export " + q(g->qlora_run) + " --base-model " + q(d / "bnb") +
              " --format merged --merge-into original --out " + q(d / "o"));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("is a 4-bit checkpoint"), std::string::npos) << r.output;
  EXPECT_FALSE(stdfs::exists(d / "o"));
  // ... while the default merge dequantizes it as it is (the same NF4 bytes the trainer used).
  r = run_cli("export " + q(g->qlora_run) + " --base-model " + q(d / "bnb") + " --format merged --out " +
              q(d / "from_bnb"));
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(fs::read_file(d / "from_bnb/model.safetensors"), good);
}

TEST(ExportSize, ParsesTransformersSizes) {
  EXPECT_EQ(exporter::parse_size("5GB", "x"), 5000000000ull);
  EXPECT_EQ(exporter::parse_size("2GiB", "x"), 2ull << 30);
  EXPECT_EQ(exporter::parse_size("500MB", "x"), 500000000ull);
  EXPECT_EQ(exporter::parse_size("40kb", "x"), 40000ull);
  EXPECT_EQ(exporter::parse_size("123", "x"), 123ull);
  EXPECT_EQ(exporter::parse_size("1.5GB", "x"), 1500000000ull);
  EXPECT_EQ(exporter::parse_size("512m", "x"), 512000000ull);  // as optimizer_device_budget reads it
  for (const char* bad : {"", "GB", "5XB", "-1GB", "0", "1..2GB"})
    EXPECT_THROW(exporter::parse_size(bad, "x"), UserError) << bad;
  test::ProcResult r = test::run_qlora("export x --format merged --max-shard-size 5XB --out y");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("--max-shard-size: expected a size"), std::string::npos) << r.output;
}

// Gemma 2 and Gemma 3 (text) through quantize and export: a PEFT adapter (random lora_B, all linear
// layers) on transformers' tiny random models. `qlora quantize` output loads with transformers +
// bitsandbytes, and with our PEFT export on it PEFT's logits equal ours (NF4 base); the merged
// fp32 export (into the dequantized NF4 weights) loads with transformers and equals ours.
TEST(ExportGemma, ReferenceLibrariesAgree) {
  const stdfs::path d = test::temp_dir("export_gemma");
  test::ProcResult r = test::run_python("export_check.py", {"make-gemma", d.string()});
  ASSERT_EQ(r.code, 0) << r.output;
  at::manual_seed(13);
  io::SafetensorsWriter ids;
  ids.add("input_ids", at::randint(60, {2, 12}, at::kLong));
  ids.write(d / "ids.safetensors");
  nlohmann::json checks = nlohmann::json::array();
  for (const std::string fam : {"gemma2", "gemma3"}) {
    const stdfs::path f = d / fam;
    r = test::run_qlora("quantize --model " + q(f / "model") + " --out " + q(f / "bnb") + " --compute-dtype float32");
    ASSERT_EQ(r.code, 0) << r.output;
    r = test::run_qlora("export " + q(f / "adapter") + " --format peft --out " + q(f / "peft"));
    ASSERT_EQ(r.code, 0) << r.output;
    r = test::run_qlora("export " + q(f / "adapter") + " --format merged --dtype fp32 --out " + q(f / "merged"));
    ASSERT_EQ(r.code, 0) << r.output;
    // Ours: the base in NF4 (a plain PEFT directory's default), fp32 compute.
    const run::AdapterSource src = run::read_adapter_source(f / "adapter");
    model::ModelLoadOptions opts = run::adapter_load_options(src, at::kCPU);
    opts.compute_dtype = at::kFloat;
    ASSERT_TRUE(opts.quantize);
    model::Model m = run::load_model_with_adapter({}, src, opts);
    {
      at::NoGradGuard ng;
      io::SafetensorsWriter w;
      w.add("logits", m.logits(m.forward(io::SafetensorsFile(d / "ids.safetensors").tensor("input_ids").clone())));
      w.write(f / "ours.safetensors");
    }
    checks.push_back({{"name", fam + "_peft"},
                      {"kind", "peft"},
                      {"base", (f / "bnb").string()},
                      {"adapter", (f / "peft").string()},
                      {"ours", (f / "ours.safetensors").string()}});
    checks.push_back({{"name", fam + "_merged"},
                      {"kind", "merged"},
                      {"model", (f / "merged").string()},
                      {"ours", (f / "ours.safetensors").string()},
                      {"dtype", "float32"}});
  }
  nlohmann::json spec;
  spec["ids"] = (d / "ids.safetensors").string();
  spec["checks"] = checks;
  std::ofstream(d / "spec.json") << spec.dump(2);
  r = test::run_python("export_check.py", {(d / "spec.json").string()});
  ASSERT_EQ(r.code, 0) << r.output;
  const auto at = r.output.rfind("RESULT {");
  ASSERT_NE(at, std::string::npos) << r.output;
  const nlohmann::json j = nlohmann::json::parse(r.output.substr(at + 7, r.output.find('\n', at) - at - 7));
  std::printf("judge: %s\n", j.dump().c_str());
  for (const std::string fam : {"gemma2", "gemma3"}) {
    SCOPED_TRACE(fam);
    const int64_t layers = fam == "gemma2" ? 3 : 4;
    const auto& p = j[fam + "_peft"];
    EXPECT_LT(p["rel"].get<double>(), 1e-4);
    EXPECT_EQ(p["lora_layers"], layers * 7);
    EXPECT_EQ(p["bnb_linears"], layers * 7);  // the quantized base really ran through bitsandbytes
    const auto& mg = j[fam + "_merged"];
    EXPECT_LT(mg["rel"].get<double>(), 1e-4);
    EXPECT_FALSE(mg["quantization_config"].get<bool>());
  }
}

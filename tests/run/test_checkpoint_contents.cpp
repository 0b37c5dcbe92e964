// Checkpoints whose files match their manifest but are malformed inside: each malformation is
// crafted from a real checkpoint of a short training run of the tiny fixture, the manifest is
// signed again so only the inside is wrong, and the checkpoint must be refused naming the file
// (explicit --resume, export, generate, eval: exit 2, one line, nothing in the run changed) or
// skipped for the older intact one with a warning (resume from the run directory).
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <functional>
#include <limits>

#include "tests/common/harness.h"
#include "trainer/common/fs.h"
#include "trainer/common/sha256.h"
#include "trainer/io/safetensors.h"
#include "trainer/run/checkpoint.h"
#include "trainer/run/checkpoint_state.h"
#include "trainer/run/layout.h"

using namespace qlora;
namespace stdfs = std::filesystem;
using json = nlohmann::json;

namespace {

stdfs::path* g_dir = nullptr;  // fixture/, cfg.yaml, run/ (the run under test), pristine/ (its copy)

stdfs::path fixture() { return *g_dir / "fixture"; }
stdfs::path cfg_path() { return *g_dir / "cfg.yaml"; }
stdfs::path run_dir() { return *g_dir / "run"; }
stdfs::path pristine() { return *g_dir / "pristine"; }
stdfs::path ck(int step) { return run::checkpoints_dir(run_dir()) / run::checkpoint_name(step); }

test::ProcResult qlora_cmd(const std::string& args) {
  return test::run(test::quote(test::qlora_exe().string()) + " " + args);
}

// Puts the trained run back as it was.
void reset_run() {
  stdfs::remove_all(run_dir());
  stdfs::copy(pristine(), run_dir(), stdfs::copy_options::recursive);
}

// Signs the checkpoint's files again, so that only their contents are wrong.
void resign(const stdfs::path& c) {
  json m = json::parse(fs::read_file(c / run::kManifestFile));
  json files = json::object();
  for (const auto& e : stdfs::directory_iterator(c)) {
    const std::string n = e.path().filename().string();
    if (n == run::kManifestFile) continue;
    files[n] = {{"sha256", sha256_file(e.path())}, {"bytes", static_cast<uint64_t>(stdfs::file_size(e.path()))}};
  }
  m["files"] = files;
  std::ofstream(c / run::kManifestFile) << m.dump(2);
}

void edit_json(const stdfs::path& f, const std::function<void(json&)>& fn) {
  json j = json::parse(fs::read_file(f));
  fn(j);
  std::ofstream(f) << j.dump(2);
}

void edit_tensors(const stdfs::path& f, const std::function<void(std::map<std::string, at::Tensor>&)>& fn) {
  std::map<std::string, at::Tensor> ts;
  {
    io::SafetensorsFile sf(f);
    for (const auto& t : sf.tensors()) ts[t.name] = sf.tensor(t.name).clone();
  }
  fn(ts);
  io::SafetensorsWriter w;
  for (const auto& [k, v] : ts) w.add(k, v);
  w.write(f);
}

// The first LoRA parameter's name (the optimizer's order).
std::string first_param() {
  return json::parse(fs::read_file(ck(4) / run::kOptimizerStateFile))["params"][0]["name"].get<std::string>();
}

class CheckpointContents : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    g_dir = new stdfs::path(test::temp_dir("ckpt-contents"));
    test::ProcResult r = test::run_python("train_fixture.py", {fixture().string()});
    ASSERT_EQ(r.code, 0) << r.output;
    std::ofstream o(cfg_path());
    o << "base_model: " << (fixture() / "model").string() << "\n"
      << "adapter: qlora\nlora_r: 8\nlora_alpha: 16\nlora_dropout: 0.1\n"
      << "lora_target_modules:\n  - q_proj\n  - v_proj\n"
      << "sequence_len: 256\nmicro_batch_size: 2\ngradient_accumulation_steps: 2\nmax_steps: 4\nsave_steps: 2\n"
      << "learning_rate: 0.002\nwarmup_steps: 1\n"
      << "datasets:\n  - path: " << (fixture() / "train.jsonl").string() << "\n    type: alpaca\n"
      << "output_dir: " << run_dir().string() << "\n";
    o.close();
    r = qlora_cmd("train " + test::quote(cfg_path().string()));
    ASSERT_EQ(r.code, 0) << r.output;
    ASSERT_TRUE(stdfs::exists(ck(2))) << r.output;
    ASSERT_TRUE(stdfs::exists(ck(4))) << r.output;
    stdfs::copy(run_dir(), pristine(), stdfs::copy_options::recursive);
  }
  void SetUp() override {
    if (!g_dir || !stdfs::exists(pristine())) GTEST_SKIP() << "no trained run";
    reset_run();
  }
};

struct Malformation {
  std::string name;
  std::string file;  // the file inside the checkpoint the error must name
  std::string says;  // a fragment of what is wrong
  std::function<void(const stdfs::path&)> apply;
};

std::vector<Malformation> malformations() {
  using T = std::map<std::string, at::Tensor>;
  const std::string ts = run::kTrainerStateFile, oj = run::kOptimizerStateFile, ot = run::kOptimizerTensorsFile,
                    ad = run::kAdapterWeightsFile, ac = run::kAdapterConfigFile, rng = run::kRngStateFile;
  auto j = [](const std::string& f, std::function<void(json&)> fn) {
    return [f, fn](const stdfs::path& c) { edit_json(c / f, fn); };
  };
  auto t = [](const std::string& f, std::function<void(T&)> fn) {
    return [f, fn](const stdfs::path& c) { edit_tensors(c / f, fn); };
  };
  auto text = [](const std::string& f, std::string s) {
    return [f, s](const stdfs::path& c) { std::ofstream(c / f) << s; };
  };
  const std::string p = first_param();
  return {
      {"state_not_json", ts, "not valid JSON", text(ts, "{\"global_step\": 4,")},
      {"state_not_object", ts, "expected a JSON object", text(ts, "[4]")},
      {"step_is_text", ts, "global_step: expected an integer", j(ts, [](json& x) { x["global_step"] = "4"; })},
      {"step_negative", ts, "global_step: -4 is out of range", j(ts, [](json& x) { x["global_step"] = -4; })},
      {"step_absurd", ts, "global_step: 1000000000000000000 is out of range",
       j(ts, [](json& x) { x["global_step"] = 1000000000000000000LL; })},
      {"step_vs_data", ts, "disagrees with the data position", j(ts, [](json& x) { x["global_step"] = 3; })},
      // Moved by one micro-batch (refused as out of step with global_step, or as past the data),
      // and off a batch boundary.
      {"position_moved", ts, "loader.position",
       j(ts,
         [](json& x) {
           const int64_t pos = x["loader"]["position"].get<int64_t>();
           x["loader"]["position"] = pos >= 2 ? pos - 2 : pos + 2;
         })},
      {"position_off_boundary", ts, "loader.position",
       j(ts,
         [](json& x) {
           const int64_t pos = x["loader"]["position"].get<int64_t>();
           x["loader"]["position"] = pos >= 1 ? pos - 1 : pos + 1;
         })},
      {"epoch_negative", ts, "loader.epoch: expected a non-negative integer",
       j(ts, [](json& x) { x["loader"]["epoch"] = -1; })},
      {"epoch_ahead", ts, "disagrees with the data position", j(ts, [](json& x) { x["loader"]["epoch"] = 3; })},
      {"loader_missing", ts, "loader: missing", j(ts, [](json& x) { x.erase("loader"); })},
      {"loader_key_missing", ts, "loader.seed: missing", j(ts, [](json& x) { x["loader"].erase("seed"); })},
      {"skipped_above_step", ts, "skipped_steps: 9 is out of range", j(ts, [](json& x) { x["skipped_steps"] = 9; })},
      {"elapsed_negative", ts, "elapsed_s: expected a non-negative number",
       j(ts, [](json& x) { x["elapsed_s"] = -3.5; })},
      {"manifest_step", ts, "disagrees with the manifest's step 6",
       [](const stdfs::path& c) { edit_json(c / run::kManifestFile, [](json& x) { x["step"] = 6; }); }},
      {"optimizer_not_json", oj, "not valid JSON", text(oj, "{")},
      {"optimizer_format", oj, "format: expected", j(oj, [](json& x) { x["format"] = "torch.adamw"; })},
      {"optimizer_step", oj, "step 3 disagrees", j(oj, [](json& x) { x["step"] = 3; })},
      {"optimizer_kind", oj, "state_8bit: true, but config.yaml's optimizer is adamw",
       j(oj, [](json& x) { x["state_8bit"] = true; })},
      {"optimizer_param_name", oj, "is not a LoRA parameter name",
       j(oj, [](json& x) { x["params"][0]["name"] = "model.embed_tokens.weight"; })},
      {"optimizer_param_state", oj, "params[0].state", j(oj, [](json& x) { x["params"][0]["state"] = "8bit"; })},
      {"optimizer_params_missing", oj, "params: missing", j(oj, [](json& x) { x.erase("params"); })},
      {"tensor_renamed", ot, p + ".master: missing",
       t(ot,
         [p](T& x) {
           x[p + ".mastr"] = x.at(p + ".master");
           x.erase(p + ".master");
         })},
      {"tensor_extra", ot, "unexpected tensor", t(ot, [](T& x) { x["stray"] = at::zeros({2}); })},
      {"tensor_dtype", ot, p + ".exp_avg: BFloat16",
       t(ot, [p](T& x) { x[p + ".exp_avg"] = x.at(p + ".exp_avg").to(at::kBFloat16); })},
      {"tensor_shape", ot, p + ".exp_avg_sq: Float",
       t(ot, [p](T& x) { x[p + ".exp_avg_sq"] = x.at(p + ".exp_avg_sq").t().contiguous(); })},
      {"tensor_nan", ot, p + ".master: non-finite values (NaN at element 5)",
       t(ot, [p](T& x) { x.at(p + ".master").view({-1})[5] = std::numeric_limits<float>::quiet_NaN(); })},
      {"tensor_inf", ot, p + ".exp_avg: non-finite values (Inf at element 0)",
       t(ot, [p](T& x) { x.at(p + ".exp_avg").view({-1})[0] = std::numeric_limits<float>::infinity(); })},
      {"second_moment_negative", ot, "exp_avg_sq: negative values",
       t(ot, [p](T& x) { x.at(p + ".exp_avg_sq").view({-1})[1] = -1.0f; })},
      {"adapter_missing", ad, p + ": missing", t(ad, [p](T& x) { x.erase(p); })},
      {"adapter_extra", ad, "unexpected tensor",
       t(ad,
         [](T& x) {
           x["base_model.model.lm_head.lora_A.weight"] = at::zeros({8, 64});
         })},
      {"adapter_dtype", ad, p + ": BFloat16", t(ad, [p](T& x) { x[p] = x.at(p).to(at::kBFloat16); })},
      {"adapter_shape", ad, p + ": Float",
       t(ad,
         [p](T& x) {
           x[p] = at::zeros({4, 4});
         })},
      {"adapter_nan", ad, "non-finite values (NaN at element 3)",
       t(ad, [p](T& x) { x.at(p).view({-1})[3] = std::numeric_limits<float>::quiet_NaN(); })},
      {"adapter_vs_master", ad, "differs from the optimizer's master",
       t(ad, [p](T& x) { x.at(p).view({-1})[0] += 1.0f; })},
      {"adapter_config_not_json", ac, "", text(ac, "{\"r\": ")},
      {"adapter_config_rank", ad, "rank 8, but adapter_config.json says r 4", j(ac, [](json& x) { x["r"] = 4; })},
      {"rng_short", rng, "dropout_generator: Byte [100], expected Byte",
       t(rng, [](T& x) { x["dropout_generator"] = x.at("dropout_generator").slice(0, 0, 100).clone(); })},
      {"rng_missing", rng, "cpu_generator: missing", t(rng, [](T& x) { x.erase("cpu_generator"); })},
      {"rng_dtype", rng, "cpu_generator: Float",
       t(rng, [](T& x) { x["cpu_generator"] = x.at("cpu_generator").to(at::kFloat); })},
      {"config_not_yaml", run::kConfigFile, "", text(run::kConfigFile, "base_model: [unclosed\n")},
  };
}

}  // namespace

TEST_F(CheckpointContents, IntactCheckpointPassesAndSavesNoOffset) {
  EXPECT_EQ(run::check_checkpoint(ck(4)).value_or("ok"), "ok");
  EXPECT_EQ(run::check_checkpoint(ck(2)).value_or("ok"), "ok");
  EXPECT_FALSE(json::parse(fs::read_file(ck(4) / run::kTrainerStateFile)).contains("micro_batch_offset"));
}

// Every malformation: check_checkpoint names the file; `train --resume CHECKPOINT` refuses it with
// exit 2 and one line before anything in the run directory changes; resuming from the run
// directory would skip it for checkpoint 2 with a warning.
TEST_F(CheckpointContents, EachMalformationIsRefusedNamingTheFile) {
  const std::string metrics = fs::read_file(run::metrics_file(run_dir()));
  const std::string config = fs::read_file(run::config_file(run_dir()));
  for (const Malformation& m : malformations()) {
    SCOPED_TRACE(m.name);
    reset_run();
    m.apply(ck(4));
    resign(ck(4));
    ASSERT_FALSE(run::verify_checkpoint(ck(4)).has_value()) << "the manifest must match";
    const std::optional<std::string> why = run::check_checkpoint(ck(4));
    ASSERT_TRUE(why.has_value()) << "accepted";
    EXPECT_EQ(why->rfind((ck(4) / m.file).string() + ":", 0), 0u) << *why;
    EXPECT_NE(why->find(m.says), std::string::npos) << *why;
    EXPECT_EQ(why->find('\n'), std::string::npos) << *why;

    std::vector<std::string> warnings;
    auto found = run::find_resume_checkpoint(run::checkpoints_dir(run_dir()), &warnings, run::check_checkpoint);
    ASSERT_TRUE(found.has_value());
    EXPECT_EQ(*found, ck(2));
    ASSERT_EQ(warnings.size(), 1u);
    EXPECT_EQ(warnings[0], *why + "; skipped");

    test::ProcResult r =
        qlora_cmd("train " + test::quote(cfg_path().string()) + " --resume " + test::quote(ck(4).string()));
    EXPECT_EQ(r.code, 2) << r.output;
    EXPECT_EQ(r.output.rfind("qlora: error: " + (ck(4) / m.file).string() + ":", 0), 0u) << r.output;
    EXPECT_EQ(r.output.find('\n'), r.output.size() - 1) << r.output;
    EXPECT_EQ(fs::read_file(run::metrics_file(run_dir())), metrics);
    EXPECT_EQ(fs::read_file(run::config_file(run_dir())), config);
  }
}

// Resuming from the run directory skips the malformed newest checkpoint with a warning and
// continues from the older intact one.
TEST_F(CheckpointContents, RunDirectoryResumeSkipsToTheOlderIntactCheckpoint) {
  edit_json(ck(4) / run::kTrainerStateFile, [](json& x) { x["global_step"] = "four"; });
  resign(ck(4));
  test::ProcResult r = qlora_cmd("train " + test::quote(cfg_path().string()) + " --resume");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("qlora: warning: " + (ck(4) / run::kTrainerStateFile).string() +
                          ": global_step: expected an integer"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("resumed from " + ck(2).string() + " at step 2"), std::string::npos) << r.output;
  EXPECT_EQ(run::check_checkpoint(ck(4)).value_or("ok"), "ok") << "step 4 written again";
}

// export, generate --adapter and eval --adapter refuse a malformed checkpoint named directly (and
// write nothing), and take the older intact one from a run directory with a warning.
TEST_F(CheckpointContents, ExportGenerateEvalRefuseAMalformedCheckpoint) {
  const std::string p = first_param();
  edit_tensors(ck(4) / run::kAdapterWeightsFile,
               [&](std::map<std::string, at::Tensor>& x) { x.at(p).view({-1})[0] = INFINITY; });
  resign(ck(4));
  const std::string file = (ck(4) / run::kAdapterWeightsFile).string();
  const stdfs::path out = *g_dir / "export-out";
  const std::string c4 = test::quote(ck(4).string());
  for (const std::string& args :
       {"export " + c4 + " --out " + test::quote(out.string()), "generate --adapter " + c4 + " --prompt hi",
        "eval --adapter " + c4 + " --data " + test::quote((fixture() / "eval.jsonl").string()) + " --type alpaca"}) {
    SCOPED_TRACE(args);
    test::ProcResult r = qlora_cmd(args);
    EXPECT_EQ(r.code, 2) << r.output;
    EXPECT_EQ(r.output.rfind("qlora: error: " + file + ": " + p + ": non-finite values (Inf at element 0)", 0), 0u)
        << r.output;
    EXPECT_FALSE(stdfs::exists(out));
  }
  test::ProcResult r = qlora_cmd("export " + test::quote(run_dir().string()) + " --out " + test::quote(out.string()));
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("qlora: warning: " + file + ": " + p + ": non-finite"), std::string::npos) << r.output;
  EXPECT_TRUE(stdfs::exists(out / "adapter_model.safetensors"));
}

// Consistent inside but not this model's: the optimizer's parameters name a layer the model does
// not have. Refused when the state is matched with the model, naming the file, before
// metrics.jsonl is touched.
TEST_F(CheckpointContents, OptimizerStateOfAnotherModelIsRefusedBeforeTheRunChanges) {
  const std::string p = first_param();
  const std::string q = std::string(p).replace(p.find("layers.0."), 9, "layers.7.");
  ASSERT_NE(p, q);
  edit_json(ck(4) / run::kOptimizerStateFile, [&](json& x) { x["params"][0]["name"] = q; });
  edit_tensors(ck(4) / run::kOptimizerTensorsFile, [&](std::map<std::string, at::Tensor>& x) {
    for (const char* s : {".master", ".exp_avg", ".exp_avg_sq"}) {
      x[q + s] = x.at(p + s);
      x.erase(p + s);
    }
  });
  edit_tensors(ck(4) / run::kAdapterWeightsFile, [&](std::map<std::string, at::Tensor>& x) {
    x[q] = x.at(p);
    x.erase(p);
  });
  resign(ck(4));
  ASSERT_EQ(run::check_checkpoint(ck(4)).value_or("ok"), "ok");
  const std::string metrics = fs::read_file(run::metrics_file(run_dir()));
  test::ProcResult r =
      qlora_cmd("train " + test::quote(cfg_path().string()) + " --resume " + test::quote(ck(4).string()));
  EXPECT_EQ(r.code, 2) << r.output;
  const std::string line = "qlora: error: " + (ck(4) / run::kOptimizerTensorsFile).string() + ": ";
  EXPECT_NE(r.output.find(line), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(q), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("internal error"), std::string::npos) << r.output;
  EXPECT_EQ(fs::read_file(run::metrics_file(run_dir())), metrics);
}

// A checkpoint that cannot be written (here: a file size limit, as a full disk would) names the
// checkpoint, not the temporary folder it was staged in, and leaves no checkpoint behind.
TEST_F(CheckpointContents, WriteFailureNamesTheCheckpointNotItsStagingFolder) {
  const stdfs::path d = test::temp_dir("ckpt-write");
  std::string cfg = fs::read_file(cfg_path());
  cfg.replace(cfg.find("output_dir: "), std::string::npos, "output_dir: " + (d / "run").string() + "\n");
  cfg.replace(cfg.find("max_steps: 4"), 12, "max_steps: 2");
  std::ofstream(d / "cfg.yaml") << cfg;
  // Each LoRA file of the checkpoint is a few to tens of kB; 12-24 kB stops one of them (ulimit -f
  // counts 512- or 1024-byte blocks), with SIGXFSZ ignored so the write fails with EFBIG.
  test::ProcResult r = test::run("trap '' XFSZ; ulimit -f 24; exec " + test::quote(test::qlora_exe().string()) +
                                 " train " + test::quote((d / "cfg.yaml").string()));
  EXPECT_EQ(r.code, 2) << r.output;
  const std::string ckpt = (d / "run" / "checkpoints" / "checkpoint-000002").string();
  const size_t at = r.output.find("qlora: error: " + ckpt + "/");
  EXPECT_NE(at, std::string::npos) << r.output;
  EXPECT_NE(r.output.find("(checkpoint not written)", at), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find(".tmp-"), std::string::npos) << r.output;
  EXPECT_FALSE(stdfs::exists(ckpt));
}

// A base model with a NaN in one weight: every command that reads the weights refuses it naming
// the file, the tensor and the element (quantization would otherwise turn it into a finite code,
// a 16-bit eval would print "loss nan" and succeed).
TEST_F(CheckpointContents, NonFiniteBaseWeightsAreRefusedByEveryCommand) {
  const stdfs::path bad = *g_dir / "nan-model";
  stdfs::remove_all(bad);
  stdfs::copy(fixture() / "model", bad, stdfs::copy_options::recursive);
  const std::string tensor = "model.layers.1.mlp.up_proj.weight";
  edit_tensors(bad / "model.safetensors", [&](std::map<std::string, at::Tensor>& x) {
    x.at(tensor).view({-1})[17] = std::numeric_limits<float>::quiet_NaN();
  });
  const std::string want = "qlora: error: " + (bad / "model.safetensors").string() + ": " + tensor +
                           ": non-finite values (NaN at element 17)\n";
  std::string cfg = fs::read_file(cfg_path());
  cfg.replace(cfg.find("base_model: "), cfg.find('\n') + 1, "base_model: " + bad.string() + "\n");
  cfg.replace(cfg.find("output_dir: "), std::string::npos, "output_dir: " + (*g_dir / "nan-run").string() + "\n");
  std::ofstream(*g_dir / "nan.yaml") << cfg;
  const stdfs::path out = *g_dir / "nan-out";
  const std::string b = test::quote(bad.string()), o = test::quote(out.string());
  const std::string data = test::quote((fixture() / "eval.jsonl").string());
  for (const std::string& args :
       {"quantize --model " + b + " --out " + o, "eval --model " + b + " --data " + data,
        "eval --model " + b + " --data " + data + " --load-in-4bit",
        "generate --model " + b + " --prompt hi --max-new-tokens 2",
        "train " + test::quote((*g_dir / "nan.yaml").string()),
        "export " + test::quote(ck(4).string()) + " --format merged --base-model " + b + " --out " + o}) {
    SCOPED_TRACE(args);
    test::ProcResult r = qlora_cmd(args);
    EXPECT_EQ(r.code, 2) << r.output;
    EXPECT_NE(r.output.find(want), std::string::npos) << r.output;
    EXPECT_FALSE(stdfs::exists(out));
  }
}

// qlora train end to end on a tiny model made by transformers at test time: exact resume,
// checkpoint fallback, config-change refusal, non-finite steps, accumulation normalization,
// every check before anything is written (with the config line), memory refusal and an
// allocation failure mid-run.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <sstream>
#include <tuple>

#include "tests/common/harness.h"
#include "tests/train/fixture_config.h"
#include "trainer/common/fs.h"

using namespace qlora;
namespace stdfs = std::filesystem;

namespace {

stdfs::path* g_fix = nullptr;

class TrainE2E : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    g_fix = new stdfs::path(test::temp_dir("fixture"));
    test::ProcResult r = test::run_python("train_fixture.py", {g_fix->string()});
    ASSERT_EQ(r.code, 0) << r.output;
  }
  static void TearDownTestSuite() { delete g_fix; }

  // A config for the fixture; `extra` lines are appended (later keys are not allowed to repeat,
  // so tests pass overrides with --set instead).
  stdfs::path write_config(const stdfs::path& dir, const std::string& extra = "") {
    return test::write_fixture_config(*g_fix, dir, extra);
  }

  static test::ProcResult train(const stdfs::path& cfg, const std::string& args = "") {
    return test::run(test::quote(test::qlora_exe().string()) + " train " + test::quote(cfg.string()) + " " + args);
  }

  // The runs in a/run and b/run trained 8 steps with the same losses, gradient norms and final
  // adapter, bit for bit.
  static void expect_same_eight_steps(const stdfs::path& a, const stdfs::path& b) {
    auto la = losses(a / "run"), lb = losses(b / "run");
    ASSERT_EQ(la.size(), 8u);
    ASSERT_EQ(lb.size(), 8u);
    for (auto& [step, v] : la) {
      EXPECT_EQ(v.first, lb[step].first) << "loss at step " << step;
      EXPECT_EQ(v.second, lb[step].second) << "grad norm at step " << step;
    }
    EXPECT_EQ(fs::read_file(a / "run/checkpoints/checkpoint-000008/adapter_model.safetensors"),
              fs::read_file(b / "run/checkpoints/checkpoint-000008/adapter_model.safetensors"));
  }

  // Every file under `dir`, path -> bytes.
  static std::map<std::string, std::string> snapshot(const stdfs::path& dir) {
    std::map<std::string, std::string> m;
    for (const auto& e : stdfs::recursive_directory_iterator(dir))
      m[e.path().string()] = e.is_regular_file() ? fs::read_file(e.path()) : std::string("<dir>");
    return m;
  }

  // The 1-based line of `cfg` that starts with `key:`, as "cfg.yaml:N: ".
  static std::string where(const stdfs::path& cfg, const std::string& key) {
    std::ifstream in(cfg);
    std::string line;
    for (int n = 1; std::getline(in, line); ++n)
      if (line.rfind(key + ":", 0) == 0) return cfg.string() + ":" + std::to_string(n) + ": ";
    ADD_FAILURE() << key << " not in " << cfg;
    return "";
  }

  // The lines of `out` that start with `prefix`.
  static std::vector<std::string> lines_starting(const std::string& out, const std::string& prefix) {
    std::vector<std::string> v;
    std::istringstream in(out);
    std::string line;
    while (std::getline(in, line))
      if (line.rfind(prefix, 0) == 0) v.push_back(line);
    return v;
  }

  // (step -> (loss, grad_norm)) from metrics.jsonl
  static std::map<int64_t, std::pair<double, double>> losses(const stdfs::path& run) {
    std::map<int64_t, std::pair<double, double>> m;
    std::ifstream in(run / "metrics.jsonl");
    std::string line;
    while (std::getline(in, line)) {
      auto j = nlohmann::json::parse(line);
      if (j.contains("loss") && !j["loss"].is_null())
        m[j["step"].get<int64_t>()] = {j["loss"].get<double>(), j["grad_norm"].get<double>()};
    }
    return m;
  }
};

}  // namespace

TEST_F(TrainE2E, ResumeGivesBitIdenticalLosses) {
  // The third run starts from PiSSA (a randomized SVD): the resumed run recomputes the same base.
  // The fourth also trains the embedding and the output head in full (lora_modules_to_save); the
  // fifth trains DoRA magnitudes (1-D parameters, with dropout's second base product).
  for (const auto& [opt, init, more] : std::vector<std::tuple<std::string, std::string, std::string>>{
           {"paged_adamw", "true", ""},
           {"paged_adamw_8bit", "true", ""},
           {"paged_adamw", "pissa_niter_2", ""},
           {"paged_adamw_8bit", "true", "lora_modules_to_save: [embed_tokens, lm_head]\nweight_decay: 0.01\n"},
           {"paged_adamw", "true", "use_dora: true\n"}}) {
    SCOPED_TRACE(opt + " init_lora_weights: " + init + " " + more);
    auto a = test::temp_dir("straight");
    auto b = test::temp_dir("resumed");
    // A tiny device budget: state streams through pages even on the CPU's two tiers.
    const std::string extra = "optimizer: " + opt + "\noptimizer_device_budget: 4KB\nsave_steps: 3\n" +
                              "init_lora_weights: " + init + "\n" + more;
    test::ProcResult ra = train(write_config(a, extra));
    ASSERT_EQ(ra.code, 0) << ra.output;
    test::ProcResult rb1 = train(write_config(b, extra), "--test-stop-after-step 4");
    ASSERT_EQ(rb1.code, 0) << rb1.output;
    EXPECT_NE(rb1.output.find("--resume"), std::string::npos) << rb1.output;
    EXPECT_EQ(losses(b / "run").size(), 4u);
    test::ProcResult rb2 = train(b / "cfg.yaml", "--resume");
    ASSERT_EQ(rb2.code, 0) << rb2.output;
    EXPECT_NE(rb2.output.find("resumed from"), std::string::npos) << rb2.output;
    expect_same_eight_steps(a, b);       // losses, gradient norms and the final adapters
    if (more.starts_with("use_dora")) {  // the magnitudes under PEFT's key, float32
      const std::string st = fs::read_file(b / "run/checkpoints/checkpoint-000008/adapter_model.safetensors");
      EXPECT_NE(st.find(".self_attn.q_proj.lora_magnitude_vector\""), std::string::npos);
    }
    if (more.starts_with("lora_modules_to_save")) {  // the full weights under PEFT's keys, named in adapter_config.json
      const std::string ac = fs::read_file(b / "run/checkpoints/checkpoint-000008/adapter_config.json");
      const auto j = nlohmann::json::parse(ac);
      EXPECT_EQ(j["modules_to_save"], nlohmann::json({"model.embed_tokens", "lm_head"})) << ac;
      const std::string st = fs::read_file(b / "run/checkpoints/checkpoint-000008/adapter_model.safetensors");
      EXPECT_NE(st.find("\"base_model.model.model.embed_tokens.weight\""), std::string::npos);
      EXPECT_NE(st.find("\"base_model.model.lm_head.weight\""), std::string::npos);
    }
  }
}

TEST_F(TrainE2E, PreparedDataCacheKeepsRunsAndResumesBitIdentical) {
  auto a = test::temp_dir("straight");
  auto b = test::temp_dir("resumed");
  const stdfs::path cache = test::temp_dir("prepared") / "cache";
  const std::string extra = "save_steps: 3\ndataset_prepared_path: " + cache.string() + "\n";
  test::ProcResult ra = train(write_config(a, extra));
  ASSERT_EQ(ra.code, 0) << ra.output;
  EXPECT_EQ(lines_starting(ra.output, "data: prepared data written to " + cache.string() + "/prepared-").size(), 1u)
      << ra.output;
  test::ProcResult rb1 = train(write_config(b, extra), "--test-stop-after-step 4");
  ASSERT_EQ(rb1.code, 0) << rb1.output;
  test::ProcResult rb2 = train(b / "cfg.yaml", "--resume");
  ASSERT_EQ(rb2.code, 0) << rb2.output;
  for (const auto* r : {&rb1, &rb2}) {
    EXPECT_EQ(lines_starting(r->output, "data: loaded prepared data from " + cache.string() + "/prepared-").size(), 1u)
        << r->output;
    EXPECT_EQ(r->output.find("data: prepared data written"), std::string::npos) << r->output;
    // The data summary is printed as the building run printed it.
    const auto built = lines_starting(ra.output, "data: "), loaded = lines_starting(r->output, "data: ");
    ASSERT_EQ(loaded.size(), built.size()) << r->output;
    EXPECT_EQ(loaded[0], built[0]);
  }
  expect_same_eight_steps(a, b);

  // A setting of batches, not of the rows, uses the same entry.
  auto c = test::temp_dir("other_batch");
  test::ProcResult rc = train(write_config(c, extra), "--set micro_batch_size=1 --set max_steps=1");
  ASSERT_EQ(rc.code, 0) << rc.output;
  EXPECT_EQ(lines_starting(rc.output, "data: loaded prepared data from").size(), 1u) << rc.output;
  // A damaged entry: a warning, the data built again, the run goes on.
  std::vector<stdfs::path> entries;
  for (const auto& e : stdfs::directory_iterator(cache)) entries.push_back(e.path());
  ASSERT_EQ(entries.size(), 1u);
  const std::string good = fs::read_file(entries[0]);
  fs::write_file_atomic(entries[0], good.substr(0, good.size() - 100));
  auto e = test::temp_dir("damaged");
  test::ProcResult re = train(write_config(e, extra), "--set max_steps=1");
  ASSERT_EQ(re.code, 0) << re.output;
  EXPECT_NE(re.output.find("qlora: warning: " + entries[0].string() + ": prepared data is corrupt ("),
            std::string::npos)
      << re.output;
  EXPECT_EQ(lines_starting(re.output, "data: prepared data written to").size(), 1u) << re.output;
  EXPECT_EQ(fs::read_file(entries[0]), good);
}

// Streaming trains on the same rows (a mapping of scratch files): the same losses, and a run
// resumed with the other setting goes on bit-identically.
TEST_F(TrainE2E, StreamingTrainsTheSameRowsAndResumesAcrossTheSetting) {
  auto a = test::temp_dir("straight");
  auto b = test::temp_dir("streamed");
  const stdfs::path scratch = test::temp_dir("scratch");
  test::ProcResult ra = train(write_config(a, "save_steps: 3\n"));
  ASSERT_EQ(ra.code, 0) << ra.output;
  const stdfs::path cfg = write_config(b, "save_steps: 3\nstreaming: true\n");
  test::ProcResult rb1 =
      test::run("TMPDIR=" + test::quote(scratch.string()) + " " + test::quote(test::qlora_exe().string()) + " train " +
                test::quote(cfg.string()) + " --test-stop-after-step 4");
  ASSERT_EQ(rb1.code, 0) << rb1.output;
  EXPECT_EQ(lines_starting(rb1.output, "data: streaming through scratch files in " + scratch.string()).size(), 1u)
      << rb1.output;
  test::ProcResult rb2 = train(b / "cfg.yaml", "--resume --set streaming=false");
  ASSERT_EQ(rb2.code, 0) << rb2.output;
  EXPECT_NE(rb2.output.find("resumed from"), std::string::npos) << rb2.output;
  expect_same_eight_steps(a, b);
  EXPECT_TRUE(stdfs::is_empty(scratch)) << "scratch files are unlinked when made";
}

TEST_F(TrainE2E, CorruptNewestCheckpointFallsBackToPreviousGood) {
  auto d = test::temp_dir();
  auto cfg = write_config(d, "save_steps: 2\n");
  ASSERT_EQ(train(cfg, "--test-stop-after-step 6").code, 0);
  {
    std::fstream f(d / "run/checkpoints/checkpoint-000006/adapter_model.safetensors",
                   std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(100);
    f.put('\x7f');
  }
  test::ProcResult r = train(cfg, "--resume");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("checkpoint-000006: checksum mismatch"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("resumed from " + (d / "run/checkpoints/checkpoint-000004").string()), std::string::npos)
      << r.output;
}

TEST_F(TrainE2E, ResumeWithChangedConfigNamesTheChangeAndRefuses) {
  auto d = test::temp_dir();
  auto cfg = write_config(d, "save_steps: 2\n");
  ASSERT_EQ(train(cfg, "--test-stop-after-step 2").code, 0);
  test::ProcResult r = train(cfg, "--resume --set learning_rate=0.01");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("learning_rate (0.002 -> 0.01)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("--allow-config-change"), std::string::npos) << r.output;
  test::ProcResult ok = train(cfg, "--resume --set learning_rate=0.01 --allow-config-change");
  EXPECT_EQ(ok.code, 0) << ok.output;
  // A fresh run into a run directory with checkpoints is refused (nothing is overwritten).
  test::ProcResult again = train(cfg);
  EXPECT_EQ(again.code, 2) << again.output;
  EXPECT_NE(again.output.find("already holds checkpoints"), std::string::npos) << again.output;
}

TEST_F(TrainE2E, NonFiniteStepsAreSkippedCountedAndStopTheRun) {
  auto d = test::temp_dir();
  auto cfg = write_config(d, "max_nonfinite_steps: 3\n");
  test::ProcResult r = train(cfg, "--test-nonfinite-steps 3,4");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("step 3: non-finite"), std::string::npos) << r.output;
  std::ifstream in(d / "run/metrics.jsonl");
  std::string line, last;
  while (std::getline(in, line))
    if (line.find("\"loss\"") != std::string::npos) last = line;
  EXPECT_EQ(nlohmann::json::parse(last)["skipped_steps"].get<int64_t>(), 2);
  // Three in a row with max_nonfinite_steps 3: the run stops with an error.
  auto d2 = test::temp_dir("diverge");
  test::ProcResult bad = train(write_config(d2, "max_nonfinite_steps: 3\n"), "--test-nonfinite-steps 2,3,4");
  EXPECT_EQ(bad.code, 1) << bad.output;
  EXPECT_NE(bad.output.find("diverged"), std::string::npos) << bad.output;
}

TEST_F(TrainE2E, LossIsNormalizedByTargetTokensOfTheWholeAccumulatedBatch) {
  // One optimizer step over the same 4 rows: 4 micro-batches of 1, or 1 micro-batch of 4.
  auto a = test::temp_dir("accum");
  auto b = test::temp_dir("batch");
  const std::string common = "--set lora_dropout=0 --set max_steps=1 --set eval_steps=0 ";
  test::ProcResult ra = train(write_config(a), common + "--set micro_batch_size=1 --set gradient_accumulation_steps=4");
  ASSERT_EQ(ra.code, 0) << ra.output;
  test::ProcResult rb = train(write_config(b), common + "--set micro_batch_size=4 --set gradient_accumulation_steps=1");
  ASSERT_EQ(rb.code, 0) << rb.output;
  auto la = losses(a / "run"), lb = losses(b / "run");
  ASSERT_EQ(la.size(), 1u);
  ASSERT_EQ(lb.size(), 1u);
  EXPECT_NEAR(la[1].first, lb[1].first, 1e-5 * std::abs(lb[1].first));
  EXPECT_NEAR(la[1].second, lb[1].second, 1e-4 * std::abs(lb[1].second));
}

TEST_F(TrainE2E, BadConfigIsOneLineExit2) {
  auto d = test::temp_dir();
  auto cfg = write_config(d, "lora_rank: 4\n");
  test::ProcResult r = train(cfg);
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("unknown key \"lora_rank\" (did you mean \"lora_r\"?)"), std::string::npos) << r.output;
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
  EXPECT_FALSE(stdfs::exists(d / "run"));
}

// Problems found only against the model, the tokenizer or the data used to surface after the run
// directory's config.yaml was rewritten, without the config line. Each is now one line naming
// the config file and line, exit 2, and a previous run directory stays byte for byte as it was.
TEST_F(TrainE2E, LateChecksComeBeforeAnythingIsWrittenAndNameTheConfigLine) {
  auto d = test::temp_dir();
  const stdfs::path run = d / "run";
  ASSERT_EQ(train(write_config(d, "save_steps: 2\n"), "--test-stop-after-step 2").code, 0);
  const auto before = snapshot(run);
  ASSERT_TRUE(before.count((run / "config.yaml").string()));
  ASSERT_TRUE(before.count((run / "checkpoints/checkpoint-000002/adapter_model.safetensors").string()));

  {  // a chat dataset for the template case
    std::ofstream o(d / "chat.jsonl");
    o << R"({"messages": [{"role": "user", "content": "abc"}, {"role": "assistant", "content": "cba"}]})"
      << "\n";
  }
  std::ofstream(d / "empty.jsonl").close();
  struct Case {
    std::string extra;     // appended to the config (save_steps: 2 first, as in the run above)
    std::string key;       // the key whose line the error names
    std::string expected;  // after "cfg.yaml:N: "
    std::string args;      // more arguments
  };
  const std::string chat =
      "--set datasets.0.path=" + test::quote((d / "chat.jsonl").string()) + " --set datasets.0.type=chat";
  const std::vector<Case> cases = {
      {"lora_target_modules: [q_proj, q_projj]\n", "lora_target_modules",
       "lora_target_modules: \"q_projj\" matches no linear layer of LlamaForCausalLM"},
      {"sequence_len: 1\n", "sequence_len", "sequence_len: expected at least 2, got 1"},
      {"sequence_len: 4096\n", "sequence_len", "sequence_len: 4096 is more than 8 times the model's"},
      {"lora_r: 64\n", "lora_r", "lora_r: 64 is above the smallest dimension of k_proj (32 x 64)"},
      {"micro_batch_size: 100000000\n", "micro_batch_size", "micro_batch_size: this run needs about",
       "--test-memory-budget 1000"},
      {"chat_template: \"{% for m in messages %}{{ m.content \"\n", "chat_template",
       "chat_template line 1: unexpected end of template", chat},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.extra);
    // The key goes in the config file (not --set) so the message can name its line; the base
    // config's own copy of the key is dropped.
    const stdfs::path cfg = write_config(d, "save_steps: 2\n" + c.extra);
    {
      std::ifstream in(cfg);
      std::stringstream keep;
      std::string line;
      std::vector<std::string> all;
      while (std::getline(in, line)) all.push_back(line);
      // drop an earlier line with the same key (the base config's), keep the appended one
      const std::string k = c.key + ":";
      int last = -1;
      for (int i = 0; i < static_cast<int>(all.size()); ++i)
        if (all[i].rfind(k, 0) == 0) last = i;
      for (int i = 0; i < static_cast<int>(all.size()); ++i)
        if (all[i].rfind(k, 0) != 0 || i == last) keep << all[i] << "\n";
      std::ofstream(cfg) << keep.str();
    }
    if (c.key == "lora_target_modules") {
      std::string t = fs::read_file(cfg);
      t.replace(t.find("lora_target_linear: true"), 24, "lora_target_linear: false");
      std::ofstream(cfg) << t;
    }
    test::ProcResult r = train(cfg, "--resume --allow-config-change " + c.args);
    EXPECT_EQ(r.code, 2) << r.output;
    const auto errors = lines_starting(r.output, "qlora: error:");
    ASSERT_EQ(errors.size(), 1u) << r.output;
    EXPECT_EQ(errors[0].rfind("qlora: error: " + where(cfg, c.key) + c.expected, 0), 0u) << r.output;
    EXPECT_EQ(snapshot(run), before) << r.output;
  }

  // The same checks on a fresh run: the run directory is not even created.
  auto f = test::temp_dir("fresh");
  const stdfs::path cfg = write_config(f, "lora_r: 64\n");
  std::string t = fs::read_file(cfg);
  t.erase(t.find("lora_r: 8\n"), 10);
  std::ofstream(cfg) << t;
  test::ProcResult r = train(cfg);
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find(where(cfg, "lora_r") + "lora_r: 64 is above"), std::string::npos) << r.output;
  EXPECT_FALSE(stdfs::exists(f / "run"));
  // An empty dataset names the file; a --set override names itself.
  test::ProcResult e = train(cfg, "--set lora_r=8 --set datasets.0.path=" + test::quote((d / "empty.jsonl").string()));
  EXPECT_EQ(e.code, 2) << e.output;
  EXPECT_NE(e.output.find((d / "empty.jsonl").string() + ": the dataset is empty"), std::string::npos) << e.output;
  test::ProcResult s = train(cfg, "--set lora_r=8 --set sequence_len=1");
  EXPECT_EQ(s.code, 2) << s.output;
  EXPECT_NE(s.output.find("qlora: error: --set sequence_len=1: sequence_len: expected at least 2"), std::string::npos)
      << s.output;
  EXPECT_FALSE(stdfs::exists(f / "run"));
}

// overrides_of_model_config on a mixture of experts: every step logs the router load-balancing
// loss, which changes the trained adapters; on a dense model the keys are refused, naming their line.
TEST_F(TrainE2E, RouterLoadBalancingLossAndExpertAdaptersTrainAndResume) {
  auto d = test::temp_dir("moe_aux");
  stdfs::create_directories(d / "fixture");
  test::ProcResult fx = test::run_python("train_fixture.py", {(d / "fixture").string(), "mixtral"});
  ASSERT_EQ(fx.code, 0) << fx.output;
  const std::string sets = "--set max_steps=3 --set eval_steps=0";
  auto run_moe = [&](const std::string& name, const std::string& extra, const std::string& args = "") {
    stdfs::create_directories(d / name);
    std::string t = fs::read_file(write_config(d / name, extra));
    t.replace(t.find((*g_fix / "model").string()), (*g_fix / "model").string().size(), (d / "fixture/model").string());
    std::ofstream(d / name / "cfg.yaml") << t;
    test::ProcResult r = train(d / name / "cfg.yaml", sets + " " + args);
    EXPECT_EQ(r.code, 0) << r.output;
    return d / name / "run";
  };
  const stdfs::path on =
      run_moe("on", "overrides_of_model_config:\n  output_router_logits: true\n  router_aux_loss_coef: 0.5\n");
  const stdfs::path off = run_moe("off", "");
  auto aux_of = [](const stdfs::path& run) {
    std::vector<double> v;
    std::ifstream in(run / "metrics.jsonl");
    std::string line;
    while (std::getline(in, line)) {
      auto j = nlohmann::json::parse(line);
      if (j.contains("eval_loss")) { EXPECT_FALSE(j.contains("aux_loss")) << line; }
      if (j.contains("aux_loss")) v.push_back(j["aux_loss"].get<double>());
    }
    return v;
  };
  const std::vector<double> aux = aux_of(on);
  ASSERT_EQ(aux.size(), 3u);
  for (double a : aux) EXPECT_TRUE(std::isfinite(a) && a > 0) << a;
  EXPECT_TRUE(aux_of(off).empty());
  const auto l_on = losses(on), l_off = losses(off);
  ASSERT_EQ(l_on.size(), 3u);
  // the logged loss is the cross-entropy (the runs differ only by row shards and rounding)
  EXPECT_NEAR(l_on.at(1).first, l_off.at(1).first, 1e-5 * l_off.at(1).first);
  EXPECT_NE(l_on.at(1).second, l_off.at(1).second);  // the aux term changes the gradients
  EXPECT_NE(fs::read_file(on / "checkpoints/checkpoint-000003/adapter_model.safetensors"),
            fs::read_file(off / "checkpoints/checkpoint-000003/adapter_model.safetensors"));

  // With adapters on the experts too (lora_target_parameters): a run stopped after step 2 and
  // resumed gives the straight run's losses and adapters, bit for bit.
  const std::string aux_experts =
      "overrides_of_model_config:\n  output_router_logits: true\nsave_steps: 2\n"
      "lora_target_parameters: [experts.gate_up_proj, experts.down_proj]\n";
  const stdfs::path straight = run_moe("experts", aux_experts, "--set lora_dropout=0");
  const stdfs::path resumed = run_moe("experts_resumed", aux_experts, "--set lora_dropout=0 --test-stop-after-step 2");
  ASSERT_EQ(losses(resumed).size(), 2u);
  test::ProcResult rr = train(d / "experts_resumed/cfg.yaml", sets + " --set lora_dropout=0 --resume");
  ASSERT_EQ(rr.code, 0) << rr.output;
  const auto ls = losses(straight), lr = losses(resumed);
  ASSERT_EQ(ls.size(), 3u);
  ASSERT_EQ(lr.size(), 3u);
  for (const auto& [step, v] : ls) {
    EXPECT_EQ(v.first, lr.at(step).first) << "loss at step " << step;
    EXPECT_EQ(v.second, lr.at(step).second) << "grad norm at step " << step;
  }
  EXPECT_EQ(aux_of(straight), aux_of(resumed));
  EXPECT_EQ(fs::read_file(straight / "checkpoints/checkpoint-000003/adapter_model.safetensors"),
            fs::read_file(resumed / "checkpoints/checkpoint-000003/adapter_model.safetensors"));

  const stdfs::path cfg = write_config(d, "overrides_of_model_config:\n  output_router_logits: true\n");
  test::ProcResult r = train(cfg);
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("qlora: error: " + where(cfg, "  output_router_logits") +
                          "overrides_of_model_config.output_router_logits: llama is not a mixture of experts"),
            std::string::npos)
      << r.output;
  EXPECT_FALSE(stdfs::exists(d / "run"));
}

// A config whose planned memory exceeds the budget is refused before anything is allocated, with
// the parts of the plan; memory_check: false turns that into a warning.
TEST_F(TrainE2E, ConfigThatCannotFitIsRefusedWithTheMemoryItNeeds) {
  auto d = test::temp_dir();
  const stdfs::path cfg = write_config(d);
  // The plan counts the rows the data has (96 here, in one micro-batch): the budget is made small.
  test::ProcResult r = train(cfg, "--set micro_batch_size=100000000 --test-memory-budget 1000");
  EXPECT_EQ(r.code, 2) << r.output;
  const auto errors = lines_starting(r.output, "qlora: error:");
  ASSERT_EQ(errors.size(), 1u) << r.output;
  for (const char* part :
       {"--set micro_batch_size=100000000: micro_batch_size: this run needs about ", "(weights ", ", LoRA+optimizer ",
        ", activations ", " is available (", "gradient_checkpointing", "memory_check: false"})
    EXPECT_NE(errors[0].find(part), std::string::npos) << part << "\n" << r.output;
  EXPECT_FALSE(stdfs::exists(d / "run"));
  // memory_check: false only warns, and the run (which needs far less than the machine has) runs.
  test::ProcResult warned = train(cfg,
                                  "--set micro_batch_size=100000000 --test-memory-budget 1000 --set memory_check=false "
                                  "--set max_steps=1 --set eval_steps=0");
  EXPECT_EQ(warned.code, 0) << warned.output;
  EXPECT_EQ(lines_starting(warned.output,
                           "qlora: warning: --set micro_batch_size=100000000: micro_batch_size: this "
                           "run needs about ")
                .size(),
            1u)
      << warned.output;
}

// An output_dir that cannot be a run directory is refused before anything else happens.
TEST_F(TrainE2E, OutputDirThatIsAFileIsRefusedAndLeftAlone) {
  auto d = test::temp_dir();
  std::ofstream(d / "run") << "not a directory";
  const stdfs::path cfg = write_config(d);
  test::ProcResult r = train(cfg);
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("qlora: error: " + where(cfg, "output_dir") + "output_dir: " + (d / "run").string() +
                          " exists and is not a directory"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(fs::read_file(d / "run"), "not a directory");
}

// An allocation that fails mid-run (a process memory limit set once the loop starts) ends with
// exit 1 and one clear line; the last checkpoint is intact and the run resumes from it.
TEST_F(TrainE2E, AllocationFailureMidRunIsAClearErrorAndKeepsTheLastCheckpoint) {
  auto d = test::temp_dir();
  const stdfs::path cfg = write_config(d, "save_steps: 2\n");
  ASSERT_EQ(train(cfg, "--test-stop-after-step 2").code, 0);
  const stdfs::path ckpts = d / "run/checkpoints";
  const auto before = snapshot(ckpts);
  test::ProcResult r = test::run("QLORA_TEST_MEMORY_LIMIT=64KB " + test::quote(test::qlora_exe().string()) + " train " +
                                 test::quote(cfg.string()) + " --resume");
  if (r.output.find("cannot limit memory in this build") != std::string::npos)
    GTEST_SKIP() << "a sanitizer build: its shadow memory rules out a process memory limit";
  EXPECT_EQ(r.code, 1) << r.output;
  const auto errors = lines_starting(r.output, "qlora: error:");
  ASSERT_EQ(errors.size(), 1u) << r.output;
  EXPECT_EQ(errors[0].rfind("qlora: error: out of memory while training step 3", 0), 0u) << r.output;
  EXPECT_NE(errors[0].find("the last checkpoint is intact: " + (ckpts / "checkpoint-000002").string()),
            std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("internal error"), std::string::npos) << r.output;
  EXPECT_EQ(snapshot(ckpts), before) << r.output;
  test::ProcResult ok = train(cfg, "--resume");
  EXPECT_EQ(ok.code, 0) << ok.output;
  EXPECT_NE(ok.output.find("resumed from " + (ckpts / "checkpoint-000002").string()), std::string::npos) << ok.output;
}

// profiler_steps: the profiled steps are timed part by part into profile_breakdown.json, and the
// run's numbers are those of a run without the profiler.
TEST_F(TrainE2E, ProfilerStepsWriteABreakdownAndChangeNoNumbers) {
  auto a = test::temp_dir("plain");
  auto b = test::temp_dir("profiled");
  const std::string extra = "optimizer: paged_adamw\noptimizer_device_budget: 4KB\ngradient_checkpointing: true\n";
  test::ProcResult ra = train(write_config(a, extra));
  ASSERT_EQ(ra.code, 0) << ra.output;
  test::ProcResult rb = train(write_config(b, extra + "profiler_steps: 3\nprofiler_steps_start: 2\n"));
  ASSERT_EQ(rb.code, 0) << rb.output;
  EXPECT_EQ(losses(a / "run"), losses(b / "run"));
  EXPECT_FALSE(stdfs::exists(a / "run/profile_breakdown.json"));
  ASSERT_TRUE(stdfs::exists(b / "run/profile_breakdown.json")) << rb.output;
  EXPECT_EQ(lines_starting(rb.output, "profile: steps 3-5,").size(), 1u) << rb.output;
  const auto j = nlohmann::json::parse(fs::read_file(b / "run/profile_breakdown.json"));
  EXPECT_EQ(j["steps"], 3);
  EXPECT_EQ(j["steps_profiled"], nlohmann::json::array({3, 5}));
  EXPECT_EQ(j["device"], "cpu");
  const double step_s = j["step_s"].get<double>();
  double sum = 0;
  for (auto& [k, v] : j["parts"].items()) {
    EXPECT_GE(v.get<double>(), 0.0) << k;
    sum += v.get<double>();
  }
  // One thread: the parts and the unattributed rest make the step; CPU row shards side by side
  // add their thread times (ctest runs with 2 threads).
  const int threads = j["threads"].get<int>();
  EXPECT_GE(threads, 1);
  EXPECT_NEAR(j["parts_sum_s"].get<double>(), sum, 1e-9);
  EXPECT_LE(sum, step_s * threads * 1.0001);
  if (threads == 1) { EXPECT_NEAR(j["unattributed_s"].get<double>(), step_s - sum, 1e-9); }
  // Each part the step has was seen (on the CPU dequantization is fused into the GEMM tiles).
  for (const char* p : {"base_gemm", "lora", "attention", "norm_rope_act", "loss", "optimizer", "paging", "other"})
    EXPECT_GT(j["parts"][p].get<double>(), 0.0) << p;
  EXPECT_TRUE(j["plain_step_s"].is_number());  // steps 1-2 ran unprofiled
}

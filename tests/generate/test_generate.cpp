// Generation with the KV cache and `qlora generate` / `qlora eval` against transformers: greedy ids
// equal generate(do_sample=False) (16-bit llama, mistral with a sliding window, qwen3 with qk-norm,
// gemma2 with soft-caps and alternating sliding layers, gemma3 with local/global RoPE,
// a PEFT LoRA adapter, a bitsandbytes NF4 checkpoint), cached logits equal the no-cache forward at
// every step, seeded sampling, EOS, eval loss equal to transformers' loss, and bad input.
#include <c10/core/GradMode.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/common/harness.h"
#include "trainer/common/fs.h"
#include "trainer/data/dataset.h"
#include "trainer/data/loader.h"
#include "trainer/model/generate.h"
#include "trainer/model/model.h"
#include "trainer/run/adapter_source.h"
#include "trainer/tokenizer/tokenizer.h"

using namespace qlora;
namespace stdfs = std::filesystem;

namespace {

// DIR of tests/python/generate_ref.py make (once per process).
const stdfs::path& fixtures() {
  static const stdfs::path dir = [] {
    stdfs::path d = test::temp_dir("generate_fixtures");
    test::ProcResult r = test::run_python("generate_ref.py", {"make", d.string()});
    if (r.code != 0) throw std::runtime_error("generate_ref.py make failed:\n" + r.output);
    return d;
  }();
  return dir;
}

const nlohmann::json& ref() {
  static const nlohmann::json j = nlohmann::json::parse(fs::read_file(fixtures() / "ref.json"));
  return j;
}

model::Model load_fp32(const stdfs::path& dir) {
  model::ModelLoadOptions o;
  o.compute_dtype = at::kFloat;
  o.quantize = false;
  return model::load_model(dir, o);
}

std::vector<int32_t> ids_of(const nlohmann::json& j) { return j.get<std::vector<int32_t>>(); }

// stdout only (stderr dropped), and the exit code.
test::ProcResult qlora_stdout(const std::string& args) {
  return test::run("( " + test::quote(test::qlora_exe().string()) + " " + args + " 2>/dev/null )");
}

int count_lines(const std::string& s) { return static_cast<int>(std::count(s.begin(), s.end(), '\n')); }

}  // namespace

class Family : public ::testing::TestWithParam<std::string> {};

TEST_P(Family, GreedyIdsEqualTransformers) {
  const stdfs::path dir = fixtures() / GetParam();
  model::Model m = load_fp32(dir);
  model::GenerateOptions go;
  go.max_new_tokens = 24;
  go.stop_ids = model::stop_ids_of(dir, m.config, nullptr);
  for (const auto& c : ref()["generate"][GetParam()]) {
    std::vector<int32_t> got = model::generate(m, ids_of(c["prompt_ids"]), go);
    EXPECT_EQ(got, ids_of(c["ids"])) << c["prompt"];
  }
}

TEST_P(Family, CachedLogitsEqualFullForwardAtEveryStep) {
  const stdfs::path dir = fixtures() / GetParam();
  model::Model m = load_fp32(dir);
  c10::NoGradGuard ng;
  std::vector<int64_t> seq = {1, 17, 305, 44, 9, 600, 12};
  model::KVCache cache;  // grows from capacity 0: exercises reallocation too
  at::Tensor h = m.forward_cached(at::tensor(seq, at::kLong).view({1, -1}), cache);
  at::Tensor full = m.logits(m.forward(at::tensor(seq, at::kLong).view({1, -1})));
  EXPECT_LE((m.logits(h) - full).abs().max().item<double>(), 1e-5 * std::max(1.0, full.abs().max().item<double>()));
  for (int step = 0; step < 12; ++step) {  // longer than the sliding window
    const int64_t next = (step * 97 + 31) % m.config.vocab_size;
    seq.push_back(next);
    at::Tensor one = m.logits(m.forward_cached(at::tensor(std::vector<int64_t>{next}, at::kLong).view({1, 1}), cache));
    at::Tensor all = m.logits(m.forward(at::tensor(seq, at::kLong).view({1, -1})));
    at::Tensor last = all.select(1, all.size(1) - 1);
    const double scale = std::max(1.0, last.abs().max().item<double>());
    EXPECT_LE((one.squeeze(1) - last).abs().max().item<double>(), 1e-5 * scale) << "step " << step;
    EXPECT_GT(last.std().item<double>(), 0.1);  // the model is not trivially flat
  }
  EXPECT_EQ(cache.length, static_cast<int64_t>(seq.size()));
}

TEST_P(Family, CliPromptPrintsTransformersText) {
  const stdfs::path dir = fixtures() / GetParam();
  const auto& c = ref()["generate"][GetParam()][0];
  test::ProcResult r = qlora_stdout("generate --model " + test::quote(dir.string()) + " --prompt " +
                                    test::quote(c["prompt"].get<std::string>()) + " --max-new-tokens 24 --device cpu");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(r.output, c["text"].get<std::string>() + "\n");
}

INSTANTIATE_TEST_SUITE_P(Generate, Family,
                         ::testing::Values("llama", "mistral", "qwen3", "phi3", "gemma2", "gemma3", "mixtral"));

TEST(Generate, NoCacheLoopGivesTheSameIds) {
  model::Model m = load_fp32(fixtures() / "llama");
  model::GenerateOptions go;
  go.max_new_tokens = 16;
  std::vector<int32_t> prompt = {1, 50, 60, 70};
  std::vector<int32_t> cached = model::generate(m, prompt, go);
  go.use_cache = false;
  EXPECT_EQ(model::generate(m, prompt, go), cached);
}

TEST(Generate, LoraAdapterOn16BitBaseEqualsPeft) {
  run::AdapterSource src = run::read_adapter_source(fixtures() / "llama_lora");
  model::ModelLoadOptions o = run::adapter_load_options(src, at::kCPU);
  o.quantize = false;
  o.compute_dtype = at::kFloat;
  model::Model m = run::load_model_with_adapter(fixtures() / "llama", src, o);
  model::GenerateOptions go;
  go.max_new_tokens = 24;
  go.stop_ids = model::stop_ids_of(fixtures() / "llama", m.config, nullptr);
  const auto& cases = ref()["generate"]["llama_lora"];
  for (const auto& c : cases)
    EXPECT_EQ(model::generate(m, ids_of(c["prompt_ids"]), go), ids_of(c["ids"])) << c["prompt"];
  // The adapter changes the output (the test would see an adapter that is not applied).
  EXPECT_NE(ids_of(cases[0]["ids"]), ids_of(ref()["generate"]["llama"][0]["ids"]));
}

TEST(Generate, BnbNF4CheckpointWithAndWithoutAdapterEqualsTransformers) {
  if (ref().contains("bnb_error")) GTEST_SKIP() << "bitsandbytes CPU 4-bit unavailable: " << ref()["bnb_error"];
  const stdfs::path bnb = fixtures() / "llama_bnb";
  for (const std::string kind : {"llama_bnb", "llama_bnb_lora"}) {
    const auto& c = ref()["generate"][kind][1];
    std::string args = "generate --model " + test::quote(bnb.string()) + " --load-in-4bit --prompt " +
                       test::quote(c["prompt"].get<std::string>()) + " --max-new-tokens 24 --device cpu";
    if (kind == "llama_bnb_lora") args += " --adapter " + test::quote((fixtures() / "llama_lora").string());
    test::ProcResult r = qlora_stdout(args);
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_EQ(r.output, c["text"].get<std::string>() + "\n") << kind;
  }
}

TEST(Generate, SeededSamplingIsReproducibleAndTopK1IsGreedy) {
  model::Model m = load_fp32(fixtures() / "llama");
  std::vector<int32_t> prompt = {1, 50, 60, 70};
  model::GenerateOptions go;
  go.max_new_tokens = 20;
  go.temperature = 1.5;
  go.top_k = 50;
  go.top_p = 0.95;
  go.seed = 5;
  std::vector<int32_t> a = model::generate(m, prompt, go), b = model::generate(m, prompt, go);
  EXPECT_EQ(a, b);
  go.seed = 6;
  EXPECT_NE(model::generate(m, prompt, go), a);
  model::GenerateOptions greedy;
  greedy.max_new_tokens = 20;
  model::GenerateOptions k1 = greedy;
  k1.temperature = 1.0;
  k1.top_k = 1;
  k1.seed = 9;
  EXPECT_EQ(model::generate(m, prompt, k1), model::generate(m, prompt, greedy));
  EXPECT_NE(a, model::generate(m, prompt, greedy));
}

TEST(Generate, StopsAtEos) {
  model::Model m = load_fp32(fixtures() / "llama");
  std::vector<int32_t> prompt = {1, 50, 60, 70};
  model::GenerateOptions go;
  go.max_new_tokens = 20;
  std::vector<int32_t> all = model::generate(m, prompt, go);
  ASSERT_GE(all.size(), 6u);
  go.stop_ids = {all[5]};
  std::vector<int32_t> streamed;
  std::vector<int32_t> got = model::generate(m, prompt, go, [&](int32_t t) { streamed.push_back(t); });
  const auto first = std::find(all.begin(), all.end(), all[5]);
  EXPECT_EQ(got, std::vector<int32_t>(all.begin(), first + 1));  // the stop token is the last one
  EXPECT_EQ(streamed, got);
}

TEST(Generate, StopIdsJoinGenerationConfigConfigAndTokenizer) {
  const stdfs::path d = test::temp_dir();
  for (const auto& e : stdfs::directory_iterator(fixtures() / "llama")) stdfs::copy(e.path(), d / e.path().filename());
  fs::write_file_atomic(d / "generation_config.json", R"({"eos_token_id": [7, 2, 9]})");
  model::Model m = load_fp32(d);
  auto tk = tok::load_tokenizer(d);
  EXPECT_EQ(model::stop_ids_of(d, m.config, tk.get()), (std::vector<int32_t>{2, 7, 9}));
}

TEST(Generate, TextStreamPrintsWhatDecodePrints) {
  auto tk = tok::load_tokenizer(fixtures() / "llama");
  // Every id of the vocabulary once (byte-fallback pieces included), in a fixed scrambled order.
  std::vector<int32_t> ids;
  for (int32_t i = 0; i < 300; ++i) ids.push_back((i * 389 + 11) % tk->vocab_size());
  model::TextStream ts(*tk);
  std::string printed;
  for (int32_t id : ids) printed += ts.push(id);
  printed += ts.flush();
  EXPECT_EQ(printed, tk->decode(ids, true));
  // ASCII bytes as byte-fallback pieces, then a byte that makes the run invalid UTF-8: the decoder
  // turns the whole run into U+FFFD, so nothing of it may be printed early.
  auto byte = [&](int b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    return tk->token_to_id(name).value();
  };
  std::vector<int32_t> run = {tk->encode("sale", false).back(), byte(0x0C), byte(0x30), byte(0x80), byte(0x80)};
  model::TextStream ts2(*tk);
  printed.clear();
  for (int32_t id : run) printed += ts2.push(id);
  printed += ts2.flush();
  EXPECT_EQ(printed, tk->decode(run, true));
}

TEST(Generate, ChatAppliesTheTemplate) {
  // Chat with --prompt: the demo template over one user message (BOS written by the template).
  const stdfs::path dir = fixtures() / "llama";
  test::ProcResult r = qlora_stdout("generate --model " + test::quote(dir.string()) +
                                    " --chat --prompt 'Hello there' --max-new-tokens 8 --device cpu");
  ASSERT_EQ(r.code, 0) << r.output;
  auto tk = tok::load_tokenizer(dir);
  model::Model m = load_fp32(dir);
  model::GenerateOptions go;
  go.max_new_tokens = 8;
  go.stop_ids = model::stop_ids_of(dir, m.config, tk.get());
  std::vector<int32_t> prompt = tk->encode("<s>User: Hello there\nAssistant:\n", false);
  EXPECT_EQ(prompt[0], 1);
  EXPECT_EQ(r.output, tk->decode(model::generate(m, prompt, go), true) + "\n");
  // Interactive: two stdin lines, two replies; the second turn sees the first.
  test::ProcResult r2 = test::run("printf 'Hello there\\nAgain\\n' | ( " + test::quote(test::qlora_exe().string()) +
                                  " generate --model " + test::quote(dir.string()) +
                                  " --chat --max-new-tokens 8 --device cpu 2>/dev/null )");
  ASSERT_EQ(r2.code, 0) << r2.output;
  EXPECT_EQ(r2.output.substr(0, r.output.size()), r.output);
  EXPECT_GT(r2.output.size(), r.output.size());
}

TEST(Eval, LossEqualsTransformersAndIdsMatch) {
  const auto& e = ref()["eval"];
  const stdfs::path dir = fixtures() / "llama";
  // Our samples of the text file: the same ids as the HF tokenizer (+ EOS).
  auto tk = tok::load_tokenizer(dir);
  config::DataSpec spec;
  config::DatasetSpec ds;
  ds.path = (fixtures() / "text.jsonl").string();
  ds.type = "text";
  spec.datasets = {ds};
  data::Datasets d = data::build_datasets(spec, *tk);
  std::vector<std::vector<int32_t>> ours, theirs = e["ids"].get<std::vector<std::vector<int32_t>>>();
  for (int64_t r = 0; r < d.train->num_rows(); ++r)
    ours.emplace_back(d.train->input_ids.begin() + d.train->row_begin[r],
                      d.train->input_ids.begin() + d.train->row_begin[r + 1]);
  std::sort(ours.begin(), ours.end());
  std::sort(theirs.begin(), theirs.end());
  EXPECT_EQ(ours, theirs);

  for (const std::string bs : {"1", "2"}) {
    test::ProcResult r = qlora_stdout("eval --model " + test::quote(dir.string()) + " --data " + test::quote(ds.path) +
                                      " --type text --batch-size " + bs + " --device cpu --json");
    ASSERT_EQ(r.code, 0) << r.output;
    auto j = nlohmann::json::parse(r.output);
    EXPECT_NEAR(j["loss"].get<double>(), e["loss"].get<double>(), 1e-4 * e["loss"].get<double>()) << "batch " << bs;
    EXPECT_EQ(j["target_tokens"].get<int64_t>(), e["count"].get<int64_t>());
    EXPECT_NEAR(j["perplexity"].get<double>(), std::exp(e["loss"].get<double>()), 1e-3 * j["perplexity"].get<double>());
  }
  test::ProcResult plain =
      qlora_stdout("eval --model " + test::quote(dir.string()) + " --data " + test::quote(ds.path));
  ASSERT_EQ(plain.code, 0);
  EXPECT_EQ(plain.output.rfind("loss ", 0), 0u) << plain.output;
}

TEST(BadInput, ExitTwoWithOneLine) {
  const stdfs::path f = fixtures();
  const std::string llama = test::quote((f / "llama").string());
  // No --model and no adapter.
  test::ProcResult r = test::run_qlora("generate --prompt hi --device cpu");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_EQ(count_lines(r.output), 1) << r.output;
  EXPECT_NE(r.output.find("--model"), std::string::npos) << r.output;
  // An adapter that names no base, and no --model.
  const stdfs::path nobase = test::temp_dir("nobase");
  stdfs::copy(f / "llama_lora", nobase, stdfs::copy_options::recursive);
  auto cfg = nlohmann::json::parse(fs::read_file(nobase / "adapter_config.json"));
  cfg["base_model_name_or_path"] = "";
  fs::write_file_atomic(nobase / "adapter_config.json", cfg.dump());
  r = test::run_qlora("generate --adapter " + test::quote(nobase.string()) + " --prompt hi --device cpu");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_EQ(count_lines(r.output), 1) << r.output;
  EXPECT_NE(r.output.find("--model"), std::string::npos) << r.output;
  // An adapter of another base: shapes differ; the message names the file and the key.
  r = test::run_qlora("generate --model " + test::quote((f / "mistral").string()) + " --adapter " +
                      test::quote((f / "llama_lora").string()) + " --prompt hi --device cpu");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_EQ(count_lines(r.output), 1) << r.output;
  EXPECT_NE(r.output.find("adapter_model.safetensors"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("lora_A"), std::string::npos) << r.output;
  // Unreadable data file.
  r = test::run_qlora("eval --model " + llama + " --data " + test::quote((f / "missing.jsonl").string()) +
                      " --device cpu");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_EQ(count_lines(r.output), 1) << r.output;
  EXPECT_NE(r.output.find("missing.jsonl"), std::string::npos) << r.output;
  // Neither --prompt nor --chat.
  r = test::run_qlora("generate --model " + llama + " --device cpu");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_EQ(count_lines(r.output), 1) << r.output;
}

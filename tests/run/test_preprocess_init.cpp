// qlora preprocess and qlora init end to end on a tiny Llama made by transformers at test time
// (tests/python/train_fixture.py): what preprocess reports and marks as supervised is what
// transformers' tokenizer gives for the same prompts and completions (tests/python/preprocess_ref.py),
// counts on crafted data, the training data checks' messages, and a config written by init that
// our loader reads and `qlora train` trains as is. Bad input: exit 2 and one line.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <fstream>
#include <sstream>

#include "tests/common/harness.h"
#include "trainer/common/fs.h"
#include "trainer/config/load.h"

using namespace qlora;
namespace stdfs = std::filesystem;
using json = nlohmann::json;

namespace {

stdfs::path* g_fix = nullptr;

class PreprocessInit : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    g_fix = new stdfs::path(test::temp_dir("fixture"));
    test::ProcResult r = test::run_python("train_fixture.py", {g_fix->string()});
    ASSERT_EQ(r.code, 0) << r.output;
  }
  static void TearDownTestSuite() { delete g_fix; }

  static stdfs::path model() { return *g_fix / "model"; }

  static stdfs::path write(const stdfs::path& p, const std::string& text) {
    std::ofstream(p) << text;
    return p;
  }

  static stdfs::path config(const stdfs::path& dir, const stdfs::path& data, const std::string& type,
                            const std::string& extra = "") {
    return write(dir / "cfg.yaml", "base_model: " + model().string() +
                                       "\nlora_target_linear: true\nmax_steps: 1\n"
                                       "datasets:\n  - path: " +
                                       data.string() + "\n    type: " + type + "\n" + extra);
  }

  static test::ProcResult qlora(const std::string& args) {
    return test::run(test::quote(test::qlora_exe().string()) + " " + args);
  }

  // stdout of a command to a file; stderr is the output returned.
  static test::ProcResult qlora_to(const std::string& args, const stdfs::path& out) {
    const stdfs::path err = out.string() + ".stderr";
    test::ProcResult r = test::run("(" + test::quote(test::qlora_exe().string()) + " " + args + " >" +
                                   test::quote(out.string()) + " 2>" + test::quote(err.string()) + ")");
    r.output = fs::read_file(err);
    return r;
  }

  static size_t lines(const std::string& s) {
    size_t n = 0;
    for (char c : s) n += c == '\n';
    return n + (!s.empty() && s.back() != '\n');
  }
};

}  // namespace

TEST_F(PreprocessInit, SupervisedTokensAreTransformersOnes) {
  const stdfs::path dir = test::temp_dir();
  const stdfs::path cfg = config(dir, *g_fix / "train.jsonl", "alpaca", "sequence_len: 256\n");
  for (const std::string set : {"", " --set seed=7", " --set sample_packing=true"}) {
    SCOPED_TRACE(set);
    const stdfs::path out = dir / "pre.json";
    test::ProcResult r = qlora_to("preprocess " + test::quote(cfg.string()) + set + " --json --show 12", out);
    ASSERT_EQ(r.code, 0) << r.output;
    EXPECT_EQ(r.output, "");  // nothing to warn about
    test::ProcResult ref = test::run_python(
        "preprocess_ref.py", {model().string(), (*g_fix / "train.jsonl").string(), "alpaca", "256", out.string()});
    EXPECT_EQ(ref.code, 0) << ref.output;
    const json j = json::parse(fs::read_file(out));
    EXPECT_EQ(j["samples"].size(), 12u);
    EXPECT_EQ(j["no_supervised_eos"], 0);
  }
  // The text view marks exactly those runs: [[...]] when stdout is not a terminal.
  const stdfs::path json_out = dir / "pre.json", text_out = dir / "pre.txt";
  ASSERT_EQ(qlora_to("preprocess " + test::quote(cfg.string()) + " --json --show 3", json_out).code, 0);
  test::ProcResult r = qlora_to("preprocess " + test::quote(cfg.string()) + " --show 3 --ids", text_out);
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string text = fs::read_file(text_out);
  const json shown = json::parse(fs::read_file(json_out));
  for (const auto& s : shown["samples"]) {
    std::string marked, ids = "ids:";
    for (const auto& run : s["runs"]) {
      const std::string t = run["text"];
      marked += run["supervised"] ? "[[" + t + "]]" : t;
      for (const auto& id : run["ids"])
        ids += run["supervised"] ? " " + std::to_string(id.get<int>()) : " (" + std::to_string(id.get<int>()) + ")";
    }
    EXPECT_NE(text.find(marked + "\n" + ids + "\n"), std::string::npos) << marked << "\n" << text;
  }
}

TEST_F(PreprocessInit, ColourOnATerminalUnlessNoColor) {
  if (!stdfs::exists("/usr/bin/script")) GTEST_SKIP() << "util-linux script(1) gives the command a terminal";
  const stdfs::path dir = test::temp_dir();
  const stdfs::path cfg = config(dir, *g_fix / "train.jsonl", "alpaca", "sequence_len: 256\n");
  const stdfs::path json_out = dir / "pre.json";
  ASSERT_EQ(qlora_to("preprocess " + test::quote(cfg.string()) + " --json --show 1", json_out).code, 0);
  std::string supervised;
  const json shown = json::parse(fs::read_file(json_out));
  for (const auto& run : shown["samples"][0]["runs"])
    if (run["supervised"].get<bool>()) supervised = run["text"].get<std::string>();
  ASSERT_FALSE(supervised.empty());
  const std::string cmd =
      test::quote(test::qlora_exe().string()) + " preprocess " + test::quote(cfg.string()) + " --show 1";
  test::ProcResult tty = test::run("env -u NO_COLOR script -qc " + test::quote(cmd) + " /dev/null");
  ASSERT_EQ(tty.code, 0) << tty.output;
  EXPECT_NE(tty.output.find("\033[1;32m" + supervised + "\033[0m"), std::string::npos) << tty.output;
  EXPECT_EQ(tty.output.find("[["), std::string::npos) << tty.output;
  test::ProcResult plain = test::run("env NO_COLOR=1 script -qc " + test::quote(cmd) + " /dev/null");
  ASSERT_EQ(plain.code, 0) << plain.output;
  EXPECT_NE(plain.output.find("[[" + supervised + "]]"), std::string::npos) << plain.output;
  EXPECT_EQ(plain.output.find("\033["), std::string::npos) << plain.output;
}

TEST_F(PreprocessInit, TruncatedAndDroppedCountsOnCraftedData) {
  const stdfs::path dir = test::temp_dir();
  std::ostringstream d;
  for (int i = 0; i < 12; ++i)
    d << json{{"prompt", "Question " + std::to_string(i) + ": what is next?\nAnswer:"},
              {"completion", std::string(" abc abc abc").substr(0, 4 * (i % 3 + 1))}}
             .dump()
      << "\n";
  std::string long_prompt;
  for (int i = 0; i < 20; ++i) long_prompt += "Reverse the word ";
  d << json{{"prompt", long_prompt}, {"completion", " dcba"}}.dump() << "\n";          // cut before the answer
  d << json{{"prompt", long_prompt + "now"}, {"completion", " dcba"}}.dump() << "\n";  // too
  std::string long_answer;
  for (int i = 0; i < 60; ++i) long_answer += " word";
  d << json{{"prompt", "Q:"}, {"completion", long_answer}}.dump() << "\n";  // cut, still trained
  const stdfs::path data = write(dir / "pc.jsonl", d.str());
  const stdfs::path cfg = config(dir, data, "prompt_completion", "sequence_len: 44\n");
  const stdfs::path out = dir / "pre.json";
  test::ProcResult r = qlora_to("preprocess " + test::quote(cfg.string()) + " --json --show 20", out);
  ASSERT_EQ(r.code, 0) << r.output;
  test::ProcResult ref =
      test::run_python("preprocess_ref.py", {model().string(), data.string(), "prompt_completion", "44", out.string()});
  EXPECT_EQ(ref.code, 0) << ref.output;
  const json j = json::parse(fs::read_file(out));
  EXPECT_EQ(j["truncated"], 3);
  EXPECT_EQ(j["dropped_no_supervised"], 2);
  EXPECT_EQ(j["dropped_truncated"], 2);
  // The warning names the file and the counts (training prints the same).
  EXPECT_NE(r.output.find("qlora: warning: " + data.string() +
                          ": 2 of 15 samples have no supervised token (dropped): 2 had every trained token truncated "
                          "away at sequence_len 44"),
            std::string::npos)
      << r.output;

  // Every sample truncated away: exit 2, one line naming the file and the cause.
  test::ProcResult none = qlora("preprocess " + test::quote(cfg.string()) + " --set sequence_len=2");
  EXPECT_EQ(none.code, 2) << none.output;
  EXPECT_NE(none.output.find("qlora: error: " + data.string() +
                             ": no trainable tokens in its 15 samples: 15 had "
                             "every trained token truncated away at sequence_len 2"),
            std::string::npos)
      << none.output;
}

TEST_F(PreprocessInit, ChatWithoutAFinalAssistantTurnWarnsAboutEos) {
  const stdfs::path dir = test::temp_dir();
  auto conv = [](bool ends_with_assistant) {
    json m = json::array({{{"role", "user"}, {"content", "hi"}}, {{"role", "assistant"}, {"content", "hello"}}});
    if (!ends_with_assistant) m.push_back({{"role", "user"}, {"content", "bye"}});
    return json{{"messages", m}}.dump() + "\n";
  };
  const stdfs::path data = write(dir / "chat.jsonl", conv(true) + conv(false) + conv(true) + conv(false) + conv(false));
  const stdfs::path cfg = config(dir, data, "chat", "chat_template: chatml\nsequence_len: 128\n");
  const stdfs::path out = dir / "pre.json";
  test::ProcResult r = qlora_to("preprocess " + test::quote(cfg.string()) + " --json", out);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("qlora: warning: " + data.string() +
                          ": 3 of 5 samples have no supervised EOS token (\"</s>\", id 2) after their supervised text, "
                          "so the model does not learn to stop there: 3 supervise none (their last message is not "
                          "the assistant's)"),
            std::string::npos)
      << r.output;
  const json j = json::parse(fs::read_file(out));
  EXPECT_EQ(j["no_supervised_eos"], 3);
  EXPECT_EQ(j["train"]["supervised_eos"], 2);
  // Every conversation ending with the assistant: no warning.
  write(data, conv(true) + conv(true));
  r = qlora_to("preprocess " + test::quote(cfg.string()) + " --json", out);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(r.output.find("EOS"), std::string::npos) << r.output;
}

TEST_F(PreprocessInit, BadInputIsOneLineExit2) {
  const stdfs::path dir = test::temp_dir();
  const stdfs::path cfg = config(dir, *g_fix / "train.jsonl", "alpaca");
  struct Case {
    std::string args, expect;
  };
  for (const Case& c : std::vector<Case>{
           {"preprocess " + test::quote(cfg.string()) + " --set sequence_len=abc", "sequence_len"},
           {"preprocess " + test::quote(cfg.string()) + " --set datasets.0.path=" + (dir / "none.jsonl").string(),
            (dir / "none.jsonl").string()},
           {"preprocess " + test::quote((dir / "missing.yaml").string()), "missing.yaml"},
           {"preprocess " + test::quote(cfg.string()) + " --show -1", "--show"},
           {"init " + test::quote((dir / "nomodel").string()) + " --out " + test::quote((dir / "o.yaml").string()),
            "nomodel"},
           {"init " + test::quote(model().string()) + " --data " + test::quote((dir / "none.jsonl").string()) +
                " --out " + test::quote((dir / "o.yaml").string()),
            "none.jsonl"},
       }) {
    SCOPED_TRACE(c.args);
    test::ProcResult r = qlora(c.args);
    EXPECT_EQ(r.code, 2) << r.output;
    EXPECT_EQ(lines(r.output), 1u) << r.output;
    EXPECT_EQ(r.output.rfind("qlora: error: ", 0), 0u) << r.output;
    EXPECT_NE(r.output.find(c.expect), std::string::npos) << r.output;
  }
  EXPECT_FALSE(stdfs::exists(dir / "o.yaml"));
  // Records that fit no format: the file's first line, and what was expected.
  const stdfs::path odd = write(dir / "odd.jsonl", "{\"question\": \"q\", \"answer\": \"a\"}\n");
  test::ProcResult r = qlora("init " + test::quote(model().string()) + " --data " + test::quote(odd.string()) +
                             " --out " + test::quote((dir / "o.yaml").string()));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_EQ(r.output, "qlora: error: " + odd.string() +
                          ":1: expected a record with \"messages\" (chat), \"instruction\" and \"output\" (alpaca), "
                          "\"prompt\" and \"completion\" (prompt_completion) or \"text\" (text); it has \"question\", "
                          "\"answer\"\n");
  EXPECT_FALSE(stdfs::exists(dir / "o.yaml"));
}

TEST_F(PreprocessInit, InitWritesAConfigThatTrains) {
  const stdfs::path dir = test::temp_dir();
  const stdfs::path out = dir / "x.yaml", data = *g_fix / "train.jsonl";
  test::ProcResult r = qlora("init " + test::quote(model().string()) + " --data " + test::quote(data.string()) +
                             " --out " + test::quote(out.string()));
  ASSERT_EQ(r.code, 0) << r.output;
  const config::TrainConfig cfg = config::load_config(out.string());
  EXPECT_EQ(cfg.lora.adapter, "qlora");
  EXPECT_TRUE(cfg.quantization.double_quant);
  EXPECT_EQ(cfg.lora.target_modules,
            (std::vector<std::string>{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}));
  EXPECT_EQ(cfg.data.datasets.at(0).type, "alpaca");
  EXPECT_EQ(cfg.optim.optimizer, "adamw");
  EXPECT_TRUE(cfg.optim.paged);
  EXPECT_EQ(cfg.optim.max_grad_norm, 0.3);
  EXPECT_EQ(cfg.micro_batch_size * cfg.gradient_accumulation_steps, 16);
  // sequence_len: the p99 of the samples' lengths, which preprocess reports (and the test above
  // checks against transformers), rounded up to a multiple of 64.
  const stdfs::path pre = dir / "pre.json";
  ASSERT_EQ(qlora_to("preprocess " + test::quote(out.string()) + " --set sequence_len=100000 --json", pre).code, 0);
  const int64_t p99 = json::parse(fs::read_file(pre))["train"]["length"]["p99"];
  EXPECT_EQ(cfg.data.sequence_len, std::max<int64_t>(64, (p99 + 63) / 64 * 64));

  // It trains as written (two steps here).
  test::ProcResult t = qlora("train " + test::quote(out.string()) +
                             " --set max_steps=2 --set output_dir=" + test::quote((dir / "run").string()));
  ASSERT_EQ(t.code, 0) << t.output;
  EXPECT_TRUE(stdfs::exists(dir / "run" / "checkpoints" / "checkpoint-000002"));

  // An existing file is kept without --force, replaced with it.
  const std::string before = fs::read_file(out);
  r = qlora("init " + test::quote(model().string()) + " --out " + test::quote(out.string()));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_EQ(fs::read_file(out), before);
  r = qlora("init " + test::quote(model().string()) + " --out " + test::quote(out.string()) + " --force");
  ASSERT_EQ(r.code, 0) << r.output;
  // Without --data: a placeholder the loader reads, which training refuses naming it.
  const config::TrainConfig placeholder = config::load_config(out.string());
  EXPECT_EQ(placeholder.data.sequence_len, 256);  // the fixture's max_position_embeddings
  t = qlora("train " + test::quote(out.string()) + " --set output_dir=" + test::quote((dir / "run2").string()));
  EXPECT_EQ(t.code, 2) << t.output;
  EXPECT_NE(t.output.find("REPLACE_WITH_YOUR_DATA.jsonl"), std::string::npos) << t.output;
  EXPECT_FALSE(stdfs::exists(dir / "run2"));
}

TEST_F(PreprocessInit, InitDetectsEachDatasetType) {
  const stdfs::path dir = test::temp_dir();
  const json chat = {{"messages", json::array({{{"role", "user"}, {"content", "hi"}},
                                               {{"role", "assistant"}, {"content", "hello"}}})}};
  for (const auto& [type, record] : std::vector<std::pair<std::string, json>>{
           {"chat", chat},
           {"alpaca", {{"instruction", "Say hi."}, {"input", ""}, {"output", "hi"}}},
           {"prompt_completion", {{"prompt", "Say hi:"}, {"completion", " hi"}}},
           {"text", {{"text", "hi there"}}}}) {
    SCOPED_TRACE(type);
    const stdfs::path data = write(dir / (type + ".jsonl"), record.dump() + "\n" + record.dump() + "\n");
    const stdfs::path out = dir / (type + ".yaml");
    test::ProcResult r = qlora("init " + test::quote(model().string()) + " --data " + test::quote(data.string()) +
                               " --out " + test::quote(out.string()));
    ASSERT_EQ(r.code, 0) << r.output;
    const config::TrainConfig cfg = config::load_config(out.string());
    EXPECT_EQ(cfg.data.datasets.at(0).type, type);
    EXPECT_EQ(cfg.data.sequence_len % 64, 0);
    // The fixture's tokenizer ships no chat template: chat data gets a built-in one, and a note.
    EXPECT_EQ(cfg.data.chat_template, type == "chat" ? "chatml" : "");
    EXPECT_NE(fs::read_file(out).find("ships no chat template"), std::string::npos);
    // The data as the written config prepares it.
    r = qlora("preprocess " + test::quote(out.string()) + " --json");
    EXPECT_EQ(r.code, 0) << r.output;
  }
}

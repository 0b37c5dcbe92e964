// Token ids and training masks of real tokenizers, judged by transformers (tests/python/data_ref.py
// trains Llama 3, Qwen2, SentencePiece and GPT-2 style tokenizers at test time):
// - chat: our sample from a model's published (untagged) template must have the ids of
//   apply_chat_template(tokenize=True) and train exactly the tokens transformers marks with
//   return_assistant_tokens_mask on a {% generation %}-tagged twin of the template (same text).
// - prompt/completion and alpaca: the ids of tokenizer(text) and the tokens whose offsets overlap
//   the completion.
#include <gtest/gtest.h>

#include <fstream>

#include "tests/common/harness.h"
#include "tests/tokenizer/published_templates.h"
#include "trainer/common/error.h"
#include "trainer/data/formats.h"

using namespace qlora;
using namespace qlora::data;
using namespace qlora::test;
using json = nlohmann::ordered_json;

namespace {

struct ChatCase {
  std::string tokenizer;
  const char* untagged;
  const char* tagged;
  json messages;
};

struct CompletionCase {
  std::string tokenizer;
  std::string prompt, completion;
};

json msg(const std::string& role, const std::string& content) { return json{{"role", role}, {"content", content}}; }

std::vector<json> conversations() {
  return {
      json::array({msg("user", "Hello there"), msg("assistant", "Hi! How can I help you today?")}),
      json::array({msg("system", "You answer in one word."), msg("user", "Capital of France?"),
                   msg("assistant", "Paris."), msg("user", "And of Italy?"), msg("assistant", "Rome.")}),
      json::array({msg("user", "Ça va? 你好 🚀"), msg("assistant", "Très bien, merci — 谢谢! 😀")}),
      json::array({msg("user", "  spaced  \n"), msg("assistant", "\n\nindented\n  reply  ")}),
      json::array({msg("user", "Say nothing."), msg("assistant", "")}),
      json::array({msg("user", "2+2=?"), msg("assistant", "Answer: 4!!! (yes)"), msg("user", "x"),
                   msg("assistant", " leading space")}),
  };
}

std::vector<ChatCase> chat_cases() {
  using namespace qlora::test::templates;
  std::vector<ChatCase> out;
  struct T {
    const char* tk;
    const char* untagged;
    const char* tagged;
  };
  for (const T& t : {T{"llama3", kLlama31, tagged::kLlama31}, T{"qwen2", kQwen25, tagged::kQwen25},
                     T{"sp_json", kMistralV3, tagged::kMistralV3}, T{"sp_model", kMistralV3, tagged::kMistralV3},
                     T{"gpt2", kChatML, tagged::kChatML}, T{"qwen2", kChatML, tagged::kChatML},
                     T{"llama3", kChatML, tagged::kChatML}})
    for (const auto& conv : conversations()) out.push_back({t.tk, t.untagged, t.tagged, conv});
  return out;
}

std::vector<CompletionCase> completion_cases() {
  std::vector<CompletionCase> out;
  for (const char* tk : {"llama3", "qwen2", "sp_json", "sp_model", "gpt2"}) {
    out.push_back({tk, alpaca_prompt("Name a color.", ""), "Blue, like the sky."});
    out.push_back({tk, alpaca_prompt("Translate.", "Bonjour le monde"), "Hello world"});
    out.push_back({tk, "Question: 2+2?\nAnswer:", " 4"});
    out.push_back({tk, "The word is Hel", "lo world"});  // the edge falls inside a word
    out.push_back({tk, "数字:", "12345 ünïcödé"});
  }
  return out;
}

class DataVsHF : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new stdfs::path(temp_dir("data_ref"));
    json cases = json::array();
    for (const auto& c : chat_cases())
      cases.push_back(
          {{"tokenizer", c.tokenizer}, {"template", c.untagged}, {"tagged", c.tagged}, {"messages", c.messages}});
    for (const auto& c : completion_cases())
      cases.push_back({{"tokenizer", c.tokenizer}, {"prompt", c.prompt}, {"completion", c.completion}});
    std::ofstream(*dir_ / "cases.json") << cases.dump();
    ProcResult r = run_python("data_ref.py", {dir_->string(), (*dir_ / "cases.json").string()});
    ASSERT_EQ(r.code, 0) << r.output;
    std::ifstream f(*dir_ / "data_ref.json");
    ref_ = new json(json::parse(f));
  }
  static void TearDownTestSuite() {
    delete ref_;
    delete dir_;
  }

  static const tok::Tokenizer& tokenizer(const std::string& name) {
    static std::map<std::string, std::unique_ptr<tok::Tokenizer>> cache;
    auto& t = cache[name];
    if (!t) t = tok::load_tokenizer((*ref_)["tokenizers"][name].get<std::string>());
    return *t;
  }

  static std::string show(const std::vector<int64_t>& v) {
    std::string s;
    for (auto x : v) s += std::to_string(x) + " ";
    return s;
  }

  static stdfs::path* dir_;
  static json* ref_;
};

stdfs::path* DataVsHF::dir_ = nullptr;
json* DataVsHF::ref_ = nullptr;

TEST_F(DataVsHF, ChatSamplesHaveTransformersIdsAndAssistantMasks) {
  auto cases = chat_cases();
  int checked = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const ChatCase& c = cases[i];
    const json& ref = (*ref_)["results"][i];
    std::string name = c.tokenizer + " case " + std::to_string(i) + " " + c.messages.dump();
    ASSERT_FALSE(ref.contains("error")) << name << ": " << ref["error"];
    ASSERT_EQ(ref["text"], ref["text_tagged"]) << name << ": the tagged twin must render the same text";
    const tok::Tokenizer& tk = tokenizer(c.tokenizer);
    tok::ChatTemplate chat(c.untagged, "published template", tk.special());
    config::DataSpec spec;
    config::DatasetSpec ds;
    ds.type = "chat";
    Sample s = SampleBuilder(ds, spec, tk, &chat).build(Record{json{{"messages", c.messages}}, "case"});

    std::vector<int64_t> want_ids = ref["ids"].get<std::vector<int64_t>>();
    std::vector<int64_t> want_mask = ref["mask"].get<std::vector<int64_t>>();
    // The template writes no BOS but the tokenizer adds one: exactly one BOS, untrained.
    const auto& sp = tk.special();
    if (sp.add_bos_token && sp.bos_id && (want_ids.empty() || want_ids[0] != *sp.bos_id)) {
      want_ids.insert(want_ids.begin(), *sp.bos_id);
      want_mask.insert(want_mask.begin(), 0);
    }
    // EOS appended (trained) unless the trained turns already end with it.
    bool eos_trained = false;
    for (size_t k = 0; k < want_ids.size(); ++k) eos_trained |= want_mask[k] && sp.eos_id && want_ids[k] == *sp.eos_id;
    if (sp.eos_id && !eos_trained) {
      want_ids.push_back(*sp.eos_id);
      want_mask.push_back(1);
    }
    std::vector<int64_t> got_ids(s.input_ids.begin(), s.input_ids.end()), got_mask;
    for (auto l : s.labels) got_mask.push_back(l != kIgnoreIndex);
    EXPECT_EQ(got_ids, want_ids) << name << "\n ours " << show(got_ids) << "\n HF   " << show(want_ids);
    EXPECT_EQ(got_mask, want_mask) << name << "\n ours " << show(got_mask) << "\n HF   " << show(want_mask);
    ++checked;
  }
  EXPECT_EQ(checked, 42);
}

TEST_F(DataVsHF, CompletionMasksFollowTokenOffsets) {
  auto chats = chat_cases().size();
  auto cases = completion_cases();
  for (size_t i = 0; i < cases.size(); ++i) {
    const CompletionCase& c = cases[i];
    const json& ref = (*ref_)["results"][chats + i];
    std::string name = c.tokenizer + " " + json(c.prompt + "|" + c.completion).dump();
    ASSERT_FALSE(ref.contains("error")) << name << ": " << ref["error"];
    const tok::Tokenizer& tk = tokenizer(c.tokenizer);
    config::DataSpec spec;
    config::DatasetSpec ds;
    ds.type = "prompt_completion";
    Sample s = SampleBuilder(ds, spec, tk, nullptr)
                   .build(Record{json{{"prompt", c.prompt}, {"completion", c.completion}}, "case"});
    std::vector<int64_t> want_ids = ref["ids"].get<std::vector<int64_t>>();
    std::vector<int64_t> want_mask = ref["mask"].get<std::vector<int64_t>>();
    const auto& sp = tk.special();
    if (sp.eos_id && (want_ids.empty() || want_ids.back() != *sp.eos_id)) {  // we always end with a trained EOS
      want_ids.push_back(*sp.eos_id);
      want_mask.push_back(1);
    } else if (sp.eos_id) {
      want_mask.back() = 1;
    }
    std::vector<int64_t> got_ids(s.input_ids.begin(), s.input_ids.end()), got_mask;
    for (auto l : s.labels) got_mask.push_back(l != kIgnoreIndex);
    EXPECT_EQ(got_ids, want_ids) << name << "\n ours " << show(got_ids) << "\n HF   " << show(want_ids);
    EXPECT_EQ(got_mask, want_mask) << name << "\n ours " << show(got_mask) << "\n HF   " << show(want_mask);
  }
}

}  // namespace

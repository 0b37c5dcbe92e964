// Datasets, masking, packing and the resumable loader, on a small fake tokenizer whose
// tokenization we can reason about exactly (tests/data/fake_tokenizer.h). Real tokenizers and
// transformers' own masks: test_data_hf.cpp.
#include <gtest/gtest.h>

#include <omp.h>
#include <fstream>
#include <set>

#include "tests/common/harness.h"
#include "tests/data/fake_tokenizer.h"
#include "trainer/common/error.h"
#include "trainer/data/dataset.h"
#include "trainer/data/formats.h"
#include "trainer/data/loader.h"
#include "trainer/data/records.h"
#include "trainer/data/report.h"
#include "trainer/data/tokenize.h"

using namespace qlora;
using namespace qlora::data;
using qlora::test::FakeTokenizer;
using json = nlohmann::ordered_json;

namespace {

std::string write(const std::filesystem::path& p, const std::string& content) {
  std::ofstream(p, std::ios::binary) << content;
  return p.string();
}

std::string jsonl(const std::vector<json>& rows) {
  std::string s;
  for (const auto& r : rows) s += r.dump() + "\n";
  return s;
}

config::DataSpec one_dataset(const std::string& path, const std::string& type) {
  config::DataSpec spec;
  config::DatasetSpec ds;
  ds.path = path;
  ds.type = type;
  spec.datasets.push_back(ds);
  spec.sequence_len = 512;
  return spec;
}

Record record(const json& j, const std::string& where = "f.jsonl:1") { return Record{j, where}; }

// The text the labels train on, decoded.
std::string trained_text(const tok::Tokenizer& tk, const Sample& s) {
  std::vector<int32_t> ids;
  for (size_t i = 0; i < s.labels.size(); ++i) {
    if (s.labels[i] != kIgnoreIndex) {
      EXPECT_EQ(s.labels[i], s.input_ids[i]) << "a label must be its own input id";
      ids.push_back(s.labels[i]);
    }
  }
  return tk.decode(ids, false);
}

std::string user_error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const UserError& e) { return e.what(); }
  return "";
}

// ---- span → token masks ----------------------------------------------------------------------

TEST(EncodeMarked, MarksExactlyTheTokensOverlappingSpans) {
  FakeTokenizer tk;
  // Clean edges: "Hello" and " world" are tokens.
  MarkedTokens m = encode_marked(tk, "Hello world!", {{5, 11}});
  EXPECT_EQ(tk.decode(m.ids, false), "Hello world!");
  ASSERT_EQ(m.ids.size(), 3u);  // "Hello", " world", "!"
  EXPECT_EQ(m.marked, (std::vector<uint8_t>{0, 1, 0}));
  // An edge inside a token: "xabc" tokenizes as x, abc; a span starting at "c" overlaps "abc".
  m = encode_marked(tk, "xabcd", {{3, 5}});
  ASSERT_EQ(m.ids.size(), 3u);  // x, abc, d
  EXPECT_EQ(m.marked, (std::vector<uint8_t>{0, 1, 1}));
  // A span ending inside "abc" ("xab|cd") also takes "abc", and not "d".
  m = encode_marked(tk, "xabcd", {{0, 3}});
  EXPECT_EQ(m.marked, (std::vector<uint8_t>{1, 1, 0}));
  // Several spans, special tokens at their edges.
  m = encode_marked(tk, "<s>a</s>b</s>", {{3, 8}, {9, 13}});
  EXPECT_EQ(m.marked, (std::vector<uint8_t>{0, 1, 1, 0, 1}));
}

// ---- formats ---------------------------------------------------------------------------------

TEST(Formats, AlpacaUsesTheStandardPromptAndTrainsOutputAndEos) {
  FakeTokenizer tk;
  config::DataSpec spec;
  config::DatasetSpec ds;
  ds.type = "alpaca";
  SampleBuilder b(ds, spec, tk, nullptr);
  Sample with = b.build(record({{"instruction", "Add."}, {"input", "2 2"}, {"output", "4"}}));
  EXPECT_EQ(tk.decode(with.input_ids, false),
            "Below is an instruction that describes a task, paired with an input that provides further context. "
            "Write a response that appropriately completes the request.\n\n### Instruction:\nAdd.\n\n### Input:\n2 "
            "2\n\n### Response:\n4</s>");
  EXPECT_EQ(trained_text(tk, with), "4</s>");
  Sample without = b.build(record({{"instruction", "Say hi."}, {"input", ""}, {"output", "Hello world"}}));
  EXPECT_EQ(tk.decode(without.input_ids, false),
            "Below is an instruction that describes a task. Write a response that appropriately completes the "
            "request.\n\n### Instruction:\nSay hi.\n\n### Response:\nHello world</s>");
  EXPECT_EQ(trained_text(tk, without), "Hello world</s>");
  // A missing input is no input; null too.
  Sample null_input = b.build(record({{"instruction", "Say hi."}, {"input", nullptr}, {"output", "Hello world"}}));
  EXPECT_EQ(null_input.input_ids, without.input_ids);
}

TEST(Formats, TextPromptCompletionAndTrainOnInputs) {
  FakeTokenizer tk;
  config::DataSpec spec;
  config::DatasetSpec ds;
  ds.type = "completion";  // alias of text
  Sample t = SampleBuilder(ds, spec, tk, nullptr).build(record({{"text", "Hello world"}}));
  EXPECT_EQ(trained_text(tk, t), "Hello world</s>");
  ds.type = "prompt_completion";
  Sample pc = SampleBuilder(ds, spec, tk, nullptr).build(record({{"prompt", "Q: "}, {"completion", "A"}}));
  EXPECT_EQ(tk.decode(pc.input_ids, false), "Q: A</s>");
  EXPECT_EQ(trained_text(tk, pc), "A</s>");
  spec.train_on_inputs = true;
  Sample all = SampleBuilder(ds, spec, tk, nullptr).build(record({{"prompt", "Q: "}, {"completion", "A"}}));
  EXPECT_EQ(all.labels, std::vector<int32_t>(all.input_ids.begin(), all.input_ids.end()));
  // Configurable field names.
  ds.field_prompt = "question";
  ds.field_completion = "answer";
  spec.train_on_inputs = false;
  Sample renamed = SampleBuilder(ds, spec, tk, nullptr).build(record({{"question", "Q: "}, {"answer", "A"}}));
  EXPECT_EQ(renamed.input_ids, pc.input_ids);
}

TEST(Formats, BosOnceAndEosKeptWhenPadIsEos) {
  // add_bos_token, no pad token (pad falls back to EOS).
  FakeTokenizer tk(/*add_bos=*/true, /*has_pad=*/false);
  config::DataSpec spec;
  config::DatasetSpec ds;
  ds.type = "text";
  Sample t = SampleBuilder(ds, spec, tk, nullptr).build(record({{"text", "Hello"}}));
  EXPECT_EQ(t.input_ids.front(), *tk.special().bos_id);
  EXPECT_EQ(std::count(t.input_ids.begin(), t.input_ids.end(), *tk.special().bos_id), 1);
  EXPECT_EQ(t.labels.back(), *tk.special().eos_id);
  // A template that writes BOS itself: still exactly one.
  ds.type = "chat";
  tok::ChatTemplate chat(
      "{{ bos_token }}{% for m in messages %}{{ m.role + ': ' + m.content + eos_token }}{% endfor %}", "t",
      tk.special());
  Sample c = SampleBuilder(ds, spec, tk, &chat)
                 .build(record({{"messages", json::array({{{"role", "user"}, {"content", "hi"}},
                                                          {{"role", "assistant"}, {"content", "yo"}}})}}));
  EXPECT_EQ(std::count(c.input_ids.begin(), c.input_ids.end(), *tk.special().bos_id), 1);
  EXPECT_EQ(c.input_ids.front(), *tk.special().bos_id);
  // The template ends the assistant turn with EOS: it is trained, and no second EOS is added.
  // (It has no generation prompt, so the model also writes the "assistant: " header.)
  EXPECT_EQ(trained_text(tk, c), "assistant: yo</s>");
  EXPECT_EQ(tk.decode(c.input_ids, false), "<s>user: hi</s>assistant: yo</s>");

  // pad == eos at collate time: the final EOS keeps its label, padding does not.
  auto dir = qlora::test::temp_dir();
  config::DataSpec s2 =
      one_dataset(write(dir / "d.jsonl", jsonl({{{"text", "Hello world"}}, {{"text", "ab"}}})), "text");
  testing::internal::CaptureStderr();
  Datasets d = build_datasets(s2, tk);
  const std::string warned = testing::internal::GetCapturedStderr();
  EXPECT_EQ(d.train->pad_id, *tk.special().eos_id);
  // Padding is masked by position, never by id: no EOS goes missing from the labels, and nothing
  // warns that it does.
  EXPECT_EQ(d.stats.no_eos, 0);
  EXPECT_EQ(warned, "");
  Batch b = collate(*d.train, {0, 1});
  for (int64_t r = 0; r < 2; ++r) {
    int64_t len = d.train->row_begin[r + 1] - d.train->row_begin[r];
    EXPECT_EQ(b.labels[r][len - 1].item<int64_t>(), *tk.special().eos_id) << "row " << r;
    for (int64_t t = len; t < b.labels.size(1); ++t) {
      EXPECT_EQ(b.labels[r][t].item<int64_t>(), kIgnoreIndex);
      EXPECT_EQ(b.input_ids[r][t].item<int64_t>(), *tk.special().eos_id);
      EXPECT_EQ(b.segment_ids[r][t].item<int64_t>(), 0);
    }
  }
}

TEST(Formats, ChatTrainsOnlyAssistantTurnsWithTheirEndOfTurn) {
  FakeTokenizer tk(false, true, /*eos=*/"<|im_end|>");
  config::DataSpec spec;
  config::DatasetSpec ds;
  ds.type = "chat";
  ds.field_messages = "conversations";
  ds.message_field_role = "from";
  ds.message_field_content = "value";
  tok::ChatTemplate chat = tok::ChatTemplate::resolve("chatml", tk);
  json conv = json::array({{{"from", "system"}, {"value", "S"}},
                           {{"from", "user"}, {"value", "Hello"}},
                           {{"from", "assistant"}, {"value", "Hello world"}},
                           {{"from", "user"}, {"value", "ab"}},
                           {{"from", "assistant"}, {"value", "abc"}}});
  Sample s = SampleBuilder(ds, spec, tk, &chat).build(record({{"conversations", conv}}));
  EXPECT_EQ(tk.decode(s.input_ids, false),
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\nHello "
            "world<|im_end|>\n<|im_start|>user\nab<|im_end|>\n<|im_start|>assistant\nabc<|im_end|>\n");
  EXPECT_EQ(trained_text(tk, s), "Hello world<|im_end|>\nabc<|im_end|>\n");
  // EOS is <|im_end|>, already trained: nothing appended.
  EXPECT_NE(s.input_ids.back(), *tk.special().eos_id);

  // With EOS "</s>" (a base model with ChatML): EOS appended and trained after the last reply.
  FakeTokenizer base;
  tok::ChatTemplate chat2 = tok::ChatTemplate::resolve("chatml", base);
  Sample s2 = SampleBuilder(ds, spec, base, &chat2).build(record({{"conversations", conv}}));
  EXPECT_EQ(s2.input_ids.back(), *base.special().eos_id);
  EXPECT_EQ(s2.labels.back(), *base.special().eos_id);
  // Ending with a user turn: the appended EOS is not trained.
  json ends_user = conv;
  ends_user.push_back({{"from", "user"}, {"value", "bye"}});
  Sample s3 = SampleBuilder(ds, spec, base, &chat2).build(record({{"conversations", ends_user}}));
  EXPECT_EQ(s3.labels.back(), kIgnoreIndex);
}

TEST(Formats, ChatTemplateKwargsReachTheTemplate) {
  FakeTokenizer tk;
  config::DataSpec spec;
  spec.chat_template_kwargs = {{"date_string", "03 Feb 2025"}, {"enable_thinking", "false"}, {"n", "3"}};
  config::DatasetSpec ds;
  ds.type = "chat";
  tok::ChatTemplate chat(
      "{{ date_string }}|{{ enable_thinking is false }}|{{ n + 1 }}|{{ tools | length }}|"
      "{% for m in messages %}{{ m.content }}{% endfor %}",
      "t", tk.special());
  json rec = {
      {"messages", json::array({{{"role", "user"}, {"content", "u"}}, {{"role", "assistant"}, {"content", "a"}}})},
      {"tools", json::array({{{"name", "f"}}})}};
  Sample s = SampleBuilder(ds, spec, tk, &chat).build(record(rec));
  EXPECT_EQ(tk.decode(s.input_ids, false), "03 Feb 2025|True|4|1|ua</s>");
}

TEST(Formats, BadRecordsNameTheFieldAndLine) {
  FakeTokenizer tk;
  config::DataSpec spec;
  config::DatasetSpec ds;
  ds.type = "alpaca";
  SampleBuilder alpaca(ds, spec, tk, nullptr);
  EXPECT_EQ(user_error_of([&] {
              alpaca.build(record({{"instruction", "x"}}, "d.jsonl:7"));
            }),
            "d.jsonl:7: missing field \"output\"");
  EXPECT_EQ(user_error_of([&] {
              alpaca.build(record({{"instruction", 3}, {"output", "y"}}, "d.jsonl:8"));
            }),
            "d.jsonl:8: field \"instruction\": expected a string, got number");
  ds.type = "chat";
  tok::ChatTemplate chat = tok::ChatTemplate::resolve("gemma", tk);
  SampleBuilder c(ds, spec, tk, &chat);
  EXPECT_EQ(user_error_of([&] {
              c.build(record({{"messages", "hi"}}, "c.jsonl:2"));
            }),
            "c.jsonl:2: field \"messages\": expected an array of messages, got string");
  EXPECT_EQ(user_error_of([&] {
              c.build(record({{"messages", json::array({{{"content", "x"}}})}}, "c.jsonl:3"));
            }),
            "c.jsonl:3: messages[0]: missing field \"role\"");
  EXPECT_EQ(user_error_of([&] {
              c.build(record({{"messages", json::array({{{"role", "user"}, {"content", 5}}})}}, "c.jsonl:4"));
            }),
            "c.jsonl:4: messages[0].content: expected a string, got number");
  // The template's own refusal, with the record's line.
  std::string e = user_error_of([&] {
    c.build(record({{"messages", json::array({{{"role", "system"}, {"content", "s"}}})}}, "c.jsonl:5"));
  });
  EXPECT_EQ(e.rfind("c.jsonl:5: built-in chat template gemma line ", 0), 0u) << e;
  EXPECT_NE(e.find("System role not supported"), std::string::npos) << e;
  EXPECT_NE(user_error_of([&] { canonical_type("sharegpt", "d.jsonl"); }).find("unknown dataset type \"sharegpt\""),
            std::string::npos);
}

// ---- files -----------------------------------------------------------------------------------

TEST(Files, MalformedLinesFailWithFileAndLineOrAreSkippedAndCounted) {
  FakeTokenizer tk;
  auto dir = qlora::test::temp_dir();
  std::string good = json{{"text", "Hello"}}.dump();
  std::string path = write(dir / "d.jsonl", good + "\n\n" + good + "\n{\"text\": \"oops\"\n" + good + "\n[1, 2]\n" +
                                                "{\"text\": \"bad \xff byte\"}\n" + good + "\n");
  config::DataSpec spec = one_dataset(path, "text");
  std::string e = user_error_of([&] { build_datasets(spec, tk); });
  EXPECT_EQ(e.rfind(path + ":4: invalid JSON: column ", 0), 0u) << e;
  spec.skip_invalid = true;
  std::vector<std::string> log;
  Datasets d = build_datasets(spec, tk, [&](const std::string& l) { log.push_back(l); });
  EXPECT_EQ(d.stats.skipped_invalid, 3);
  EXPECT_EQ(d.stats.train_samples, 4);
  ASSERT_FALSE(log.empty());
  EXPECT_NE(log[0].find("skipped 3 invalid records"), std::string::npos) << log[0];

  // Each kind of problem on its own line.
  auto first_error = [&](const std::string& content, const std::string& type = "text") {
    config::DataSpec s = one_dataset(write(dir / "e.jsonl", content), type);
    return user_error_of([&] { build_datasets(s, tk); });
  };
  std::string e_path = (dir / "e.jsonl").string();
  EXPECT_EQ(first_error(good + "\n[1]\n"), e_path + ":2: expected a JSON object, got array");
  EXPECT_EQ(first_error(good + "\n" + good + "\n{\"txt\": \"x\"}\n"), e_path + ":3: missing field \"text\"");
  EXPECT_EQ(first_error("{\"text\": 1}\n"), e_path + ":1: field \"text\": expected a string, got number");
  EXPECT_EQ(first_error(good + "\n{\"text\": \"caf\xc3\"}\n"), e_path + ":2: invalid UTF-8 (byte 0xC3 at column 14)");
  EXPECT_EQ(
      first_error(good + "\r\n{\"text\": \"x\"\r\n"),
      e_path +
          ":2: invalid JSON: column 13: syntax error while parsing object - unexpected end of input; expected '}'");
  EXPECT_EQ(first_error(""), e_path + ": the dataset is empty");
  EXPECT_EQ(first_error("\n  \n"), e_path + ": the dataset is empty");
  EXPECT_EQ(user_error_of([&] { build_datasets(one_dataset((dir / "missing.jsonl").string(), "text"), tk); }),
            (dir / "missing.jsonl").string() +
                ": no such file or directory (expected a dataset file or a directory of them)");
  std::filesystem::create_directories(dir / "empty");
  EXPECT_EQ(user_error_of([&] { build_datasets(one_dataset((dir / "empty").string(), "text"), tk); }),
            (dir / "empty").string() +
                ": no data files in the directory (expected .parquet, .arrow, .jsonl, .json, .jsonl.gz, .json.gz, "
                ".csv or .tsv files)");
}

TEST(Files, LinesOfAnyLengthAreReadWholeUpToTheLimit) {
  auto dir = qlora::test::temp_dir();
  // Line lengths around the reader's 64 KiB chunk (a line is the text + 11 bytes of JSON): each
  // record's text must come back whole, on its line.
  std::vector<size_t> lens = {1, 65500, 65523, 65524, 65525, 65535, 131058, 131059, 131060, 200000};
  std::string content;
  std::vector<std::string> texts;
  for (size_t n : lens) {
    std::string t(n, 'a');
    for (size_t i = 0; i < n; i += 97) t[i] = static_cast<char>('b' + i % 20);
    texts.push_back(t);
    content += json{{"text", t}}.dump() + "\n";
  }
  std::string path = write(dir / "long.jsonl", content.substr(0, content.size() - 1));  // last line: no '\n'
  std::vector<Record> got;
  read_records(path, false, nullptr, [&](std::vector<Record>& rs) {
    for (auto& r : rs) got.push_back(r);
  });
  ASSERT_EQ(got.size(), texts.size());
  for (size_t i = 0; i < texts.size(); ++i) {
    EXPECT_EQ(got[i].value["text"].get<std::string>(), texts[i]) << "line " << i + 1;
    EXPECT_EQ(got[i].where, path + ":" + std::to_string(i + 1));
  }
  // A line longer than the limit is an error naming its line (or skipped and counted), and the
  // lines after it are still read.
  std::string good = json{{"text", "x"}}.dump();
  std::string huge = json{{"text", std::string(kMaxLineBytes, 'z')}}.dump();
  std::string hp = write(dir / "huge.jsonl", good + "\n" + huge + "\n" + good + "\n");
  EXPECT_EQ(user_error_of([&] { read_records(hp, false, nullptr, [](std::vector<Record>&) {}); }),
            hp + ":2: the line is " + std::to_string(huge.size()) + " bytes long; a record may have at most 64 MiB");
  int64_t skipped = 0;
  std::vector<std::string> where;
  read_records(hp, true, &skipped, [&](std::vector<Record>& rs) {
    for (auto& r : rs) where.push_back(r.where);
  });
  EXPECT_EQ(skipped, 1);
  EXPECT_EQ(where, (std::vector<std::string>{hp + ":1", hp + ":3"}));
}

TEST(Files, JsonArrayFilesNameTheElementLine) {
  FakeTokenizer tk;
  auto dir = qlora::test::temp_dir();
  std::string path = write(dir / "d.json",
                           "[\n  {\"instruction\": \"a\", \"output\": \"b\"},\n  {\"instruction\": \"c, [d]\",\n"
                           "   \"output\": \"e\"},\n  {\"instruction\": \"f\"}\n]\n");
  config::DataSpec spec = one_dataset(path, "alpaca");
  EXPECT_EQ(user_error_of([&] { build_datasets(spec, tk); }), path + ":5: missing field \"output\"");
  std::string broken = write(dir / "b.json", "[\n {\"text\": \"a\"},\n {\"text\" \"b\"}\n]");
  EXPECT_EQ(
      user_error_of([&] { build_datasets(one_dataset(broken, "text"), tk); }).rfind(broken + ":3: invalid JSON: ", 0),
      0u);
  // A .json file of JSON lines is read as JSON lines (as HF datasets does).
  std::string lines = write(dir / "l.json", jsonl({{{"text", "a"}}, {{"text", "b"}}}));
  EXPECT_EQ(build_datasets(one_dataset(lines, "text"), tk).stats.train_samples, 2);
}

TEST(Files, NoTrainableTokensIsAnError) {
  FakeTokenizer tk;
  auto dir = qlora::test::temp_dir();
  // Conversations without an assistant turn train nothing.
  std::string path =
      write(dir / "c.jsonl", jsonl({{{"messages", json::array({{{"role", "user"}, {"content", "hi"}}})}}}));
  config::DataSpec spec = one_dataset(path, "chat");
  spec.chat_template = "chatml";
  std::string e = user_error_of([&] { build_datasets(spec, tk); });
  EXPECT_EQ(e, path +
                   ": no trainable tokens in its 1 samples: 1 have every token masked (train_on_inputs: false trains "
                   "only the assistant turns, and the chat template marks none in them)");
}

TEST(Files, SamplesWithoutATrainedEosAreCountedAndWarnedAbout) {
  // pad == EOS. A conversation that ends with a user turn gets an untrained EOS: the model would
  // not learn to stop there. Truncated samples are not counted (they have no end to learn).
  FakeTokenizer tk(/*add_bos=*/false, /*has_pad=*/false);
  auto dir = qlora::test::temp_dir();
  auto msg = [](const char* role, const std::string& content) { return json{{"role", role}, {"content", content}}; };
  std::string path =
      write(dir / "c.jsonl",
            jsonl({{{"messages", json::array({msg("user", "hi"), msg("assistant", "yo")})}},
                   {{"messages", json::array({msg("user", "hi"), msg("assistant", "yo"), msg("user", "and?")})}},
                   {{"messages", json::array({msg("user", "hi"), msg("assistant", std::string(300, 'z'))})}}}));
  config::DataSpec spec = one_dataset(path, "chat");
  spec.chat_template = "chatml";
  spec.sequence_len = 100;
  testing::internal::CaptureStderr();
  Datasets d = build_datasets(spec, tk);
  const std::string warned = testing::internal::GetCapturedStderr();
  EXPECT_EQ(d.stats.no_eos, 1);
  EXPECT_EQ(d.stats.truncated, 1);
  EXPECT_EQ(warned, "qlora: warning: " + path +
                        ": 1 of 3 samples have no supervised EOS token (\"</s>\", id 257) after their supervised "
                        "text, so the model does not learn to stop there: 1 supervise none (their last message is not "
                        "the assistant's)\n");
  // A template whose generation block leaves the EOS after the reply out: that EOS is masked and
  // the one appended after it supervised, so the model never learns to stop after a reply.
  spec.chat_template =
      "{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}"
      "{{ eos_token }}{% else %}{{ m.role + ': ' + m.content + '\\n' }}{% endif %}{% endfor %}";
  testing::internal::CaptureStderr();
  Datasets g = build_datasets(spec, tk);
  const std::string warned_g = testing::internal::GetCapturedStderr();
  EXPECT_EQ(g.stats.no_eos, 2);
  EXPECT_NE(warned_g.find(": 2 of 3 samples have no supervised EOS token (\"</s>\", id 257) after their supervised "
                          "text, so the model does not learn to stop there: 2 mask the EOS right after supervised "
                          "text (the chat template leaves it out of the assistant turn)\n"),
            std::string::npos)
      << warned_g;
  // Each kept sample's untruncated length, in the packed order.
  ASSERT_EQ(d.stats.train_lengths.size(), 3u);
  for (int64_t k = 0; k < 3; ++k) {
    const int64_t end = k + 1 < 3 ? d.train->sample_begin[k + 1] : static_cast<int64_t>(d.train->input_ids.size());
    const int64_t len = end - d.train->sample_begin[k];
    if (len < 100) {
      EXPECT_EQ(d.stats.train_lengths[k], len);
    } else {
      EXPECT_GT(d.stats.train_lengths[k], 300);
    }
  }
}

TEST(Files, LongSamplesAreTruncatedAndCountedUntrainableOnesDropped) {
  FakeTokenizer tk;
  auto dir = qlora::test::temp_dir();
  std::string long_prompt(40, 'p');
  std::string path =
      write(dir / "d.jsonl", jsonl({{{"prompt", "q"}, {"completion", "xyz"}},                    // 5 tokens with EOS
                                    {{"prompt", long_prompt}, {"completion", "a"}},              // prompt fills all 10
                                    {{"prompt", "q"}, {"completion", std::string(20, 'c')}}}));  // cut, still trained
  config::DataSpec spec = one_dataset(path, "prompt_completion");
  spec.sequence_len = 10;
  std::vector<std::string> log;
  Datasets d = build_datasets(spec, tk, [&](const std::string& l) { log.push_back(l); });
  EXPECT_EQ(d.stats.truncated, 2);
  EXPECT_EQ(d.stats.dropped_no_targets, 1);
  EXPECT_EQ(d.stats.train_samples, 2);
  for (int64_t r = 0; r < d.train->num_rows(); ++r) EXPECT_LE(d.train->row_begin[r + 1] - d.train->row_begin[r], 10);
  bool logged = false;
  for (const auto& l : log)
    logged = logged || l.find("truncated 2 samples longer than sequence_len 10") != std::string::npos;
  EXPECT_TRUE(logged);
}

// ---- packing, shuffling, validation -----------------------------------------------------------

std::vector<json> many_texts(int n) {
  std::vector<json> rows;
  for (int i = 0; i < n; ++i)
    rows.push_back({{"prompt", "q" + std::to_string(i) + ":"}, {"completion", std::string(i % 7 + 1, 'a' + i % 26)}});
  return rows;
}

// The samples of a PackedData as (ids, labels) pairs, in row order.
std::multiset<std::pair<std::vector<int32_t>, std::vector<int32_t>>> samples_of(const PackedData& p) {
  std::multiset<std::pair<std::vector<int32_t>, std::vector<int32_t>>> out;
  for (int64_t k = 0; k < p.num_samples(); ++k) {
    int64_t b = p.sample_begin[k];
    int64_t e = k + 1 < p.num_samples() ? p.sample_begin[k + 1] : static_cast<int64_t>(p.input_ids.size());
    out.insert({std::vector<int32_t>(p.input_ids.begin() + b, p.input_ids.begin() + e),
                std::vector<int32_t>(p.labels.begin() + b, p.labels.begin() + e)});
  }
  return out;
}

TEST(Packing, RowsHoldWholeSamplesWithRestartingPositionsAndSegments) {
  FakeTokenizer tk;
  auto dir = qlora::test::temp_dir();
  config::DataSpec spec = one_dataset(write(dir / "d.jsonl", jsonl(many_texts(40))), "prompt_completion");
  spec.sequence_len = 24;
  Datasets plain = build_datasets(spec, tk);
  spec.sample_packing = true;
  Datasets packed = build_datasets(spec, tk);
  EXPECT_EQ(plain.train->num_rows(), 40);
  EXPECT_LT(packed.train->num_rows(), 20);
  // The same samples, only grouped.
  EXPECT_EQ(samples_of(*plain.train), samples_of(*packed.train));
  EXPECT_EQ(plain.stats.train_target_tokens, packed.stats.train_target_tokens);

  std::vector<int64_t> rows(packed.train->num_rows());
  for (size_t i = 0; i < rows.size(); ++i) rows[i] = static_cast<int64_t>(i);
  Batch b = collate(*packed.train, rows);
  const PackedData& p = *packed.train;
  int64_t targets = 0;
  for (int64_t r = 0; r < p.num_rows(); ++r) {
    int64_t len = p.row_begin[r + 1] - p.row_begin[r];
    EXPECT_LE(len, 24);
    int64_t seg = 0, pos = 0;
    for (int64_t t = 0; t < len; ++t) {
      int64_t g = p.row_begin[r] + t;
      bool starts = std::binary_search(p.sample_begin.begin(), p.sample_begin.end(), g);
      if (starts) {
        ++seg;
        pos = 0;
      }
      EXPECT_EQ(b.input_ids[r][t].item<int64_t>(), p.input_ids[g]);
      EXPECT_EQ(b.segment_ids[r][t].item<int64_t>(), seg);
      EXPECT_EQ(b.position_ids[r][t].item<int64_t>(), pos);
      EXPECT_EQ(b.labels[r][t].item<int64_t>(), starts ? kIgnoreIndex : p.labels[g]);
      targets += b.labels[r][t].item<int64_t>() != kIgnoreIndex;
      ++pos;
    }
    EXPECT_GT(seg, 0);
  }
  EXPECT_EQ(b.num_target_tokens, targets);
  EXPECT_EQ(b.num_target_tokens, (b.labels != kIgnoreIndex).sum().item<int64_t>());
  EXPECT_EQ(b.num_target_tokens, packed.stats.train_target_tokens);
  EXPECT_EQ(b.num_tokens, static_cast<int64_t>(p.input_ids.size()));
  EXPECT_EQ(b.input_ids.dtype(), at::kLong);
  // pad_to_sequence_len: fixed width.
  EXPECT_EQ(collate(p, {0}, 24).input_ids.size(1), 24);
}

TEST(Packing, ReportCountsWhatThePackerAndTheLoaderMake) {
  FakeTokenizer tk;
  auto dir = qlora::test::temp_dir();
  config::DataSpec spec = one_dataset(write(dir / "d.jsonl", jsonl(many_texts(40))), "prompt_completion");
  spec.sequence_len = 24;
  Datasets plain = build_datasets(spec, tk);
  spec.sample_packing = true;
  Datasets packed = build_datasets(spec, tk);
  const PartStats a = part_stats(*plain.train, plain.stats.train_lengths, tk.special().eos_id);
  const PartStats b = part_stats(*packed.train, packed.stats.train_lengths, tk.special().eos_id);
  // The rows packing would make, predicted from the unpacked data, are the packer's.
  EXPECT_EQ(a.rows, 40);
  EXPECT_EQ(a.rows_packed, packed.train->num_rows());
  EXPECT_EQ(b.rows_packed, b.rows);
  EXPECT_EQ(a.tokens, b.tokens);
  EXPECT_EQ(a.supervised_tokens, plain.stats.train_target_tokens);
  EXPECT_EQ(a.eos_supervised, 40);  // every sample's EOS is trained
  // Supervised tokens as the loader's batches count them.
  DataLoader loader(packed.train, 4, 1);
  int64_t targets = 0;
  for (int64_t i = 0; i < loader.batches_per_epoch(); ++i) {
    const Batch batch = loader.next();
    targets += batch.num_target_tokens;
    // The batch's samples, split back from its rows, are samples of the data with the labels the
    // loss sees: the first token of each masked.
    for (const auto& runs : batch_samples(batch)) {
      std::vector<int32_t> ids, labels;
      for (const TokenRun& r : runs) {
        ids.insert(ids.end(), r.ids.begin(), r.ids.end());
        labels.insert(labels.end(), r.labels.begin(), r.labels.end());
        for (int32_t l : r.labels) EXPECT_EQ(l != kIgnoreIndex, r.supervised);
      }
      EXPECT_EQ(labels.front(), kIgnoreIndex);
      bool found = false;
      for (const auto& [sid, slabels] : samples_of(*packed.train))
        found = found || (sid == ids && std::equal(slabels.begin() + 1, slabels.end(), labels.begin() + 1));
      EXPECT_TRUE(found);
    }
  }
  EXPECT_EQ(targets, b.supervised_tokens);
  // Lengths: nearest-rank percentiles.
  const LengthStats l = length_stats({5, 1, 4, 2, 3, 10, 6, 7, 9, 8});
  EXPECT_EQ(l.min, 1);
  EXPECT_EQ(l.p50, 5);
  EXPECT_EQ(l.p90, 9);
  EXPECT_EQ(l.p99, 10);
  EXPECT_EQ(l.max, 10);
}

TEST(Splits, ShuffleIsSeededAndValidationIsHeldOutByRatioOrFile) {
  FakeTokenizer tk;
  auto dir = qlora::test::temp_dir();
  config::DataSpec spec = one_dataset(write(dir / "d.jsonl", jsonl(many_texts(40))), "prompt_completion");
  Datasets a = build_datasets(spec, tk), b = build_datasets(spec, tk);
  EXPECT_EQ(a.train->input_ids, b.train->input_ids);
  EXPECT_EQ(a.train->fingerprint, b.train->fingerprint);
  spec.seed = 7;
  Datasets c = build_datasets(spec, tk);
  EXPECT_NE(a.train->input_ids, c.train->input_ids);
  EXPECT_EQ(samples_of(*a.train), samples_of(*c.train));

  spec.val_set_size = 0.1;
  Datasets v = build_datasets(spec, tk);
  EXPECT_EQ(v.stats.val_samples, 4);
  EXPECT_EQ(v.stats.train_samples, 36);
  auto all = samples_of(*v.train);
  for (const auto& s : samples_of(*v.val)) all.insert(s);
  EXPECT_EQ(all, samples_of(*c.train));

  spec.test_datasets.push_back(config::DatasetSpec{});
  spec.test_datasets[0].path = write(dir / "t.jsonl", jsonl(many_texts(3)));
  spec.test_datasets[0].type = "prompt_completion";
  Datasets f = build_datasets(spec, tk);
  EXPECT_EQ(f.stats.val_samples, 3);
  EXPECT_EQ(f.stats.train_samples, 40);

  spec.test_datasets.clear();
  spec.val_set_size = 1.0;
  EXPECT_NE(user_error_of([&] { build_datasets(spec, tk); }).find("val_set_size: expected a fraction in [0, 1)"),
            std::string::npos);
}

TEST(Splits, ResultDoesNotDependOnThreadCount) {
  FakeTokenizer tk;
  auto dir = qlora::test::temp_dir();
  config::DataSpec spec = one_dataset(write(dir / "d.jsonl", jsonl(many_texts(300))), "prompt_completion");
  spec.sample_packing = true;
  int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  uint64_t one = build_datasets(spec, tk).train->fingerprint;
  omp_set_num_threads(4);
  uint64_t four = build_datasets(spec, tk).train->fingerprint;
  omp_set_num_threads(saved);
  EXPECT_EQ(one, four);
}

// ---- the loader ------------------------------------------------------------------------------

std::shared_ptr<const PackedData> loader_data(int n) {
  FakeTokenizer tk;
  auto dir = qlora::test::temp_dir("loader");
  config::DataSpec spec = one_dataset(write(dir / "d.jsonl", jsonl(many_texts(n))), "prompt_completion");
  return build_datasets(spec, tk).train;
}

TEST(Loader, EveryEpochServesEveryRowOnceInAFreshOrder) {
  auto data = loader_data(23);
  DataLoader loader(data, 4, 42);
  EXPECT_EQ(loader.batches_per_epoch(), 6);
  std::vector<std::vector<int64_t>> epochs(3);
  for (int e = 0; e < 3; ++e) {
    for (int i = 0; i < loader.batches_per_epoch(); ++i) {
      Batch b = loader.next();
      EXPECT_EQ(loader.epoch(), static_cast<uint64_t>(e));
      EXPECT_EQ(b.input_ids.size(0), i == 5 ? 3 : 4);
      for (int64_t r = 0; r < b.input_ids.size(0); ++r) {
        // Identify rows by content.
        for (int64_t row = 0; row < data->num_rows(); ++row) {
          int64_t len = data->row_begin[row + 1] - data->row_begin[row];
          if (len > b.input_ids.size(1)) continue;
          bool same = true;
          for (int64_t t = 0; t < len && same; ++t)
            same = b.input_ids[r][t].item<int64_t>() == data->input_ids[data->row_begin[row] + t];
          if (same && (len == b.input_ids.size(1) || b.segment_ids[r][len].item<int64_t>() == 0)) {
            epochs[e].push_back(row);
            break;
          }
        }
      }
    }
  }
  for (auto& ep : epochs) {
    ASSERT_EQ(ep.size(), 23u);
    std::vector<int64_t> sorted = ep;
    std::sort(sorted.begin(), sorted.end());
    for (int64_t i = 0; i < 23; ++i) EXPECT_EQ(sorted[i], i);
  }
  EXPECT_NE(epochs[0], epochs[1]);
  EXPECT_NE(epochs[1], epochs[2]);
  // No shuffle: rows in order.
  DataLoader ordered(data, 5, 42, /*shuffle=*/false);
  Batch b = ordered.next();
  EXPECT_EQ(b.input_ids[0][0].item<int64_t>(), data->input_ids[0]);
}

TEST(Loader, RestoredStateContinuesExactlyLikeAnUninterruptedRun) {
  auto data = loader_data(23);
  DataLoader straight(data, 4, 9);
  std::vector<Batch> reference;
  for (int i = 0; i < 20; ++i) reference.push_back(straight.next());  // crosses three epochs

  for (int cut : {0, 1, 5, 6, 7, 13}) {
    DataLoader first(data, 4, 9);
    for (int i = 0; i < cut; ++i) first.next();
    std::string saved = first.state().to_json().dump();  // what a checkpoint writes

    DataLoader resumed(data, 4, 9);
    resumed.restore(LoaderState::from_json(nlohmann::json::parse(saved)));
    EXPECT_EQ(resumed.state(), first.state());
    for (int i = cut; i < 20; ++i) {
      Batch b = resumed.next();
      ASSERT_TRUE(b.input_ids.equal(reference[i].input_ids)) << "cut " << cut << " batch " << i;
      ASSERT_TRUE(b.labels.equal(reference[i].labels));
      ASSERT_TRUE(b.position_ids.equal(reference[i].position_ids));
      ASSERT_TRUE(b.segment_ids.equal(reference[i].segment_ids));
      ASSERT_EQ(b.num_target_tokens, reference[i].num_target_tokens);
    }
  }
}

TEST(Loader, RestoreRefusesAStateOfOtherDataOrSettings) {
  auto data = loader_data(23);
  DataLoader a(data, 4, 9);
  a.next();
  LoaderState s = a.state();
  EXPECT_NE(user_error_of([&] { DataLoader(data, 2, 9).restore(s); }).find("saved with micro_batch_size 4"),
            std::string::npos);
  EXPECT_NE(user_error_of([&] { DataLoader(data, 4, 10).restore(s); }).find("saved with seed 9"), std::string::npos);
  EXPECT_NE(user_error_of([&] { DataLoader(loader_data(24), 4, 9).restore(s); }).find("saved for 23 rows"),
            std::string::npos);
  LoaderState other = s;
  other.data_fingerprint ^= 1;
  EXPECT_NE(user_error_of([&] { DataLoader(data, 4, 9).restore(other); }).find("saved for different training data"),
            std::string::npos);
  nlohmann::json j = s.to_json();
  j.erase("position");
  EXPECT_EQ(user_error_of([&] { LoaderState::from_json(j); }), "data cursor: missing key \"position\"");
  j["position"] = "3";
  EXPECT_EQ(user_error_of([&] { LoaderState::from_json(j); }), "data cursor: \"position\": expected an integer");
}

TEST(Loader, PermutationIsAPortableFunctionOfTheSeed) {
  // Our own generator (not std::shuffle, whose output differs between standard libraries):
  // pinned values guard against accidental changes that would break resuming old checkpoints.
  std::vector<int64_t> p = permutation(10, 42);
  std::vector<int64_t> sorted = p;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < 10; ++i) EXPECT_EQ(sorted[i], i);
  EXPECT_EQ(p, (std::vector<int64_t>{0, 9, 5, 8, 6, 4, 7, 2, 1, 3}));
  EXPECT_NE(permutation(10, 43), p);
}

}  // namespace

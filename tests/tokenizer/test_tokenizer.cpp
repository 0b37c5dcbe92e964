// Our tokenizers against transformers' AutoTokenizer on tokenizers trained at test time
// (tests/python/tokenizer_fixtures.py): ids with and without special tokens, decode with and
// without skipping special tokens, special tokens, chat templates; plus the error messages.
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/common/harness.h"
#include "trainer/common/error.h"
#include "trainer/tokenizer/tokenizer.h"

using namespace qlora::test;
using nlohmann::json;
namespace tok = qlora::tok;

namespace {

std::string show(const std::vector<int32_t>& ids) {
  std::string s = "[";
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? "," : "") + std::to_string(ids[i]);
  return s + "]";
}

std::string escape(const std::string& s) { return json(s).dump(); }

class TokenizerVsHF : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // QLORA_TOKENIZER_FIXTURES=<dir> reuses fixtures made by an earlier run (for development).
    if (const char* keep = std::getenv("QLORA_TOKENIZER_FIXTURES");
        keep && stdfs::exists(stdfs::path(keep) / "goldens.json")) {
      dir_ = keep;
    } else {
      dir_ = temp_dir("tokenizer_fixtures");
      ProcResult r = run_python("tokenizer_fixtures.py", {dir_.string()});
      ASSERT_EQ(r.code, 0) << r.output;
    }
    std::ifstream f(dir_ / "goldens.json");
    goldens_ = json::parse(f);
  }
  static const json& fixture(const std::string& name) {
    for (const auto& fx : goldens_["fixtures"])
      if (fx["name"] == name) return fx;
    throw std::runtime_error("no fixture " + name);
  }

  // Every hard-corpus text: ids with and without special tokens equal HF's.
  static void check_encode(const std::string& name) {
    const json& fx = fixture(name);
    auto t = tok::load_tokenizer(fx["dir"].get<std::string>());
    int bad = 0, n = 0;
    for (const auto& c : fx["cases"]) {
      const std::string text = c["text"];
      for (bool special : {false, true}) {
        auto want = c[special ? "ids_special" : "ids"].get<std::vector<int32_t>>();
        auto got = t->encode(text, special);
        ++n;
        if (got != want && ++bad <= 8)
          ADD_FAILURE() << name << " encode(" << escape(text) << ", add_special_tokens=" << special << ")\n  ours "
                        << show(got) << "\n  HF   " << show(want);
      }
    }
    // Invalid UTF-8 encodes like Python's errors="replace" decoding of it.
    for (const auto& c : fx["invalid_utf8_cases"]) {
      std::string hex = c["hex"], bytes;
      for (size_t i = 0; i + 1 < hex.size(); i += 2) bytes += char(std::stoi(hex.substr(i, 2), nullptr, 16));
      auto want = c["ids"].get<std::vector<int32_t>>();
      auto got = t->encode(bytes, false);
      ++n;
      if (got != want && ++bad <= 8)
        ADD_FAILURE() << name << " encode(bytes " << hex << ")\n  ours " << show(got) << "\n  HF   " << show(want);
    }
    EXPECT_EQ(bad, 0) << name << ": " << bad << " of " << n << " encodings differ";
    EXPECT_GT(n, 300);
  }

  // decode of HF's ids equals HF's decode, both skip modes; decode(encode(x)) == x where HF
  // round-trips; random id sequences decode like HF (split characters, stray bytes, specials).
  static void check_decode(const std::string& name) {
    const json& fx = fixture(name);
    auto t = tok::load_tokenizer(fx["dir"].get<std::string>());
    int bad = 0, roundtrips = 0;
    for (const auto& c : fx["cases"]) {
      const std::string text = c["text"];
      auto ids = c["ids"].get<std::vector<int32_t>>();
      auto ids_sp = c["ids_special"].get<std::vector<int32_t>>();
      std::string got = t->decode(ids, false), got_skip = t->decode(ids_sp, true);
      if (got != c["decode"] && ++bad <= 8)
        ADD_FAILURE() << name << " decode(" << show(ids) << ")\n  ours " << escape(got) << "\n  HF   "
                      << c["decode"].dump();
      if (got_skip != c["decode_skip"] && ++bad <= 8)
        ADD_FAILURE() << name << " decode(" << show(ids_sp) << ", skip_special_tokens)\n  ours " << escape(got_skip)
                      << "\n  HF   " << c["decode_skip"].dump();
      if (c["roundtrip"].get<bool>()) {
        ++roundtrips;
        if (t->decode(t->encode(text, false), false) != text && ++bad <= 8)
          ADD_FAILURE() << name << " decode(encode(" << escape(text) << ")) does not round-trip";
      }
    }
    for (const auto& c : fx["decode_cases"]) {
      auto ids = c["ids"].get<std::vector<int32_t>>();
      std::string got = t->decode(ids, false), got_skip = t->decode(ids, true);
      if (got != c["text"] && ++bad <= 8)
        ADD_FAILURE() << name << " decode(" << show(ids) << ")\n  ours " << escape(got) << "\n  HF   "
                      << c["text"].dump();
      if (got_skip != c["text_skip"] && ++bad <= 8)
        ADD_FAILURE() << name << " decode(" << show(ids) << ", skip)\n  ours " << escape(got_skip) << "\n  HF   "
                      << c["text_skip"].dump();
    }
    EXPECT_EQ(bad, 0) << name;
    EXPECT_GT(roundtrips, 100) << name << ": too few texts round-trip in HF to test ours";
  }

  // Special tokens, their ids and flags, vocabulary size, token lookups, chat templates.
  static void check_specials(const std::string& name) {
    const json& fx = fixture(name);
    auto t = tok::load_tokenizer(fx["dir"].get<std::string>());
    const tok::SpecialTokens& sp = t->special();
    auto expect_token = [&](const char* k, const std::string& got_tok, const std::optional<int32_t>& got_id) {
      const json& e = fx["special"][k];
      if (e["token"].is_null()) {
        EXPECT_TRUE(got_tok.empty()) << name << " " << k << "_token: " << got_tok;
        EXPECT_FALSE(got_id.has_value()) << name << " " << k;
        return;
      }
      EXPECT_EQ(got_tok, e["token"].get<std::string>()) << name << " " << k << "_token";
      ASSERT_TRUE(got_id.has_value()) << name << " " << k;
      EXPECT_EQ(*got_id, e["id"].get<int32_t>()) << name << " " << k << "_token_id";
    };
    expect_token("bos", sp.bos_token, sp.bos_id);
    expect_token("eos", sp.eos_token, sp.eos_id);
    expect_token("unk", sp.unk_token, sp.unk_id);
    expect_token("pad", sp.pad_token, sp.pad_id);
    EXPECT_EQ(sp.add_bos_token, fx["special"]["adds_bos"].get<bool>()) << name;
    EXPECT_EQ(sp.add_eos_token, fx["special"]["adds_eos"].get<bool>()) << name;
    EXPECT_EQ(t->vocab_size(), fx["vocab_size"].get<int32_t>()) << name;
    for (const auto& p : fx["token_probe"]) {
      auto id = t->token_to_id(p[0].get<std::string>());
      ASSERT_TRUE(id.has_value()) << name << " " << p[0];
      EXPECT_EQ(*id, p[1].get<int32_t>()) << name << " " << p[0];
      EXPECT_EQ(t->id_to_token(*id), p[0].get<std::string>()) << name;
    }
    EXPECT_EQ(t->chat_template(), fx["chat_template"].get<std::string>()) << name;
    std::map<std::string, std::string> named;
    for (auto& [k, v] : fx["named_chat_templates"].items()) named[k] = v.get<std::string>();
    EXPECT_EQ(t->named_chat_templates(), named) << name;
  }

  static inline stdfs::path dir_;
  static inline json goldens_;
};

#define TOKENIZER_FIXTURE_TESTS(NAME)                                   \
  TEST_F(TokenizerVsHF, NAME##_EncodeEqualsHF) { check_encode(#NAME); } \
  TEST_F(TokenizerVsHF, NAME##_DecodeEqualsHF) { check_decode(#NAME); } \
  TEST_F(TokenizerVsHF, NAME##_SpecialTokensAndTemplates) { check_specials(#NAME); }

TOKENIZER_FIXTURE_TESTS(sp_model)
TOKENIZER_FIXTURE_TESTS(sp_model_legacy)
TOKENIZER_FIXTURE_TESTS(sp_json)
TOKENIZER_FIXTURE_TESTS(sp_json_classic)
TOKENIZER_FIXTURE_TESTS(gemma_json)
TOKENIZER_FIXTURE_TESTS(gpt2)
TOKENIZER_FIXTURE_TESTS(llama3)
TOKENIZER_FIXTURE_TESTS(qwen2)
TOKENIZER_FIXTURE_TESTS(qwen2_json)

// A file path loads like its directory; a .model file next to a tokenizer.json still loads.
TEST_F(TokenizerVsHF, FilePathsLoadLikeTheirDirectory) {
  const json& fx = fixture("llama3");
  stdfs::path d = fx["dir"].get<std::string>();
  auto a = tok::load_tokenizer(d), b = tok::load_tokenizer(d / "tokenizer.json");
  const std::string text = "Hello <|eot_id|> world 12345";
  EXPECT_EQ(a->encode(text, true), b->encode(text, true));
  EXPECT_EQ(b->special().bos_token, "<|begin_of_text|>");
  const json& sp = fixture("sp_model");
  auto c = tok::load_tokenizer(stdfs::path(sp["dir"].get<std::string>()) / "tokenizer.model");
  for (const auto& cs : sp["cases"])
    if (cs["text"] == "Hello world") {
      EXPECT_EQ(c->encode("Hello world", true), cs["ids_special"].get<std::vector<int32_t>>());
    }
}

// Many threads on one tokenizer (shared BPE cache) give the same ids as one thread.
TEST_F(TokenizerVsHF, EncodeBatchIsThreadSafe) {
  const json& fx = fixture("qwen2");
  auto t = tok::load_tokenizer(fx["dir"].get<std::string>());
  std::vector<std::string> texts;
  std::vector<std::vector<int32_t>> want;
  for (int rep = 0; rep < 8; ++rep)
    for (const auto& c : fx["cases"]) {
      texts.push_back(c["text"]);
      want.push_back(c["ids_special"].get<std::vector<int32_t>>());
    }
  EXPECT_EQ(t->encode_batch(texts, true), want);
}

// ---- bad inputs: one UserError line naming the file and what is wrong ---------------------------

std::string load_error(const stdfs::path& p) {
  try {
    tok::load_tokenizer(p);
  } catch (const qlora::UserError& e) { return e.what(); }
  return "(no error)";
}

void write(const stdfs::path& p, const std::string& s) { std::ofstream(p, std::ios::binary) << s; }

TEST(TokenizerErrors, MissingPathOrFiles) {
  stdfs::path d = temp_dir();
  EXPECT_NE(load_error(d / "nope").find("nope: no such file or directory"), std::string::npos)
      << load_error(d / "nope");
  std::string e = load_error(d);
  EXPECT_NE(e.find(d.string() + ": no tokenizer.json or tokenizer.model"), std::string::npos) << e;
  write(d / "vocab.txt", "x");
  e = load_error(d / "vocab.txt");
  EXPECT_NE(e.find("vocab.txt: expected a tokenizer.json"), std::string::npos) << e;
}

TEST(TokenizerErrors, BadTokenizerJson) {
  stdfs::path d = temp_dir();
  write(d / "tokenizer.json", "{\"model\": ");
  std::string e = load_error(d);
  EXPECT_NE(e.find("tokenizer.json: not valid JSON"), std::string::npos) << e;

  write(d / "tokenizer.json", R"({"model": {"type": "Unigram", "vocab": []}})");
  e = load_error(d);
  EXPECT_NE(e.find("tokenizer.json: model.type: \"Unigram\" is not supported"), std::string::npos) << e;

  write(d / "tokenizer.json", R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a b"]}})");
  e = load_error(d);
  EXPECT_NE(e.find("tokenizer.json: model.merges[0]: \"a b\" makes \"ab\", missing from model.vocab"),
            std::string::npos)
      << e;

  write(d / "tokenizer.json", R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [["a", "c"]]}})");
  e = load_error(d);
  EXPECT_NE(e.find("model.merges[0]: \"a c\" uses a token missing from model.vocab"), std::string::npos) << e;

  write(d / "tokenizer.json",
        R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "pre_tokenizer": {"type": "Punctuation"}})");
  e = load_error(d);
  EXPECT_NE(e.find("tokenizer.json: pre_tokenizer: pre_tokenizer type \"Punctuation\" is not supported"),
            std::string::npos)
      << e;

  write(d / "tokenizer.json", R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
        "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(unclosed"}, "behavior": "Isolated"}})");
  e = load_error(d);
  EXPECT_NE(e.find("regex /(unclosed/"), std::string::npos) << e;
}

TEST(TokenizerErrors, BadConfigAndModel) {
  stdfs::path d = temp_dir();
  write(d / "tokenizer.json", R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})");
  write(d / "tokenizer_config.json", R"({"add_bos_token": "yes"})");
  std::string e = load_error(d);
  EXPECT_NE(e.find("tokenizer_config.json: .add_bos_token: expected true or false"), std::string::npos) << e;
  write(d / "tokenizer_config.json", R"({"chat_template": 3})");
  e = load_error(d);
  EXPECT_NE(e.find("tokenizer_config.json: chat_template: expected a string or a list"), std::string::npos) << e;

  stdfs::path d2 = temp_dir("sp");
  write(d2 / "tokenizer.model", "this is not a protobuf");
  e = load_error(d2);
  EXPECT_NE(e.find("tokenizer.model: "), std::string::npos) << e;
}

}  // namespace

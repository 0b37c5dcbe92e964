#include "trainer/model/gguf_tokenizer.h"

#include <stdlib.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <map>
#include <set>
#include <unordered_map>

#include "trainer/common/error.h"
#include "trainer/common/fs.h"
#include "trainer/common/sha256.h"
#include "trainer/io/gguf_reader.h"
#include "trainer/tokenizer/byte_level.h"
#include "trainer/tokenizer/pipeline.h"
#include "trainer/tokenizer/tokenizer.h"

namespace qlora::model {

namespace {
using json = nlohmann::json;

enum TokenType { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

const char* kLlama3Split =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* kQwen2Split =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// The split pattern transformers uses for a tokenizer.ggml.pre value (nullptr: GPT-2's own).
const char* split_of(const std::string& pre) {
  static const std::set<std::string> llama3 = {"llama3",    "llama-v3",  "llama-bpe",   "falcon3",
                                               "falcon-h1", "pixtral",   "midm-2.0",    "lfm2",
                                               "dbrx",      "smaug-bpe", "jina-v5-nano"};
  static const std::set<std::string> qwen2 = {"qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"};
  if (llama3.count(pre)) return kLlama3Split;
  if (qwen2.count(pre)) return kQwen2Split;
  return nullptr;
}

// Code points of a UTF-8 string (invalid bytes count one each), for Python's len() and slicing.
std::vector<size_t> char_starts(const std::string& s) {
  std::vector<size_t> v;
  for (size_t i = 0; i < s.size();) {
    v.push_back(i);
    const unsigned char c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
    i += std::min(n, s.size() - i);
  }
  return v;
}

// transformers' generate_merges: every split of a token into two tokens of the vocabulary, per
// token ordered by the parts' ids, then all stably sorted by (score, len(left), len(right)),
// descending when scores are given, else ascending by the token's id.
std::vector<std::pair<std::string, std::string>> derive_merges(const std::vector<std::string>& tokens,
                                                               const std::vector<double>* scores) {
  std::unordered_map<std::string, int64_t> vocab;
  for (size_t i = 0; i < tokens.size(); ++i) vocab[tokens[i]] = static_cast<int64_t>(i);
  // vocab_scores: insertion order of first occurrence, value of the last
  std::vector<std::string> order;
  std::unordered_map<std::string, double> score;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (!score.count(tokens[i])) order.push_back(tokens[i]);
    score[tokens[i]] = scores ? (*scores)[i] : static_cast<double>(vocab[tokens[i]]);
  }
  struct M {
    std::string l, r;
    double s;
    size_t ll, lr;
  };
  std::vector<M> all;
  for (const std::string& t : order) {
    const auto st = char_starts(t);
    std::vector<M> local;
    for (size_t k = 1; k < st.size(); ++k) {
      std::string l = t.substr(0, st[k]), r = t.substr(st[k]);
      if (vocab.count(l) && vocab.count(r)) local.push_back({l, r, score[t], k, st.size() - k});
    }
    std::stable_sort(local.begin(), local.end(), [&](const M& a, const M& b) {
      return std::make_pair(vocab[a.l], vocab[a.r]) < std::make_pair(vocab[b.l], vocab[b.r]);
    });
    all.insert(all.end(), local.begin(), local.end());
  }
  const bool reverse = scores != nullptr;
  std::stable_sort(all.begin(), all.end(), [&](const M& a, const M& b) {
    const auto ka = std::make_tuple(a.s, a.ll, a.lr), kb = std::make_tuple(b.s, b.ll, b.lr);
    return reverse ? kb < ka : ka < kb;
  });
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(all.size());
  for (auto& m : all) out.emplace_back(std::move(m.l), std::move(m.r));
  return out;
}

// Whether every code point of `t` is a character of the byte-level alphabet.
bool in_byte_alphabet(const std::string& t) {
  const auto& a = tok::byte_level_alphabet();
  const auto st = char_starts(t);
  for (size_t k = 0; k < st.size(); ++k) {
    const size_t e = k + 1 < st.size() ? st[k + 1] : t.size();
    const std::string ch = t.substr(st[k], e - st[k]);
    bool found = false;
    for (int b = 0; b < 256 && !found; ++b) found = a.byte_to_utf8[b] == ch;
    if (!found) return false;
  }
  return true;
}

std::string respell_bytes(const std::string& t) {
  const auto& a = tok::byte_level_alphabet();
  std::string o;
  for (unsigned char c : t) o += a.byte_to_utf8[c];
  return o;
}

json added(int64_t id, const std::string& content, bool special) {
  return {{"id", id},        {"content", content},  {"single_word", false}, {"lstrip", false},
          {"rstrip", false}, {"normalized", false}, {"special", special}};
}

json template_post(const std::vector<std::pair<std::string, int64_t>>& pre,
                   const std::vector<std::pair<std::string, int64_t>>& suf) {
  json single = json::array(), pair = json::array(), specials = json::object();
  auto sp = [&](const std::pair<std::string, int64_t>& t, int type_id) {
    specials[t.first] = {{"id", t.first}, {"ids", {t.second}}, {"tokens", {t.first}}};
    return json{{"SpecialToken", {{"id", t.first}, {"type_id", type_id}}}};
  };
  for (const auto& t : pre) single.push_back(sp(t, 0));
  single.push_back({{"Sequence", {{"id", "A"}, {"type_id", 0}}}});
  for (const auto& t : suf) single.push_back(sp(t, 0));
  pair = single;
  for (const auto& t : pre) pair.push_back(sp(t, 1));
  pair.push_back({{"Sequence", {{"id", "B"}, {"type_id", 1}}}});
  for (const auto& t : suf) pair.push_back(sp(t, 1));
  return {{"type", "TemplateProcessing"}, {"single", single}, {"pair", pair}, {"special_tokens", specials}};
}
}  // namespace

GgufTokenizerFiles gguf_tokenizer_files(const io::GgufFile& f) {
  const std::string file = f.path().string();
  const std::string type = f.get_string("tokenizer.ggml.model");
  if (type != "llama" && type != "gpt2")
    user_error(file, ": tokenizer.ggml.model: \"", shorten(type),
               "\" is not supported (expected llama for SentencePiece or gpt2 for byte-level BPE)");
  const json& jt = f.value("tokenizer.ggml.tokens");
  if (!jt.is_array() || jt.empty()) user_error(file, ": tokenizer.ggml.tokens: expected a non-empty array of strings");
  std::vector<std::string> tokens;
  tokens.reserve(jt.size());
  for (const auto& t : jt) {
    if (!t.is_string()) user_error(file, ": tokenizer.ggml.tokens: expected an array of strings");
    tokens.push_back(t.get<std::string>());
  }
  const int64_t n = static_cast<int64_t>(tokens.size());
  auto numbers = [&](const char* key, auto& out) {
    if (!f.has(key)) return false;
    const json& a = f.value(key);
    if (!a.is_array() || static_cast<int64_t>(a.size()) != n)
      user_error(file, ": ", key, ": expected an array of ", n, " numbers (one per token)");
    for (const auto& x : a) {
      if (!x.is_number()) user_error(file, ": ", key, ": expected an array of numbers");
      out.push_back(x.template get<typename std::decay_t<decltype(out)>::value_type>());
    }
    return true;
  };
  std::vector<double> scores;
  std::vector<int64_t> types;
  const bool has_scores = numbers("tokenizer.ggml.scores", scores);
  numbers("tokenizer.ggml.token_type", types);
  auto id_of = [&](const char* key) -> std::optional<int64_t> {
    const auto v = f.find_int(key);
    if (v && (*v < 0 || *v >= n)) user_error(file, ": ", key, ": ", *v, " is not a token id (0 to ", n - 1, ")");
    return v;
  };
  const auto bos = id_of("tokenizer.ggml.bos_token_id"), eos = id_of("tokenizer.ggml.eos_token_id"),
             unk = id_of("tokenizer.ggml.unknown_token_id"), pad = id_of("tokenizer.ggml.padding_token_id");
  const bool byte_level = type == "gpt2";
  // SentencePiece files without the flag: llama.cpp adds BOS
  const bool add_bos = f.find_bool("tokenizer.ggml.add_bos_token").value_or(type == "llama");
  const bool add_eos = f.find_bool("tokenizer.ggml.add_eos_token").value_or(false);

  // the vocabulary (byte-level tokens outside the byte alphabet respelled byte by byte)
  std::vector<std::string> spelled = tokens;
  if (byte_level)
    for (auto& t : spelled)
      if (!in_byte_alphabet(t)) t = respell_bytes(t);
  json vocab = json::object();
  for (int64_t i = 0; i < n; ++i) vocab[spelled[i]] = i;

  json merges = json::array();
  if (f.has("tokenizer.ggml.merges")) {
    const json& jm = f.value("tokenizer.ggml.merges");
    if (!jm.is_array()) user_error(file, ": tokenizer.ggml.merges: expected an array of strings");
    for (size_t k = 0; k < jm.size(); ++k) {
      if (!jm[k].is_string()) user_error(file, ": tokenizer.ggml.merges: expected an array of strings");
      const std::string& s = jm[k].get_ref<const std::string&>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
        user_error(file, ": tokenizer.ggml.merges[", k, "]: expected \"a b\", got \"", shorten(s), "\"");
      merges.push_back({s.substr(0, sp), s.substr(sp + 1)});
    }
  } else {
    if (!byte_level && !has_scores)
      user_error(file, ": tokenizer.ggml.scores: missing (a SentencePiece vocabulary without merges needs them)");
    for (auto& [l, r] : derive_merges(tokens, byte_level ? nullptr : &scores)) merges.push_back({l, r});
  }

  json model = {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", nullptr},
                {"continuing_subword_prefix", byte_level ? json("") : json(nullptr)},
                {"end_of_word_suffix", byte_level ? json("") : json(nullptr)},
                {"fuse_unk", !byte_level},
                {"byte_fallback", !byte_level},
                {"ignore_merges", false},
                {"vocab", vocab},
                {"merges", merges}};

  // added tokens: the named specials, CONTROL tokens (special), USER_DEFINED ones (plain)
  std::map<int64_t, json> add;
  for (int64_t i = 0; i < static_cast<int64_t>(types.size()); ++i) {
    if (types[i] == kControl && (!byte_level || in_byte_alphabet(tokens[i]))) add[i] = added(i, tokens[i], true);
    if (types[i] == kUserDefined) add[i] = added(i, spelled[i], false);
  }
  for (const auto& id : {bos, eos, unk, pad})
    if (id && !add.count(*id)) add[*id] = added(*id, tokens[*id], true);
  json added_tokens = json::array();
  for (auto& [id, a] : add) added_tokens.push_back(a);

  std::vector<std::pair<std::string, int64_t>> pre, suf;
  if (add_bos && bos) pre.emplace_back(tokens[*bos], *bos);
  if (add_eos && eos) suf.emplace_back(tokens[*eos], *eos);

  json tj = {{"version", "1.0"},      {"truncation", nullptr},
             {"padding", nullptr},    {"added_tokens", added_tokens},
             {"normalizer", nullptr}, {"post_processor", template_post(pre, suf)},
             {"model", model}};
  const std::string meta = "\xE2\x96\x81";
  if (byte_level) {
    const std::string pre_name = f.find_string("tokenizer.ggml.pre").value_or("");
    if (const char* split = split_of(pre_name)) {
      tj["pre_tokenizer"] = {
          {"type", "Sequence"},
          {"pretokenizers",
           {{{"type", "Split"}, {"pattern", {{"Regex", split}}}, {"behavior", "Isolated"}, {"invert", false}},
            {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}}}};
    } else {
      tj["pre_tokenizer"] = {
          {"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
    }
    tj["decoder"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
  } else {
    tj["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", meta}, {"prepend_scheme", "first"}, {"split", false}};
    tj["decoder"] = {{"type", "Sequence"},
                     {"decoders",
                      {{{"type", "Replace"}, {"pattern", {{"String", meta}}}, {"content", " "}},
                       {{"type", "ByteFallback"}},
                       {{"type", "Fuse"}},
                       {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}};
  }

  json cfg = {{"tokenizer_class", "PreTrainedTokenizerFast"},
              {"add_bos_token", add_bos},
              {"add_eos_token", add_eos},
              {"clean_up_tokenization_spaces", false}};
  cfg["bos_token"] = bos ? json(tokens[*bos]) : json(nullptr);
  cfg["eos_token"] = eos ? json(tokens[*eos]) : json(nullptr);
  cfg["unk_token"] = unk ? json(tokens[*unk]) : json(nullptr);
  cfg["pad_token"] = pad ? json(tokens[*pad]) : json(nullptr);
  if (const auto t = f.find_string("tokenizer.chat_template")) cfg["chat_template"] = *t;
  const auto h = json::error_handler_t::replace;
  return {tj.dump(-1, ' ', false, h), cfg.dump(2, ' ', false, h)};
}

std::unique_ptr<tok::Tokenizer> load_base_tokenizer(const std::filesystem::path& path) {
  if (!io::is_gguf_file(path)) return tok::load_tokenizer(path);
  io::GgufFile f(path);
  const GgufTokenizerFiles files = gguf_tokenizer_files(f);
  // The directory loader reads files: a private directory, removed once the tokenizer is built.
  std::string tmpl = (std::filesystem::temp_directory_path() / "qlora-gguf-tok-XXXXXX").string();
  if (!::mkdtemp(tmpl.data())) user_error(path.string(), ": cannot create a temporary directory for its tokenizer");
  const std::filesystem::path dir(tmpl);
  struct Cleanup {
    std::filesystem::path d;
    ~Cleanup() {
      std::error_code ec;
      std::filesystem::remove_all(d, ec);
    }
  } cleanup{dir};
  fs::write_file_atomic(dir / "tokenizer.json", files.tokenizer_json);
  fs::write_file_atomic(dir / "tokenizer_config.json", files.tokenizer_config_json);
  std::unique_ptr<tok::Tokenizer> t;
  try {
    t = tok::load_tokenizer(dir);
  } catch (const UserError& e) { user_error(path.string(), ": tokenizer.ggml: ", e.what()); }
  // Messages about the chat template name the GGUF key, not the temporary file.
  if (auto* p = dynamic_cast<tok::PipelineTokenizer*>(t.get()); p && !p->chat_template().empty())
    p->chat_template_origin_text() = path.string() + ": tokenizer.chat_template";
  return t;
}

std::string base_tokenizer_digest(const std::filesystem::path& path) {
  Sha256 h;
  auto add = [&h](std::string_view tag, std::string_view bytes) {
    const std::string head = std::string(tag) + "\x1f" + std::to_string(bytes.size()) + "\x1f";
    h.update(head.data(), head.size());
    h.update(bytes.data(), bytes.size());
  };
  if (io::is_gguf_file(path)) {
    io::GgufFile f(path);
    const GgufTokenizerFiles files = gguf_tokenizer_files(f);
    add("gguf tokenizer.json", files.tokenizer_json);
    add("gguf tokenizer_config.json", files.tokenizer_config_json);
    return h.hex_digest();
  }
  for (const auto& file : tok::tokenizer_files(path)) {
    add("name", file.filename().string());
    add("content", fs::read_file(file));
  }
  return h.hex_digest();
}

}  // namespace qlora::model

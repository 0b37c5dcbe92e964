// load_tokenizer: tokenizer.json / tokenizer.model + tokenizer_config.json -> PipelineTokenizer,
// assembled the way transformers 5 assembles AutoTokenizer.from_pretrained(dir).
//
// What transformers does, and so what we do:
//   - tokenizer_config.json names the class. LlamaTokenizer, Qwen2Tokenizer and GPT2Tokenizer
//     keep only the vocabulary, merges and post-processor of tokenizer.json and set their own
//     normalizer, pre-tokenizer, decoder and BPE options; any other class (Llama 3's
//     PreTrainedTokenizerFast) runs tokenizer.json as written.
//   - Added tokens: the config's added_tokens_decoder (tokenizer.json's own list when the config
//     has none), then the named special tokens (bos/eos/unk/pad) not yet known.
//   - The post-processor is tokenizer.json's (the config's add_bos_token/add_eos_token are then
//     ignored); without a tokenizer.json it is "[BOS] $A [EOS]" per those flags.
//   - A directory with only tokenizer.model is a Llama-style SentencePiece tokenizer: Metaspace
//     ("▁" prepended to the first piece, or to every piece between special tokens when `legacy`),
//     the SentencePiece model (run by libsentencepiece), the Llama decoder.
#include <nlohmann/json.hpp>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "trainer/common/error.h"
#include "trainer/common/numbers.h"
#include "trainer/tokenizer/pipeline.h"
#include "trainer/unicode/normalize.h"

namespace qlora::tok {

namespace stdfs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr int64_t kMaxVocabId = (int64_t{1} << 24) - 1;

std::string read_text(const stdfs::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) user_error(p.string(), ": cannot read the file");
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

json read_json(const stdfs::path& p) {
  std::string text = read_text(p);
  try {
    return json::parse(text);
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a number like 1e400
    user_error(p.string(), ": not valid JSON (", json_error_text(e), ")");
  }
}

// Typed accessors that turn a wrong type into one UserError line naming file and key.
struct Ctx {
  std::string file;
  [[noreturn]] void fail(const std::string& key, const std::string& what) const {
    user_error(file, ": ", key, ": ", what);
  }
  const json& obj(const json& j, const std::string& key) const {
    if (!j.is_object()) fail(key, "expected an object");
    return j;
  }
  std::string str(const json& j, const char* field, const std::string& key) const {
    auto it = j.find(field);
    if (it == j.end() || !it->is_string()) fail(key + "." + field, "expected a string");
    return it->get<std::string>();
  }
  std::string str_or(const json& j, const char* field, const std::string& key, std::string dflt) const {
    auto it = j.find(field);
    if (it == j.end() || it->is_null()) return dflt;
    if (!it->is_string()) fail(key + "." + field, "expected a string");
    return it->get<std::string>();
  }
  bool flag(const json& j, const char* field, const std::string& key, bool dflt) const {
    auto it = j.find(field);
    if (it == j.end() || it->is_null()) return dflt;
    if (!it->is_boolean()) fail(key + "." + field, "expected true or false");
    return it->get<bool>();
  }
  int integer(const json& j, const char* field, const std::string& key, int dflt) const {
    auto it = j.find(field);
    if (it == j.end() || it->is_null()) return dflt;
    if (!it->is_number_integer()) fail(key + "." + field, "expected an integer");
    return it->get<int>();
  }
  std::string type(const json& j, const std::string& key) const {
    obj(j, key);
    return str(j, "type", key);
  }
};

// A pattern object: {"String": "..."} or {"Regex": "..."}.
std::pair<std::string, bool> pattern_of(const Ctx& c, const json& j, const std::string& key) {
  if (j.is_object()) {
    if (auto it = j.find("String"); it != j.end() && it->is_string()) return {it->get<std::string>(), false};
    if (auto it = j.find("Regex"); it != j.end() && it->is_string()) return {it->get<std::string>(), true};
  }
  c.fail(key, "expected {\"String\": ...} or {\"Regex\": ...}");
}

PrependScheme scheme_of(const Ctx& c, const json& j, const std::string& key) {
  if (auto it = j.find("prepend_scheme"); it != j.end() && it->is_string()) {
    std::string s = it->get<std::string>();
    if (s == "always") return PrependScheme::Always;
    if (s == "never") return PrependScheme::Never;
    if (s == "first") return PrependScheme::First;
    c.fail(key + ".prepend_scheme", "expected \"always\", \"never\" or \"first\", got \"" + s + "\"");
  }
  // Older files: add_prefix_space true/false.
  return c.flag(j, "add_prefix_space", key, true) ? PrependScheme::Always : PrependScheme::Never;
}

std::unique_ptr<Normalizer> parse_normalizer(const Ctx& c, const json& j, const std::string& key) {
  if (j.is_null()) return nullptr;
  std::string t = c.type(j, key);
  if (t == "Sequence") {
    std::vector<std::unique_ptr<Normalizer>> parts;
    const json& arr = j.value("normalizers", json::array());
    for (size_t k = 0; k < arr.size(); ++k)
      if (auto n = parse_normalizer(c, arr[k], key + ".normalizers[" + std::to_string(k) + "]"))
        parts.push_back(std::move(n));
    return make_sequence_normalizer(std::move(parts));
  }
  if (t == "NFC") return make_nfc_normalizer(unicode::NormalForm::NFC);
  if (t == "NFD") return make_nfc_normalizer(unicode::NormalForm::NFD);
  if (t == "NFKC") return make_nfc_normalizer(unicode::NormalForm::NFKC);
  if (t == "NFKD") return make_nfc_normalizer(unicode::NormalForm::NFKD);
  if (t == "Lowercase") return make_lowercase_normalizer();
  if (t == "Prepend") return make_prepend_normalizer(c.str(j, "prepend", key));
  if (t == "Replace") {
    auto [pat, is_regex] = pattern_of(c, j.value("pattern", json()), key + ".pattern");
    return make_replace_normalizer(pat, is_regex, c.str(j, "content", key));
  }
  if (t == "Strip")
    return make_strip_normalizer(c.flag(j, "strip_left", key, true), c.flag(j, "strip_right", key, true));
  c.fail(key, "normalizer type \"" + t +
                  "\" is not supported (NFC, NFD, NFKC, NFKD, Lowercase, Prepend, "
                  "Replace, Strip, Sequence are)");
}

SplitBehavior behavior_of(const Ctx& c, const json& j, const std::string& key) {
  std::string b = c.str_or(j, "behavior", key, "Isolated");
  if (b == "Removed") return SplitBehavior::Removed;
  if (b == "Isolated") return SplitBehavior::Isolated;
  if (b == "MergedWithPrevious") return SplitBehavior::MergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::MergedWithNext;
  if (b == "Contiguous") return SplitBehavior::Contiguous;
  c.fail(key + ".behavior", "unknown split behavior \"" + b + "\"");
}

std::unique_ptr<PreTokenizer> parse_pre_tokenizer(const Ctx& c, const json& j, const std::string& key) {
  if (j.is_null()) return nullptr;
  std::string t = c.type(j, key);
  if (t == "Sequence") {
    std::vector<std::unique_ptr<PreTokenizer>> parts;
    const json& arr = j.value("pretokenizers", json::array());
    for (size_t k = 0; k < arr.size(); ++k)
      if (auto p = parse_pre_tokenizer(c, arr[k], key + ".pretokenizers[" + std::to_string(k) + "]"))
        parts.push_back(std::move(p));
    return make_sequence_pre_tokenizer(std::move(parts));
  }
  if (t == "ByteLevel")
    return make_byte_level_pre_tokenizer(c.flag(j, "add_prefix_space", key, true), c.flag(j, "use_regex", key, true));
  if (t == "Split") {
    auto [pat, is_regex] = pattern_of(c, j.value("pattern", json()), key + ".pattern");
    return make_split_pre_tokenizer(pat, is_regex, behavior_of(c, j, key), c.flag(j, "invert", key, false));
  }
  if (t == "Metaspace")
    return make_metaspace_pre_tokenizer(c.str_or(j, "replacement", key, "\xE2\x96\x81"), scheme_of(c, j, key),
                                        c.flag(j, "split", key, true));
  if (t == "Digits") return make_digits_pre_tokenizer(c.flag(j, "individual_digits", key, false));
  if (t == "Whitespace") return make_whitespace_pre_tokenizer(false);
  if (t == "WhitespaceSplit") return make_whitespace_pre_tokenizer(true);
  c.fail(key, "pre_tokenizer type \"" + t +
                  "\" is not supported (ByteLevel, Split, Metaspace, Digits, "
                  "Whitespace, WhitespaceSplit, Sequence are)");
}

std::unique_ptr<Decoder> parse_decoder(const Ctx& c, const json& j, const std::string& key) {
  if (j.is_null()) return nullptr;
  std::string t = c.type(j, key);
  if (t == "Sequence") {
    std::vector<std::unique_ptr<Decoder>> parts;
    const json& arr = j.value("decoders", json::array());
    for (size_t k = 0; k < arr.size(); ++k)
      if (auto d = parse_decoder(c, arr[k], key + ".decoders[" + std::to_string(k) + "]"))
        parts.push_back(std::move(d));
    return make_sequence_decoder(std::move(parts));
  }
  if (t == "ByteLevel") return make_byte_level_decoder();
  if (t == "ByteFallback") return make_byte_fallback_decoder();
  if (t == "Fuse") return make_fuse_decoder();
  if (t == "Strip")
    return make_strip_decoder(c.str(j, "content", key), c.integer(j, "start", key, 0), c.integer(j, "stop", key, 0));
  if (t == "Metaspace")
    return make_metaspace_decoder(c.str_or(j, "replacement", key, "\xE2\x96\x81"), scheme_of(c, j, key));
  if (t == "Replace") {
    auto [pat, is_regex] = pattern_of(c, j.value("pattern", json()), key + ".pattern");
    if (is_regex) c.fail(key + ".pattern", "Replace decoders with a Regex pattern are not supported");
    return make_replace_decoder(pat, c.str(j, "content", key));
  }
  c.fail(key, "decoder type \"" + t +
                  "\" is not supported (ByteLevel, ByteFallback, Fuse, Strip, Metaspace, "
                  "Replace, Sequence are)");
}

// Post-processor of a single sequence as (prefix ids, suffix ids).
void parse_post_processor(const Ctx& c, const json& j, const std::string& key, std::vector<int32_t>& pre,
                          std::vector<int32_t>& suf) {
  if (j.is_null()) return;
  std::string t = c.type(j, key);
  if (t == "Sequence") {
    const json& arr = j.value("processors", json::array());
    for (size_t k = 0; k < arr.size(); ++k) {
      std::vector<int32_t> p2, s2;
      parse_post_processor(c, arr[k], key + ".processors[" + std::to_string(k) + "]", p2, s2);
      pre.insert(pre.begin(), p2.begin(), p2.end());  // later processors wrap earlier ones
      suf.insert(suf.end(), s2.begin(), s2.end());
    }
    return;
  }
  if (t == "ByteLevel") return;  // offsets only
  if (t == "TemplateProcessing") {
    const json& single = j.value("single", json::array());
    const json& specials = j.value("special_tokens", json::object());
    bool seen_a = false;
    for (size_t k = 0; k < single.size(); ++k) {
      const json& item = single[k];
      std::string ik = key + ".single[" + std::to_string(k) + "]";
      if (item.contains("Sequence")) {
        seen_a = true;
        continue;
      }
      if (!item.contains("SpecialToken")) c.fail(ik, "expected a Sequence or SpecialToken item");
      std::string name = c.str(item["SpecialToken"], "id", ik + ".SpecialToken");
      auto it = specials.find(name);
      if (it == specials.end() || !it->contains("ids") || !(*it)["ids"].is_array())
        c.fail(key + ".special_tokens", "no ids for \"" + name + "\"");
      for (const auto& id : (*it)["ids"]) (seen_a ? suf : pre).push_back(id.get<int32_t>());
    }
    return;
  }
  if (t == "RobertaProcessing" || t == "BertProcessing") {
    // {"cls": ["<s>", 0], "sep": ["</s>", 2]}: single is [CLS] $A [SEP]
    auto id_of = [&](const char* f) {
      const json& v = j.value(f, json());
      if (!v.is_array() || v.size() != 2 || !v[1].is_number_integer()) c.fail(key + "." + f, "expected [token, id]");
      return v[1].get<int32_t>();
    };
    pre.push_back(id_of("cls"));
    suf.push_back(id_of("sep"));
    return;
  }
  c.fail(key, "post_processor type \"" + t +
                  "\" is not supported (TemplateProcessing, ByteLevel, "
                  "RobertaProcessing, BertProcessing, Sequence are)");
}

AddedToken added_token_of(const Ctx& c, const json& j, const std::string& key, int32_t id) {
  AddedToken t;
  t.id = id;
  if (j.is_string()) {  // a bare string in tokenizer_config.json is a special token
    t.content = j.get<std::string>();
    t.special = true;
    t.normalized = false;
    return t;
  }
  c.obj(j, key);
  t.content = c.str(j, "content", key);
  t.special = c.flag(j, "special", key, false);
  t.single_word = c.flag(j, "single_word", key, false);
  t.lstrip = c.flag(j, "lstrip", key, false);
  t.rstrip = c.flag(j, "rstrip", key, false);
  t.normalized = c.flag(j, "normalized", key, !t.special);
  return t;
}

// ---- tokenizer_config.json ----------------------------------------------------------------------

struct TokenizerConfig {
  std::string tokenizer_class;  // without a trailing "Fast"
  std::optional<bool> add_bos_token, add_eos_token, add_prefix_space, legacy;
  // Named special tokens: unset = key absent (class default applies); nullopt inside = null.
  std::optional<std::optional<AddedToken>> bos, eos, unk, pad;
  bool has_added_tokens_decoder = false;
  std::vector<AddedToken> added_tokens_decoder, extra_special;
  std::string chat_template;
  std::map<std::string, std::string> named_templates;
  std::string chat_template_origin;  // the file (and key) the templates came from
};

TokenizerConfig read_config(const stdfs::path& dir) {
  TokenizerConfig cfg;
  const stdfs::path file = dir / "tokenizer_config.json";
  if (stdfs::exists(file)) {
    Ctx c{file.string()};
    json j = read_json(file);
    c.obj(j, "(top level)");
    cfg.tokenizer_class = c.str_or(j, "tokenizer_class", "", "");
    if (cfg.tokenizer_class.ends_with("Fast")) cfg.tokenizer_class.resize(cfg.tokenizer_class.size() - 4);
    auto opt_flag = [&](const char* k, std::optional<bool>& dst) {
      if (j.contains(k) && !j[k].is_null()) dst = c.flag(j, k, "", false);
    };
    opt_flag("add_bos_token", cfg.add_bos_token);
    opt_flag("add_eos_token", cfg.add_eos_token);
    opt_flag("add_prefix_space", cfg.add_prefix_space);
    opt_flag("legacy", cfg.legacy);
    auto special = [&](const char* k, std::optional<std::optional<AddedToken>>& dst) {
      if (!j.contains(k)) return;
      if (j[k].is_null()) {
        dst = std::optional<AddedToken>();
        return;
      }
      AddedToken t = added_token_of(c, j[k], k, -1);
      t.special = true;
      dst = t;
    };
    special("bos_token", cfg.bos);
    special("eos_token", cfg.eos);
    special("unk_token", cfg.unk);
    special("pad_token", cfg.pad);
    if (auto it = j.find("added_tokens_decoder"); it != j.end() && it->is_object()) {
      cfg.has_added_tokens_decoder = true;
      for (auto& [id_str, tok] : it->items()) {
        size_t used = 0;  // std::stoi's forms: digits first, then anything
        const std::optional<int64_t> id = parse_c_int(id_str, &used);
        if (!id || *id < INT32_MIN || *id > INT32_MAX)
          c.fail("added_tokens_decoder", "key \"" + id_str + "\" is not an integer id");
        cfg.added_tokens_decoder.push_back(
            added_token_of(c, tok, "added_tokens_decoder." + id_str, static_cast<int32_t>(*id)));
      }
      std::sort(cfg.added_tokens_decoder.begin(), cfg.added_tokens_decoder.end(),
                [](const AddedToken& a, const AddedToken& b) { return a.id < b.id; });
    }
    for (const char* k : {"additional_special_tokens", "extra_special_tokens"}) {
      if (auto it = j.find(k); it != j.end() && it->is_array())
        for (size_t n = 0; n < it->size(); ++n) {
          AddedToken t = added_token_of(c, (*it)[n], std::string(k) + "[" + std::to_string(n) + "]", -1);
          t.special = true;
          cfg.extra_special.push_back(t);
        }
    }
    if (auto it = j.find("chat_template"); it != j.end() && !it->is_null()) {
      cfg.chat_template_origin = c.file + ": chat_template";
      if (it->is_string()) {
        cfg.chat_template = it->get<std::string>();
      } else if (it->is_array()) {
        for (size_t n = 0; n < it->size(); ++n) {
          std::string k = "chat_template[" + std::to_string(n) + "]";
          const json& e = (*it)[n];
          c.obj(e, k);
          cfg.named_templates[c.str(e, "name", k)] = c.str(e, "template", k);
        }
        if (auto d = cfg.named_templates.find("default"); d != cfg.named_templates.end()) cfg.chat_template = d->second;
      } else {
        c.fail("chat_template", "expected a string or a list of {name, template}");
      }
    }
  }
  // Old checkpoints keep the named special tokens in special_tokens_map.json.
  const stdfs::path stm = dir / "special_tokens_map.json";
  if (!cfg.has_added_tokens_decoder && stdfs::exists(stm)) {
    Ctx c{stm.string()};
    json j = read_json(stm);
    c.obj(j, "(top level)");
    for (auto [k, dst] : {std::pair{"bos_token", &cfg.bos},
                          {"eos_token", &cfg.eos},
                          {"unk_token", &cfg.unk},
                          {"pad_token", &cfg.pad}}) {
      if (!j.contains(k) || j[k].is_null()) continue;
      AddedToken t = added_token_of(c, j[k], k, -1);
      t.special = true;
      *dst = t;
    }
  }
  // Template files win over the config: chat_template.jinja is "default", and
  // additional_chat_templates/<name>.jinja are named ones (then all are named templates).
  std::map<std::string, std::string> files;
  if (stdfs::exists(dir / "chat_template.jinja")) files["default"] = read_text(dir / "chat_template.jinja");
  std::error_code ec;
  if (stdfs::is_directory(dir / "additional_chat_templates", ec))
    for (const auto& e : stdfs::directory_iterator(dir / "additional_chat_templates"))
      if (e.path().extension() == ".jinja") files[e.path().stem().string()] = read_text(e.path());
  if (!files.empty())
    cfg.chat_template_origin =
        (files.count("default") ? dir / "chat_template.jinja" : dir / "additional_chat_templates").string();
  if (files.size() == 1 && files.count("default")) {
    cfg.chat_template = files["default"];
    cfg.named_templates.clear();
  } else if (!files.empty()) {
    cfg.named_templates = files;
    cfg.chat_template = files.count("default") ? files["default"] : "";
  }
  return cfg;
}

// Defaults of the transformers classes for special tokens the config leaves out.
struct ClassDefaults {
  std::optional<std::string> bos, eos, unk, pad;
};
ClassDefaults defaults_of(const std::string& cls) {
  if (cls == "LlamaTokenizer") return {"<s>", "</s>", "<unk>", std::nullopt};
  if (cls == "Qwen2Tokenizer") return {std::nullopt, "<|endoftext|>", "<|endoftext|>", "<|endoftext|>"};
  if (cls == "GPT2Tokenizer") return {"<|endoftext|>", "<|endoftext|>", "<|endoftext|>", std::nullopt};
  return {};
}

// Resolves one named special token: config value, else the class default.
std::optional<AddedToken> resolve_special(const std::optional<std::optional<AddedToken>>& cfg_value,
                                          const std::optional<std::string>& dflt) {
  if (cfg_value) return *cfg_value;
  if (!dflt) return std::nullopt;
  AddedToken t;
  t.content = *dflt;
  t.special = true;
  t.normalized = false;
  return t;
}

// Adds the config's added tokens and special tokens to the tokenizer, fills SpecialTokens and the
// chat template, and sets the post-processor.
void finish_with_config(PipelineTokenizer& tk, const TokenizerConfig& cfg, const std::string& cls,
                        std::unique_ptr<PostProcessor> file_post, bool has_tokenizer_json) {
  for (const auto& t : cfg.added_tokens_decoder)
    if (!tk.added.by_content(t.content)) tk.added.add(t);
  const ClassDefaults d = defaults_of(cls);
  std::optional<AddedToken> bos = resolve_special(cfg.bos, d.bos), eos = resolve_special(cfg.eos, d.eos),
                            unk = resolve_special(cfg.unk, d.unk), pad = resolve_special(cfg.pad, d.pad);
  std::vector<AddedToken> named;
  for (const auto* t : {&bos, &eos, &unk, &pad})
    if (*t) named.push_back(**t);
  named.insert(named.end(), cfg.extra_special.begin(), cfg.extra_special.end());
  for (AddedToken t : named) {
    if (tk.added.by_content(t.content)) continue;
    if (auto id = tk.model->token_to_id(t.content))
      t.id = *id;
    else
      t.id = tk.vocab_size();  // a new token after everything known, as add_tokens does
    tk.added.add(t);
  }

  SpecialTokens& sp = tk.special_tokens();
  auto fill = [&](const std::optional<AddedToken>& t, std::string& name, std::optional<int32_t>& id) {
    if (!t) return;
    name = t->content;
    id = tk.token_to_id(name);
  };
  fill(bos, sp.bos_token, sp.bos_id);
  fill(eos, sp.eos_token, sp.eos_id);
  fill(unk, sp.unk_token, sp.unk_id);
  fill(pad, sp.pad_token, sp.pad_id);

  // With a tokenizer.json, transformers drops the config's add_bos_token/add_eos_token and keeps
  // the file's post-processor; without one (tokenizer.model, or a file without post-processor)
  // it builds "[BOS] $A [EOS]" from those flags (TokenizersBackend.update_post_processor).
  if (!file_post) {
    std::vector<int32_t> pre, suf;
    if (!has_tokenizer_json && cfg.add_bos_token.value_or(false) && sp.bos_id) pre.push_back(*sp.bos_id);
    if (!has_tokenizer_json && cfg.add_eos_token.value_or(false) && sp.eos_id) suf.push_back(*sp.eos_id);
    tk.post_processor = make_template_post_processor(std::move(pre), std::move(suf));
  } else {
    tk.post_processor = std::move(file_post);
  }
  const auto pre = tk.post_processor->prefix(), suf = tk.post_processor->suffix();
  sp.add_bos_token = sp.bos_id && std::find(pre.begin(), pre.end(), *sp.bos_id) != pre.end();
  sp.add_eos_token = sp.eos_id && std::find(suf.begin(), suf.end(), *sp.eos_id) != suf.end();

  tk.chat_template_text() = cfg.chat_template;
  tk.chat_template_origin_text() = cfg.chat_template_origin;
  tk.named_templates() = cfg.named_templates;
  tk.finish();
}

// The Llama stages transformers' LlamaTokenizer sets (tokenization_llama.py).
void set_llama_stages(PipelineTokenizer& tk, const TokenizerConfig& cfg) {
  const bool add_prefix_space = cfg.add_prefix_space.value_or(true);
  PrependScheme scheme = !add_prefix_space            ? PrependScheme::Never
                         : cfg.legacy.value_or(false) ? PrependScheme::Always
                                                      : PrependScheme::First;
  const std::string meta = "\xE2\x96\x81";  // ▁
  tk.normalizer.reset();
  tk.pre_tokenizer = make_metaspace_pre_tokenizer(meta, scheme, /*split=*/false);
  std::vector<std::unique_ptr<Decoder>> dec;
  dec.push_back(make_replace_decoder(meta, " "));
  dec.push_back(make_byte_fallback_decoder());
  dec.push_back(make_fuse_decoder());
  if (add_prefix_space) dec.push_back(make_strip_decoder(" ", 1, 0));
  tk.decoder = make_sequence_decoder(std::move(dec));
}

// Qwen2Tokenizer's split pattern (tokenization_qwen2.py): single digits, unlike Llama 3's 1-3.
const char* kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

std::unique_ptr<Tokenizer> load_tokenizer_json(const stdfs::path& file, const TokenizerConfig& cfg) {
  Ctx c{file.string()};
  json j = read_json(file);
  c.obj(j, "(top level)");
  if (!j.contains("model")) c.fail("model", "missing");
  const json& m = j["model"];
  std::string mtype = c.str_or(m, "type", "model", "BPE");
  if (mtype != "BPE") c.fail("model.type", "\"" + mtype + "\" is not supported (only BPE models are)");

  StringMap<int32_t> vocab;
  if (!m.contains("vocab") || !m["vocab"].is_object()) c.fail("model.vocab", "expected an object {token: id}");
  vocab.reserve(m["vocab"].size());
  for (auto& [tok, id] : m["vocab"].items()) {
    if (!id.is_number_integer()) c.fail("model.vocab", "id of \"" + tok + "\" is not an integer");
    // The model keeps a table indexed by id: ids past 2^24 (vocabularies are far smaller) would
    // make it gigabytes large.
    if (id.get<int64_t>() < 0 || id.get<int64_t>() > kMaxVocabId)
      c.fail("model.vocab", "id of \"" + tok + "\" is outside 0.." + std::to_string(kMaxVocabId));
    vocab.emplace(tok, id.get<int32_t>());
  }
  std::vector<std::pair<std::string, std::string>> merges;
  if (m.contains("merges")) {
    const json& mj = m["merges"];
    if (!mj.is_array()) c.fail("model.merges", "expected a list");
    merges.reserve(mj.size());
    for (size_t k = 0; k < mj.size(); ++k) {
      const json& e = mj[k];
      if (e.is_string()) {  // "a b"
        const std::string& s = e.get_ref<const std::string&>();
        size_t sp = s.find(' ');
        if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
          c.fail("model.merges[" + std::to_string(k) + "]", "expected \"a b\", got \"" + s + "\"");
        merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
      } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {  // ["a", "b"]
        merges.emplace_back(e[0].get<std::string>(), e[1].get<std::string>());
      } else {
        c.fail("model.merges[" + std::to_string(k) + "]", "expected \"a b\" or [\"a\", \"b\"]");
      }
    }
  }

  const std::string& cls = cfg.tokenizer_class;
  const bool llama = cls == "LlamaTokenizer", qwen2 = cls == "Qwen2Tokenizer", gpt2 = cls == "GPT2Tokenizer";
  BpeOptions opt;
  if (llama) {
    opt.fuse_unk = opt.byte_fallback = true;
  } else if (!qwen2 && !gpt2) {
    if (m.contains("unk_token") && m["unk_token"].is_string()) opt.unk_token = m["unk_token"].get<std::string>();
    opt.continuing_subword_prefix = c.str_or(m, "continuing_subword_prefix", "model", "");
    opt.end_of_word_suffix = c.str_or(m, "end_of_word_suffix", "model", "");
    opt.fuse_unk = c.flag(m, "fuse_unk", "model", false);
    opt.byte_fallback = c.flag(m, "byte_fallback", "model", false);
    opt.ignore_merges = c.flag(m, "ignore_merges", "model", false);
  }

  auto tk = std::make_unique<PipelineTokenizer>();
  try {
    tk->model = std::make_unique<BpeModel>(std::move(vocab), merges, opt);
  } catch (const UserError& e) { user_error(file.string(), ": ", e.what()); }
  std::unique_ptr<PostProcessor> file_post;
  {
    std::vector<int32_t> pre, suf;
    const json& pj = j.value("post_processor", json());
    parse_post_processor(c, pj, "post_processor", pre, suf);
    if (!pj.is_null()) file_post = make_template_post_processor(std::move(pre), std::move(suf));
  }
  if (llama) {
    set_llama_stages(*tk, cfg);
  } else if (qwen2) {
    tk->normalizer = make_nfc_normalizer(unicode::NormalForm::NFC);
    std::vector<std::unique_ptr<PreTokenizer>> parts;
    parts.push_back(make_split_pre_tokenizer(kQwen2Pattern, true, SplitBehavior::Isolated, false));
    parts.push_back(make_byte_level_pre_tokenizer(cfg.add_prefix_space.value_or(false), false));
    tk->pre_tokenizer = make_sequence_pre_tokenizer(std::move(parts));
    tk->decoder = make_byte_level_decoder();
  } else if (gpt2) {
    tk->pre_tokenizer = make_byte_level_pre_tokenizer(cfg.add_prefix_space.value_or(false), true);
    tk->decoder = make_byte_level_decoder();
  } else {
    tk->normalizer = parse_normalizer(c, j.value("normalizer", json()), "normalizer");
    tk->pre_tokenizer = parse_pre_tokenizer(c, j.value("pre_tokenizer", json()), "pre_tokenizer");
    tk->decoder = parse_decoder(c, j.value("decoder", json()), "decoder");
  }

  // Added tokens: the rebuilt classes take them from the config when it lists them.
  const bool from_config = (llama || qwen2 || gpt2) && cfg.has_added_tokens_decoder;
  if (!from_config && j.contains("added_tokens")) {
    const json& at = j["added_tokens"];
    if (!at.is_array()) c.fail("added_tokens", "expected a list");
    for (size_t k = 0; k < at.size(); ++k) {
      std::string key = "added_tokens[" + std::to_string(k) + "]";
      c.obj(at[k], key);
      if (!at[k].contains("id") || !at[k]["id"].is_number_integer()) c.fail(key + ".id", "expected an integer");
      tk->added.add(added_token_of(c, at[k], key, at[k]["id"].get<int32_t>()));
    }
  }
  finish_with_config(*tk, cfg, cls, std::move(file_post), /*has_tokenizer_json=*/true);
  return tk;
}

std::unique_ptr<Tokenizer> load_sentencepiece(const stdfs::path& file, const TokenizerConfig& cfg) {
  auto tk = std::make_unique<PipelineTokenizer>();
  auto model = std::make_unique<SentencePieceModel>(file.string());
  // Control and user-defined pieces are added tokens in transformers (SentencePieceExtractor).
  const auto& pieces = model->spec().pieces;
  for (size_t i = 0; i < pieces.size(); ++i) {
    if (pieces[i].type != 3 && pieces[i].type != 4) continue;
    AddedToken t;
    t.id = int32_t(i);
    t.content = pieces[i].piece;
    t.normalized = false;
    t.special = pieces[i].type == 3;
    tk->added.add(t);
  }
  tk->model = std::move(model);
  set_llama_stages(*tk, cfg);
  finish_with_config(*tk, cfg, "LlamaTokenizer", nullptr, /*has_tokenizer_json=*/false);
  return tk;
}

}  // namespace

std::vector<std::vector<int32_t>> Tokenizer::encode_batch(const std::vector<std::string>& texts,
                                                          bool add_special_tokens) const {
  std::vector<std::vector<int32_t>> out(texts.size());
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t i = 0; i < int64_t(texts.size()); ++i) out[i] = encode(texts[i], add_special_tokens);
  return out;
}

std::vector<stdfs::path> tokenizer_files(const stdfs::path& path) {
  std::error_code ec;
  const bool is_dir = stdfs::is_directory(path, ec);
  const stdfs::path dir = is_dir ? path : path.parent_path().empty() ? stdfs::path(".") : path.parent_path();
  std::vector<stdfs::path> out;
  auto add = [&](const stdfs::path& p) {
    if (stdfs::is_regular_file(p, ec)) out.push_back(p);
  };
  if (!is_dir)
    add(path);
  else if (stdfs::exists(dir / "tokenizer.json"))
    add(dir / "tokenizer.json");
  else
    add(dir / "tokenizer.model");
  for (const char* name : {"tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"}) add(dir / name);
  std::vector<stdfs::path> extra;
  if (stdfs::is_directory(dir / "additional_chat_templates", ec))
    for (const auto& e : stdfs::directory_iterator(dir / "additional_chat_templates", ec))
      if (e.path().extension() == ".jinja") extra.push_back(e.path());
  std::sort(extra.begin(), extra.end());
  for (const auto& p : extra) add(p);
  return out;
}

std::unique_ptr<Tokenizer> load_tokenizer(const stdfs::path& path) {
  std::error_code ec;
  if (stdfs::is_directory(path, ec)) {
    TokenizerConfig cfg = read_config(path);
    if (stdfs::exists(path / "tokenizer.json")) return load_tokenizer_json(path / "tokenizer.json", cfg);
    if (stdfs::exists(path / "tokenizer.model")) return load_sentencepiece(path / "tokenizer.model", cfg);
    user_error(path.string(), ": no tokenizer.json or tokenizer.model in this directory");
  }
  if (!stdfs::is_regular_file(path, ec)) user_error(path.string(), ": no such file or directory");
  stdfs::path dir = path.parent_path().empty() ? stdfs::path(".") : path.parent_path();
  TokenizerConfig cfg = read_config(dir);
  if (path.extension() == ".json") return load_tokenizer_json(path, cfg);
  if (path.extension() == ".model") return load_sentencepiece(path, cfg);
  user_error(path.string(), ": expected a tokenizer.json, a SentencePiece .model file, or a model directory");
}

}  // namespace qlora::tok

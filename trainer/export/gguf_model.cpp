#include "trainer/export/gguf_model.h"

#include <nlohmann/json.hpp>

#include <cstdio>
#include <map>

#include "trainer/common/error.h"
#include "trainer/common/fs.h"
#include "trainer/io/gguf_reader.h"
#include "trainer/model/gguf_tokenizer.h"
#include "trainer/tokenizer/model.h"
#include "trainer/tokenizer/tokenizer.h"

namespace qlora::exporter {

namespace stdfs = std::filesystem;
using json = nlohmann::json;

namespace {
// llama.cpp's token types (gguf TokenType).
enum : int32_t { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

// The split patterns tokenizer.ggml.pre names (Llama 3 and Qwen2 tokenizer.json spell them so).
const char* kLlama3Split =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
const char* kQwen2Split =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

struct Vocab {
  std::string model;  // llama | gpt2
  std::string pre;    // gpt2: llama.cpp's pre-tokenizer name
  std::vector<std::string> tokens;
  std::vector<float> scores;  // llama
  std::vector<int32_t> types;
  std::vector<std::string> merges;
};

bool is_byte_level(const json& pre) {
  if (!pre.is_object()) return false;
  if (pre.value("type", "") == "ByteLevel") return true;
  if (pre.value("type", "") == "Sequence" && pre.contains("pretokenizers"))
    for (const json& p : pre["pretokenizers"])
      if (is_byte_level(p)) return true;
  return false;
}

// llama.cpp's name for a byte-level pre-tokenizer; UserError naming the key otherwise.
std::string pre_name(const std::string& file, const json& pre) {
  const auto fail = [&] {
    user_error(file, ": pre_tokenizer: not a split llama.cpp names (expected GPT-2's ByteLevel with use_regex, or a ",
               "Split with Llama 3's or Qwen2's pattern followed by ByteLevel without it); this tokenizer cannot be ",
               "written to GGUF");
  };
  if (pre.value("type", "") == "ByteLevel") {
    if (!pre.value("use_regex", true) || pre.value("add_prefix_space", false)) fail();
    return "gpt-2";
  }
  if (pre.value("type", "") != "Sequence" || !pre.contains("pretokenizers") || pre["pretokenizers"].size() != 2) fail();
  const json& split = pre["pretokenizers"][0];
  const json& bl = pre["pretokenizers"][1];
  if (split.value("type", "") != "Split" || bl.value("type", "") != "ByteLevel" || bl.value("use_regex", true) ||
      bl.value("add_prefix_space", false) || split.value("behavior", "") != "Isolated" || split.value("invert", false))
    fail();
  const std::string pat = split.contains("pattern") && split["pattern"].contains("Regex")
                              ? split["pattern"]["Regex"].get<std::string>()
                              : std::string();
  if (pat == kLlama3Split) return "llama-bpe";
  if (pat == kQwen2Split) return "qwen2";
  fail();
  return {};
}

Vocab vocab_of_tokenizer_json(const stdfs::path& file, const std::string& tokenizer_class) {
  const std::string f = file.string();
  json j;
  try {
    j = json::parse(fs::read_file(file));
  } catch (const json::exception&) { user_error(f, ": not valid JSON"); }
  const json& m = j.value("model", json::object());
  if (m.value("type", "BPE") != "BPE")
    user_error(f, ": model.type: \"", m.value("type", ""), "\" cannot be written to GGUF (only BPE models can)");
  std::map<int64_t, std::pair<std::string, int32_t>> by_id;  // id -> (token, type)
  const json vocab = m.value("vocab", json::object());
  if (!vocab.is_object()) user_error(f, ": model.vocab: expected an object {token: id}");
  for (const auto& [t, id] : vocab.items()) by_id[id.get<int64_t>()] = {t, kNormal};
  for (const json& a : j.value("added_tokens", json::array()))
    by_id[a["id"].get<int64_t>()] = {a["content"].get<std::string>(),
                                     a.value("special", false) ? kControl : kUserDefined};
  Vocab v;
  const bool spm = tokenizer_class == "LlamaTokenizer" || m.value("byte_fallback", false);
  const bool byte_level = !spm && (tokenizer_class == "GPT2Tokenizer" || tokenizer_class == "Qwen2Tokenizer" ||
                                   is_byte_level(j.value("pre_tokenizer", json())));
  if (!spm && !byte_level)
    user_error(f, ": model: neither byte-level BPE nor SentencePiece-style BPE with byte_fallback; it cannot be ",
               "written to GGUF");
  v.model = spm ? "llama" : "gpt2";
  if (byte_level) {
    v.pre = tokenizer_class == "Qwen2Tokenizer"  ? "qwen2"
            : tokenizer_class == "GPT2Tokenizer" ? "gpt-2"
                                                 : pre_name(f, j.value("pre_tokenizer", json()));
    const json& norm = j.value("normalizer", json());
    const bool nfc = norm.is_object() && norm.value("type", "") == "NFC";
    if (!norm.is_null() && !(v.pre == "qwen2" && nfc))
      user_error(f, ": normalizer: a byte-level tokenizer with a normalizer cannot be written to GGUF");
    if (nfc || tokenizer_class == "Qwen2Tokenizer")
      std::fprintf(stderr,
                   "qlora: warning: %s: GGUF stores no normalizer; readers of the file tokenize text that is not in "
                   "Unicode NFC differently from this tokenizer (which composes it first)\n",
                   f.c_str());
  }
  const int64_t n = by_id.empty() ? 0 : by_id.rbegin()->first + 1;
  const std::string unk = m.value("unk_token", json()).is_string() ? m["unk_token"].get<std::string>() : "";
  for (int64_t i = 0; i < n; ++i) {
    const auto it = by_id.find(i);
    if (it == by_id.end()) {
      v.tokens.push_back("[PAD" + std::to_string(i) + "]");
      v.types.push_back(kUnused);
    } else {
      v.tokens.push_back(it->second.first);
      int32_t t = it->second.second;
      if (spm && t == kNormal && it->second.first.size() == 6 && it->second.first.starts_with("<0x") &&
          it->second.first.ends_with(">"))
        t = kByte;
      if (spm && it->second.first == unk) t = kUnknown;
      v.types.push_back(t);
    }
    // SentencePiece scores order the merges llama.cpp makes: earlier ids first, as the merges list
    // of a converted SentencePiece model is ordered.
    if (spm) v.scores.push_back(-static_cast<float>(i));
  }
  for (const json& e : m.value("merges", json::array())) {
    if (e.is_string())
      v.merges.push_back(e.get<std::string>());
    else if (e.is_array() && e.size() == 2)
      v.merges.push_back(e[0].get<std::string>() + " " + e[1].get<std::string>());
    else
      user_error(f, ": model.merges: expected \"a b\" or [\"a\", \"b\"] entries");
  }
  return v;
}

Vocab vocab_of_sentencepiece(const stdfs::path& file) {
  const tok::SentencePieceModel sp(file.string());
  if (sp.spec().model_type != 2)
    user_error(file.string(), ": model_type: only a SentencePiece BPE model can be written to GGUF");
  Vocab v;
  v.model = "llama";
  for (const auto& p : sp.spec().pieces) {
    v.tokens.push_back(p.piece);
    v.scores.push_back(p.score);
    v.types.push_back(p.type);
  }
  return v;
}

// The tokenizer.* keys of a GGUF file, re-encoded with the types llama.cpp gives them.
void copy_gguf_tokenizer(io::GgufMetadata& m, const stdfs::path& path) {
  const io::GgufFile f(path);
  for (const std::string& k : f.keys()) {
    if (!k.starts_with("tokenizer.")) continue;
    const json& v = f.value(k);
    if (v.is_string()) {
      m.add_string(k, v.get<std::string>());
    } else if (v.is_boolean()) {
      m.add_bool(k, v.get<bool>());
    } else if (v.is_number_integer()) {
      m.add_u32(k, static_cast<uint32_t>(v.get<int64_t>()));
    } else if (v.is_number_float()) {
      m.add_f32(k, v.get<float>());
    } else if (v.is_array() && (v.empty() || v[0].is_string())) {
      m.add_strings(k, v.get<std::vector<std::string>>());
    } else if (v.is_array() && k == "tokenizer.ggml.scores") {
      m.add_f32s(k, v.get<std::vector<float>>());
    } else if (v.is_array() && v[0].is_number_integer()) {
      m.add_i32s(k, v.get<std::vector<int32_t>>());
    } else {
      user_error(path.string(), ": ", k, ": a value of a type the GGUF export does not copy");
    }
  }
}
}  // namespace

std::string gguf_architecture(const model::ModelConfig& mc) {
  if (mc.model_type == "llama" || mc.model_type == "mistral") return "llama";
  if (mc.model_type == "qwen2" || mc.model_type == "qwen3") return mc.model_type;
  user_error("--format gguf: ", mc.path.string(), ": model_type: \"", mc.model_type,
             "\" cannot be exported as a GGUF model (supported: llama, mistral, qwen2, qwen3); export --format merged "
             "and convert it with llama.cpp's convert_hf_to_gguf.py");
}

io::GgufOutType parse_gguf_outtype(const std::string& s, const std::string& what) {
  if (s == "f16") return io::GgufOutType::F16;
  if (s == "bf16") return io::GgufOutType::BF16;
  if (s == "q8_0") return io::GgufOutType::Q8_0;
  if (s == "f32") return io::GgufOutType::F32;
  user_error(what, ": expected f16, bf16, q8_0 or f32, got \"", s, "\"");
}

void add_gguf_model_metadata(io::GgufMetadata& m, const model::ModelConfig& mc, const std::string& arch,
                             const std::string& name, io::GgufOutType outtype) {
  const std::string k = arch + ".";
  m.add_string("general.architecture", arch);
  m.add_string("general.type", "model");
  m.add_string("general.name", name);
  m.add_u32("general.quantization_version", 2);
  // llama_ftype: ALL_F32, MOSTLY_F16, MOSTLY_Q8_0, MOSTLY_BF16
  const uint32_t ftype = outtype == io::GgufOutType::F32    ? 0
                         : outtype == io::GgufOutType::F16  ? 1
                         : outtype == io::GgufOutType::Q8_0 ? 7
                                                            : 32;
  m.add_u32("general.file_type", ftype);
  m.add_u32(k + "vocab_size", static_cast<uint32_t>(mc.vocab_size));
  m.add_u32(k + "context_length", static_cast<uint32_t>(mc.max_position_embeddings));
  m.add_u32(k + "embedding_length", static_cast<uint32_t>(mc.hidden_size));
  m.add_u32(k + "block_count", static_cast<uint32_t>(mc.num_hidden_layers));
  m.add_u32(k + "feed_forward_length", static_cast<uint32_t>(mc.intermediate_size));
  m.add_u32(k + "attention.head_count", static_cast<uint32_t>(mc.num_attention_heads));
  m.add_u32(k + "attention.head_count_kv", static_cast<uint32_t>(mc.num_key_value_heads));
  m.add_f32(k + "attention.layer_norm_rms_epsilon", static_cast<float>(mc.rms_norm_eps));
  m.add_f32(k + "rope.freq_base", static_cast<float>(mc.rope.theta));
  if (arch == "llama") m.add_u32(k + "rope.dimension_count", static_cast<uint32_t>(mc.head_dim));
  if (mc.head_dim * mc.num_attention_heads != mc.hidden_size) {
    m.add_u32(k + "attention.key_length", static_cast<uint32_t>(mc.head_dim));
    m.add_u32(k + "attention.value_length", static_cast<uint32_t>(mc.head_dim));
  }
  if (mc.rope.type == "linear") {
    m.add_string(k + "rope.scaling.type", "linear");
    m.add_f32(k + "rope.scaling.factor", static_cast<float>(mc.rope.factor));
  } else if (mc.rope.type != "default") {
    user_error("--format gguf: ", mc.path.string(), ": rope_scaling: \"", mc.rope.type,
               "\" RoPE is not written by the GGUF export (only default and linear are)");
  }
}

void add_gguf_tokenizer_metadata(io::GgufMetadata& m, const stdfs::path& tokenizer, int64_t vocab_size) {
  if (io::is_gguf_file(tokenizer)) return copy_gguf_tokenizer(m, tokenizer);
  const std::unique_ptr<tok::Tokenizer> tk = model::load_base_tokenizer(tokenizer);
  const stdfs::path dir = stdfs::is_directory(tokenizer) ? tokenizer : tokenizer.parent_path();
  std::string cls;
  if (stdfs::exists(dir / "tokenizer_config.json")) {
    try {
      const json c = json::parse(fs::read_file(dir / "tokenizer_config.json"));
      if (c.contains("tokenizer_class") && c["tokenizer_class"].is_string()) cls = c["tokenizer_class"];
    } catch (const json::exception&) {}  // load_base_tokenizer has read it
  }
  if (cls.ends_with("Fast")) cls.resize(cls.size() - 4);
  Vocab v;
  if (stdfs::is_regular_file(tokenizer) && tokenizer.extension() == ".json")
    v = vocab_of_tokenizer_json(tokenizer, cls);
  else if (stdfs::is_regular_file(tokenizer))
    v = vocab_of_sentencepiece(tokenizer);
  else if (stdfs::exists(dir / "tokenizer.json"))
    v = vocab_of_tokenizer_json(dir / "tokenizer.json", cls);
  else
    v = vocab_of_sentencepiece(dir / "tokenizer.model");
  const int64_t n = static_cast<int64_t>(v.tokens.size());
  if (n > vocab_size)
    user_error(tokenizer.string(), ": the tokenizer has ", n, " tokens but the model's embedding only ", vocab_size,
               " rows; GGUF needs one row per token");
  for (int64_t i = n; i < vocab_size; ++i) {  // as llama.cpp's converter pads
    v.tokens.push_back("[PAD" + std::to_string(i) + "]");
    v.types.push_back(kUnused);
    if (!v.scores.empty()) v.scores.push_back(-1000.0f);
  }
  m.add_string("tokenizer.ggml.model", v.model);
  if (!v.pre.empty()) m.add_string("tokenizer.ggml.pre", v.pre);
  m.add_strings("tokenizer.ggml.tokens", v.tokens);
  if (!v.scores.empty()) m.add_f32s("tokenizer.ggml.scores", v.scores);
  m.add_i32s("tokenizer.ggml.token_type", v.types);
  if (!v.merges.empty()) m.add_strings("tokenizer.ggml.merges", v.merges);
  const tok::SpecialTokens& s = tk->special();
  if (s.bos_id) m.add_u32("tokenizer.ggml.bos_token_id", static_cast<uint32_t>(*s.bos_id));
  if (s.eos_id) m.add_u32("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(*s.eos_id));
  if (s.unk_id) m.add_u32("tokenizer.ggml.unknown_token_id", static_cast<uint32_t>(*s.unk_id));
  if (s.pad_id) m.add_u32("tokenizer.ggml.padding_token_id", static_cast<uint32_t>(*s.pad_id));
  // What encoding adds, as the tokenizer does it (its post-processor or its config's flags).
  const std::vector<int32_t> with = tk->encode("a", true), without = tk->encode("a", false);
  const bool bos = s.bos_id && with.size() > without.size() && with.front() == *s.bos_id;
  const bool eos = s.eos_id && with.size() > without.size() && with.back() == *s.eos_id;
  m.add_bool("tokenizer.ggml.add_bos_token", bos);
  m.add_bool("tokenizer.ggml.add_eos_token", eos);
  if (!tk->chat_template().empty()) m.add_string("tokenizer.chat_template", tk->chat_template());
  // named templates as llama.cpp's converter stores them: tokenizer.chat_template.NAME and the list
  std::vector<std::string> names;
  for (const auto& [name, text] : tk->named_chat_templates()) {
    if (name == "default") continue;
    m.add_string("tokenizer.chat_template." + name, text);
    names.push_back(name);
  }
  if (!names.empty()) m.add_strings("tokenizer.chat_templates", names);
}

}  // namespace qlora::exporter

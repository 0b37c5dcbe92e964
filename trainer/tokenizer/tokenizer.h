// The tokenizer interface (issue P4). One implementation, the huggingface/tokenizers pipeline
// (pipeline.h), with two models: HF `tokenizer.json` BPE (byte-level: GPT-2, Llama 3, Qwen2;
// SentencePiece-style with byte fallback: Llama 2, Mistral, TinyLlama) and a SentencePiece
// `tokenizer.model` run by libsentencepiece. tokenizer_config.json gives the special tokens,
// add_bos_token/add_eos_token and the chat template. Encoding is thread-safe.
// Not supported (UserError naming the key): Unigram/WordPiece tokenizer.json models, and
// normalizers/pre-tokenizers/decoders outside those the Llama/Mistral/Qwen/GPT-2 families use.
#pragma once
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace qlora::tok {

// Special tokens and flags from tokenizer_config.json (and the model's own defaults).
struct SpecialTokens {
  std::optional<int32_t> bos_id, eos_id, pad_id, unk_id;
  std::string bos_token, eos_token, pad_token, unk_token;
  bool add_bos_token = false;  // encode(..., add_special_tokens=true) prepends BOS
  bool add_eos_token = false;  // encode(..., add_special_tokens=true) appends EOS
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Token ids of `text`, equal to HF's tokenizer(text, add_special_tokens=...)["input_ids"].
  virtual std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const = 0;
  // Text of `ids`, equal to HF's decode(ids, skip_special_tokens=...).
  virtual std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const = 0;

  // encode() of many texts on the OpenMP threads (the tokenizers are thread-safe).
  std::vector<std::vector<int32_t>> encode_batch(const std::vector<std::string>& texts, bool add_special_tokens) const;

  // Number of ids (model vocabulary plus added tokens), like len(tokenizer) in transformers.
  virtual int32_t vocab_size() const = 0;
  virtual std::optional<int32_t> token_to_id(std::string_view token) const = 0;
  virtual std::string id_to_token(int32_t id) const = 0;

  const SpecialTokens& special() const { return special_; }
  // The model's own Jinja chat template (chat_template.jinja wins over tokenizer_config.json),
  // empty when it ships none.
  const std::string& chat_template() const { return chat_template_; }
  // All named templates when tokenizer_config.json holds a list of {name, template}
  // (chat_template() is then the one named "default", empty if none is).
  const std::map<std::string, std::string>& named_chat_templates() const { return named_chat_templates_; }
  // Where the templates were read ("DIR/tokenizer_config.json: chat_template" or
  // "DIR/chat_template.jinja"), for messages about them.
  const std::string& chat_template_origin() const { return chat_template_origin_; }

 protected:
  SpecialTokens special_;
  std::string chat_template_;
  std::string chat_template_origin_;
  std::map<std::string, std::string> named_chat_templates_;
};

// Loads the tokenizer of a model directory (tokenizer.json preferred, else tokenizer.model) or a
// tokenizer file (its directory's tokenizer_config.json is read too). The result encodes and
// decodes like transformers' AutoTokenizer.from_pretrained(dir): for the tokenizer classes that
// transformers rebuilds from the vocabulary (LlamaTokenizer, Qwen2Tokenizer, GPT2Tokenizer) the
// same stages are rebuilt here. UserError naming the file and what is wrong when nothing usable
// is there.
std::unique_ptr<Tokenizer> load_tokenizer(const std::filesystem::path& path);

// The files load_tokenizer(path) reads, those that exist, in a fixed order: the tokenizer file,
// tokenizer_config.json, special_tokens_map.json, chat_template.jinja and
// additional_chat_templates/*.jinja (sorted). What a digest of the tokenizer covers.
std::vector<std::filesystem::path> tokenizer_files(const std::filesystem::path& path);

}  // namespace qlora::tok

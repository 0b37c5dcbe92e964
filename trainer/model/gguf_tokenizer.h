// The tokenizer and chat template of a GGUF file (tokenizer.ggml.* metadata, docs/formats.md
// §6.5), built the way transformers' AutoTokenizer.from_pretrained(dir, gguf_file=...) builds it:
//   - "llama" (SentencePiece): BPE over the pieces with byte fallback, merges from the file or
//     derived from the vocabulary and scores; Metaspace ("▁", prepend first); BOS added unless
//     tokenizer.ggml.add_bos_token says otherwise.
//   - "gpt2" (byte-level BPE): tokens respelled into the byte alphabet where needed, merges from
//     the file; the split pattern named by tokenizer.ggml.pre (llama3/qwen2 families) before the
//     byte-level step.
//   - tokens typed CONTROL are special added tokens, USER_DEFINED plain added tokens; bos/eos/
//     unk/pad from the *_token_id keys; tokenizer.chat_template.
// The result is a tokenizer.json and tokenizer_config.json that the directory loader reads.
#pragma once
#include <filesystem>
#include <memory>
#include <string>

namespace qlora::io {
class GgufFile;
}
namespace qlora::tok {
class Tokenizer;
}

namespace qlora::model {

struct GgufTokenizerFiles {
  std::string tokenizer_json;
  std::string tokenizer_config_json;
};

// UserError "FILE: tokenizer.ggml.KEY: ..." when the metadata holds no usable tokenizer.
GgufTokenizerFiles gguf_tokenizer_files(const io::GgufFile& f);

// The tokenizer of a base model: a Hugging Face directory (or tokenizer file), or a GGUF file.
std::unique_ptr<tok::Tokenizer> load_base_tokenizer(const std::filesystem::path& path);

// Hex SHA-256 of what load_base_tokenizer(path) builds the tokenizer from: the names and bytes of
// the tokenizer's files (tok::tokenizer_files), or of a GGUF file the tokenizer files its
// metadata makes (not the weights). UserError when a file cannot be read.
std::string base_tokenizer_digest(const std::filesystem::path& path);

}  // namespace qlora::model

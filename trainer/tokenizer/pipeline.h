// The huggingface/tokenizers pipeline, stage by stage, and the Tokenizer built from it:
//   added tokens (matched on the raw text first) -> normalizer -> pre-tokenizer -> model
//   -> post-processor (special tokens) ; decode: ids -> token strings -> decoder chain.
// Both tokenizer.json and SentencePiece tokenizer.model directories are run through it (the
// latter with a SentencePieceModel and the stages transformers' LlamaTokenizer sets up).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "trainer/tokenizer/model.h"
#include "trainer/tokenizer/tokenizer.h"
#include "trainer/unicode/normalize.h"

namespace qlora::tok {

// ---- normalizers ------------------------------------------------------------------------------
class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void normalize(std::string& s) const = 0;
};

// ---- pre-tokenizers ---------------------------------------------------------------------------
// Pieces of one text segment: spans over `text`. `first` marks the span that starts at offset 0
// of the original input (Metaspace's prepend_scheme "first" needs it).
struct PreTokenized {
  struct Span {
    uint32_t begin, end;
    bool first;
  };
  std::string text;
  std::vector<Span> spans;
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  virtual void pre_tokenize(PreTokenized& pt) const = 0;
};

// A regex compiled with PCRE2 (UTF + UCP, JIT): the Oniguruma patterns of tokenizer.json.
class Regex {
 public:
  explicit Regex(const std::string& pattern);  // UserError on a bad pattern
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  // Non-empty, non-overlapping matches in s[begin, end), as absolute [start, end) offsets.
  void find_all(std::string_view s, std::vector<std::pair<uint32_t, uint32_t>>& out) const;

 private:
  void* code_ = nullptr;  // pcre2_code_8*
};

// ---- post-processors and decoders -------------------------------------------------------------
class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  // Adds the special tokens of a single sequence (only called with add_special_tokens=true).
  virtual void process(std::vector<int32_t>& ids) const = 0;
  // Number of ids prepended / appended (for the add_bos_token / add_eos_token flags).
  virtual std::vector<int32_t> prefix() const = 0;
  virtual std::vector<int32_t> suffix() const = 0;
};

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
};

// ---- added tokens ------------------------------------------------------------------------------
struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool single_word = false, lstrip = false, rstrip = false, normalized = true, special = false;
};

class AddedVocabulary {
 public:
  // Adds (or updates, by content) a token; the id must be set.
  void add(const AddedToken& t);
  // Builds the matchers; normalized tokens are matched by their normalized content.
  void build(const Normalizer* normalizer);
  struct Segment {
    uint32_t begin, end;
    int32_t id;  // -1 for plain text
  };
  // Splits `s` into plain text and added tokens (leftmost-longest, with single_word, lstrip
  // and rstrip), using the raw (normalized=false) or normalized (normalized=true) token set.
  void split(std::string_view s, bool normalized_set, std::vector<Segment>& out) const;
  bool has_normalized() const { return !norm_.empty(); }
  const AddedToken* by_id(int32_t id) const;
  const AddedToken* by_content(std::string_view content) const;
  const std::vector<AddedToken>& tokens() const { return tokens_; }

 private:
  // Byte trie over token contents; `first` flags the bytes that can start a token.
  struct Trie {
    struct Node {
      std::vector<std::pair<unsigned char, int32_t>> next;  // sorted by byte
      int32_t token = -1;                                   // index into tokens_
    };
    std::vector<Node> nodes;
    bool first[256] = {};
    bool empty() const { return nodes.size() <= 1; }
    void insert(std::string_view key, int32_t token);
    // Longest token starting at s[i]: its index and length, or -1.
    int32_t longest(std::string_view s, size_t i, size_t& len) const;
  };
  std::vector<AddedToken> tokens_;
  StringMap<size_t> by_content_;
  std::unordered_map<int32_t, size_t> by_id_;
  Trie raw_, norm_;
};

// ---- the tokenizer ----------------------------------------------------------------------------
class PipelineTokenizer final : public Tokenizer {
 public:
  PipelineTokenizer() = default;
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const override;
  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const override;
  int32_t vocab_size() const override;
  std::optional<int32_t> token_to_id(std::string_view token) const override;
  std::string id_to_token(int32_t id) const override;

  // Assembly (the loaders fill these, then call finish()).
  AddedVocabulary added;
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> pre_tokenizer;
  std::unique_ptr<Model> model;
  std::unique_ptr<PostProcessor> post_processor;
  std::unique_ptr<Decoder> decoder;
  SpecialTokens& special_tokens() { return special_; }
  std::string& chat_template_text() { return chat_template_; }
  std::string& chat_template_origin_text() { return chat_template_origin_; }
  std::map<std::string, std::string>& named_templates() { return named_chat_templates_; }
  // Builds the added-token matchers and, when the last pre-tokenizer step is a ByteLevel
  // mapping, moves that mapping into the BPE model (behind its cache).
  void finish();

 private:
  void encode_segment(std::string_view seg, bool at_start, std::vector<int32_t>& out) const;
  void encode_normalized(std::string_view text, bool at_start, std::vector<int32_t>& out) const;
};

// Factories used by the loaders (pipeline.cpp).
std::unique_ptr<Normalizer> make_nfc_normalizer(unicode::NormalForm form);
std::unique_ptr<Normalizer> make_sequence_normalizer(std::vector<std::unique_ptr<Normalizer>> parts);
std::unique_ptr<Normalizer> make_prepend_normalizer(std::string prepend);
std::unique_ptr<Normalizer> make_replace_normalizer(std::string pattern, bool is_regex, std::string content);
std::unique_ptr<Normalizer> make_lowercase_normalizer();
std::unique_ptr<Normalizer> make_strip_normalizer(bool left, bool right);

enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };
enum class PrependScheme { Always, Never, First };
std::unique_ptr<PreTokenizer> make_byte_level_pre_tokenizer(bool add_prefix_space, bool use_regex);
std::unique_ptr<PreTokenizer> make_split_pre_tokenizer(std::string pattern, bool is_regex, SplitBehavior behavior,
                                                       bool invert);
std::unique_ptr<PreTokenizer> make_metaspace_pre_tokenizer(std::string replacement, PrependScheme scheme, bool split);
std::unique_ptr<PreTokenizer> make_digits_pre_tokenizer(bool individual_digits);
std::unique_ptr<PreTokenizer> make_whitespace_pre_tokenizer(bool split_only);  // WhitespaceSplit if true
std::unique_ptr<PreTokenizer> make_sequence_pre_tokenizer(std::vector<std::unique_ptr<PreTokenizer>> parts);

// TemplateProcessing for a single sequence: ids before and after it.
std::unique_ptr<PostProcessor> make_template_post_processor(std::vector<int32_t> prefix, std::vector<int32_t> suffix);

std::unique_ptr<Decoder> make_byte_level_decoder();
std::unique_ptr<Decoder> make_replace_decoder(std::string pattern, std::string content);
std::unique_ptr<Decoder> make_byte_fallback_decoder();
std::unique_ptr<Decoder> make_fuse_decoder();
std::unique_ptr<Decoder> make_strip_decoder(std::string content, int start, int stop);
std::unique_ptr<Decoder> make_metaspace_decoder(std::string replacement, PrependScheme scheme);
std::unique_ptr<Decoder> make_sequence_decoder(std::vector<std::unique_ptr<Decoder>> parts);

}  // namespace qlora::tok

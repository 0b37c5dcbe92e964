// A small deterministic tokenizer for data tests: special tokens are matched first, then the
// longest of a few multi-byte "words" at each position, else single bytes. Greedy longest match
// makes tokenization depend on what follows (like BPE merges): "ab" alone is one token but "abc"
// is another, so a span edge can fall inside a token. Decoding is exact concatenation.
#pragma once
#include <string>
#include <vector>

#include "trainer/tokenizer/tokenizer.h"

namespace qlora::test {

class FakeTokenizer : public tok::Tokenizer {
 public:
  // ids: 0..255 bytes, then specials, then words.
  explicit FakeTokenizer(bool add_bos = false, bool has_pad = true, std::string eos = "</s>") {
    specials_ = {"<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"};
    words_ = {"Hello", " world", "\n\n", "ab", "abc", "###", " Response", "assistant\n", "user\n"};
    special_.bos_token = "<s>";
    special_.bos_id = id_of("<s>");
    special_.eos_token = eos;
    special_.eos_id = id_of(eos);
    if (has_pad) {
      special_.pad_token = "<pad>";
      special_.pad_id = id_of("<pad>");
    }
    special_.add_bos_token = add_bos;
  }

  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const override {
    std::vector<int32_t> ids;
    if (add_special_tokens && special_.add_bos_token) ids.push_back(*special_.bos_id);
    size_t i = 0;
    while (i < text.size()) {
      int32_t best = -1;
      size_t best_len = 0;
      for (size_t k = 0; k < specials_.size(); ++k) {
        if (text.compare(i, specials_[k].size(), specials_[k]) == 0 && specials_[k].size() > best_len) {
          best = 256 + static_cast<int32_t>(k);
          best_len = specials_[k].size();
        }
      }
      if (best < 0) {
        for (size_t k = 0; k < words_.size(); ++k) {
          if (text.compare(i, words_[k].size(), words_[k]) == 0 && words_[k].size() > best_len) {
            best = 256 + static_cast<int32_t>(specials_.size() + k);
            best_len = words_[k].size();
          }
        }
      }
      if (best < 0) {
        best = static_cast<unsigned char>(text[i]);
        best_len = 1;
      }
      ids.push_back(best);
      i += best_len;
    }
    return ids;
  }

  std::string decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const override {
    std::string out;
    for (int32_t id : ids) {
      if (skip_special_tokens && id >= 256 && id < 256 + static_cast<int32_t>(specials_.size())) continue;
      out += id_to_token(id);
    }
    return out;
  }

  int32_t vocab_size() const override { return 256 + static_cast<int32_t>(specials_.size() + words_.size()); }

  std::optional<int32_t> token_to_id(std::string_view token) const override {
    for (int32_t id = 0; id < vocab_size(); ++id)
      if (id_to_token(id) == token) return id;
    return std::nullopt;
  }

  std::string id_to_token(int32_t id) const override {
    if (id < 256) return std::string(1, static_cast<char>(id));
    size_t k = static_cast<size_t>(id - 256);
    if (k < specials_.size()) return specials_[k];
    return words_[k - specials_.size()];
  }

  void set_chat_template(std::string t) { chat_template_ = std::move(t); }

 private:
  int32_t id_of(const std::string& special) const {
    for (size_t k = 0; k < specials_.size(); ++k)
      if (specials_[k] == special) return 256 + static_cast<int32_t>(k);
    return -1;
  }
  std::vector<std::string> specials_, words_;
};

}  // namespace qlora::test

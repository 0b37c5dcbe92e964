// Tokenizing a text whose byte spans are marked (the parts the model learns to write), so that
// the ids are exactly the tokenizer's ids for the whole text and each token knows whether it
// overlaps a marked span (transformers' return_assistant_tokens_mask rule), without needing token
// offsets from the tokenizer.
#pragma once
#include <cstdint>
#include <string_view>
#include <utility>
#include <vector>

#include "trainer/tokenizer/tokenizer.h"

namespace qlora::data {

struct MarkedTokens {
  std::vector<int32_t> ids;     // encode(text, add_special_tokens=false)
  std::vector<uint8_t> marked;  // 1 where the token overlaps a span
};

// `spans` are byte ranges [begin, end) of `text`, sorted and disjoint. A span's first token is
// found by tokenizing the text before it: the tokens both tokenizations share lie before the
// span; a token that straddles a span edge overlaps the span and is marked.
MarkedTokens encode_marked(const tok::Tokenizer& tokenizer, std::string_view text,
                           const std::vector<std::pair<size_t, size_t>>& spans);

}  // namespace qlora::data

// UTF-8 and Unicode helpers the tokenizers need: code point iteration, Rust's from_utf8_lossy,
// the GPT-2 byte-level alphabet, ICU normalization (NFC/NFD/NFKC/NFKD) and character classes
// with the meaning Rust gives them (huggingface/tokenizers is written in Rust).
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <string_view>

namespace qlora::tok {

// Decodes the code point at s[i] and advances i. Invalid bytes decode as U+FFFD, one byte each.
char32_t utf8_next(std::string_view s, size_t& i);
// Byte length of the UTF-8 sequence that starts with `lead` (1 for ASCII and invalid bytes).
inline int utf8_len(unsigned char lead) {
  return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
}
void utf8_append(std::string& out, char32_t cp);
bool utf8_valid(std::string_view s);
// Rust's String::from_utf8_lossy (and Python's errors="replace"): every maximal ill-formed
// subsequence becomes one U+FFFD.
std::string utf8_lossy(std::string_view bytes);

// The GPT-2 byte-level alphabet: bytes `!`..`~`, 0xA1..0xAC, 0xAE..0xFF stand for themselves;
// the other 68 bytes map, in order, to U+0100 + n (space -> "Ġ", newline -> "Ċ").
struct ByteLevelAlphabet {
  std::array<std::string, 256> byte_to_utf8;  // UTF-8 text of each byte's character
  std::array<int16_t, 0x180> char_to_byte;    // code point -> byte, -1 when not in the alphabet
};
const ByteLevelAlphabet& byte_level_alphabet();

enum class NormalForm { NFC, NFD, NFKC, NFKD };
// Unicode normalization of UTF-8 text in place (ICU). ASCII text is returned untouched.
void unicode_normalize(std::string& s, NormalForm form);
// Full Unicode lowercase mapping (Rust's str::to_lowercase), ICU root locale.
std::string unicode_lowercase(std::string_view s);

// Rust char::is_whitespace: the White_Space property. Also what Rust's regex `\s` matches.
bool is_whitespace(char32_t c);
// Rust regex `\w`: Alphabetic, marks, decimal numbers, connector punctuation, Join_Control.
bool is_word_char(char32_t c);
// Rust char::is_numeric: general categories Nd, Nl, No.
bool is_numeric(char32_t c);

}  // namespace qlora::tok
